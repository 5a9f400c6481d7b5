"""The message a sink receives: a CloudEvent 1.0 in the HTTP binding (structured JSON by
default, binary on request), signed with Standard Webhooks headers. Built with the
``cloudevents`` SDK and the ``standardwebhooks`` signer, so the encoding and the
signature are the ones receivers parse and verify with the same packages.

The event's attributes are fixed per request, generation and phase (``id``, ``time`` =
completedAt), so every retry carries the same bytes and id; only ``webhook-timestamp``
(and so the signature) is of the attempt, as Standard Webhooks requires: receivers
refuse a timestamp more than five minutes old.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

from kubescribe import GROUP, PLURAL, VERSION

from .notify_plan import EVENT_TYPES

#: Status fields that go into the event's data, as they are in status (camelCase).
SUMMARY_FIELDS = ("phase", "reason", "message", "language", "languageProbability", "audioDurationSeconds",
                  "processingSeconds", "realtimeFactor", "cached", "resultKey", "outputs", "textPreview",
                  "completedAt", "attempts")


@dataclass(frozen=True)
class Message:
    """What is POSTed: headers (content type included) and the body bytes."""

    headers: dict[str, str]
    body: bytes


def source_of(namespace: str) -> str:
    """The API path of the namespace's requests: with the subject (the request's name) it
    is the request's own API path."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def summary(body: dict) -> dict[str, Any]:
    """The event's data: the finished status, and where the result is."""
    status = body.get("status") or {}
    meta = body["metadata"]
    data: dict[str, Any] = {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
    data.update({k: status[k] for k in SUMMARY_FIELDS if status.get(k) is not None})
    if status.get("phase") == "Succeeded":
        data["resultPath"] = f"/v1/transcriptions/{meta['name']}/result"
    return data


def event_for(body: dict, event_id: str) -> CloudEvent:
    """The CloudEvent of a finished request (phase Succeeded or Failed)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    completed = status.get("completedAt")
    when = datetime.fromisoformat(completed.replace("Z", "+00:00")) if completed else datetime.now(timezone.utc)
    return CloudEvent(
        attributes={"type": EVENT_TYPES[status["phase"]], "source": source_of(meta["namespace"]),
                    "subject": meta["name"], "id": event_id, "time": when,
                    "datacontenttype": "application/json"},
        data=summary(body))


def encode(event: CloudEvent, mode: str = "structured") -> Message:
    """The event in the HTTP binding: one JSON document (structured), or ce-* headers and
    the data as the body (binary)."""
    message = ce_http.to_binary_event(event) if mode == "binary" else ce_http.to_structured_event(event)
    return Message(dict(message.headers), message.body)


def sign(message: Message, key: str, msg_id: str, at: datetime | None = None) -> Message:
    """``message`` with Standard Webhooks headers: webhook-id (the event id), the attempt's
    webhook-timestamp and the HMAC-SHA256 webhook-signature over id.timestamp.body.

    ``key`` is a Standard Webhooks secret, ``whsec_`` and base64 (or the base64 alone).
    """
    at = at or datetime.now(timezone.utc)
    signature = Webhook(key).sign(msg_id, at, message.body.decode())
    headers = dict(message.headers, **{"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                                       "webhook-signature": signature})
    return Message(headers, message.body)


def signed_message(body: dict, event_id: str, key: str, mode: str = "structured",
                   at: datetime | None = None) -> Message:
    """Everything one attempt sends."""
    return sign(encode(event_for(body, event_id), mode), key, event_id, at)
