"""What a client reads of a request: its public state, and its transcript or the error
its end maps to."""

from __future__ import annotations

import asyncio
from typing import Any

from kubescribe.outcomes import reason as reason_of
from kubescribe.cache_layout import decode_result
from kubescribe.store import gone_message

from .context import Gateway
from .errors import HttpError


def state_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The public state of a request (GET /v1/transcriptions/{name}, SSE events)."""
    status = obj.get("status") or {}
    meta = obj["metadata"]
    out: dict[str, Any] = {
        "name": meta["name"], "namespace": meta.get("namespace"), "phase": status.get("phase") or "Pending",
        "reason": status.get("reason"), "message": status.get("message"),
        "queue_position": status.get("queuePosition"), "cached": status.get("cached"),
        "language": status.get("language"), "audio_duration_seconds": status.get("audioDurationSeconds"),
        "created_at": meta.get("creationTimestamp"), "completed_at": status.get("completedAt"),
    }
    if status.get("progress") is not None:  # written by the runner when it reports progress
        out["progress"] = status["progress"]
    return {k: v for k, v in out.items() if v is not None}


async def result_of(gw: Gateway, obj: dict[str, Any]) -> dict[str, Any]:
    """The transcript of a finished request, or the HttpError its failure maps to: a
    final reason 400, a retryable one 503, unfinished 409, expired 410."""
    status = obj.get("status") or {}
    name = obj["metadata"]["name"]
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        why = status.get("reason") or "Failed"
        final = reason_of(why).final if why else True
        raise HttpError(400 if final else 503, f"{name} failed: {why}: {status.get('message') or ''}".rstrip(": "),
                        code=why)
    if phase != "Succeeded":
        raise HttpError(409, f"{name} is not finished (phase {phase})", code="not_finished")
    blob = await gw.redis.get(status["resultKey"])
    if blob is not None:
        return decode_result(blob)
    if gw.store.objects is not None:  # the system of record: read it there, warm the cache
        result = await asyncio.to_thread(gw.store.read_result_key, status["resultKey"])
        if result is not None:
            return result
    raise HttpError(410, gone_message(name, gw.store), code="result_expired")
