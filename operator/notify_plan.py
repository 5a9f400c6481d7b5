"""Notifications of finished requests, decided: which sinks hear of a request, whether a
sink's URL may be used, what each delivery's next step is. Pure functions, like
``scheduler.plan``; :mod:`.notifier` makes the calls.

The record of every delivery is the request's own ``status.notifications``: a sink with
no record (the operator was killed between the phase change and the first POST) or a
Pending one whose ``nextAttemptAt`` has come is due. The record outlives any restart,
which is what makes the delivery at-least-once.

The retry rule, as webhooks senders keep it (Standard Webhooks' guidance, Svix, Stripe):
2xx is delivered; 410 Gone means the sink is gone for good; any other 4xx is the sink
refusing this event, and one more try covers a deploy in progress (a 3xx counts as a 4xx:
redirects are not followed); 5xx, timeouts and refused connections are retried with
exponential backoff and jitter, up to ``max_attempts`` (by default 10 tries over about a
day).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kubescribe.models import (
    NotificationRecord,
    NotificationState,
    NotifySink,
    Phase,
    SecretKeyRef,
    TranscriptionSpec,
)
from kubescribe.sinks import sink_refusal
from kubescribe.url_guard import IPNetwork

EVENT_TYPES = {Phase.Succeeded.value: "io.kubescribe.transcription.succeeded",
               Phase.Failed.value: "io.kubescribe.transcription.failed"}
#: The namespace of event ids: uuid5 of the request's uid, generation and phase.
_ID_NAMESPACE = uuid.UUID("6f1d3f0e-5b7c-4b7e-9a53-1c0de5c1b0a7")


@dataclass(frozen=True)
class Sink:
    """A place to deliver to, signed with the key of ``secret``, or of a gateway
    ``caller``, or (neither: an install-wide sink) the install's key."""

    url: str
    events: tuple[str, ...] = (Phase.Succeeded.value, Phase.Failed.value)
    mode: str = "structured"
    secret: SecretKeyRef | None = None
    caller: str | None = None


@dataclass(frozen=True)
class Backoff:
    """When to try again. Args: base (seconds before the second try), cap (longest wait),
    max_attempts (tries in all), jitter (the wait is scaled by 1 +- jitter, so that sinks
    recovering from an outage are not hit by every operator retry at once)."""

    base: float = 300
    cap: float = 6 * 3600
    max_attempts: int = 10
    jitter: float = 0.2

    def delay(self, attempts: int, rand: float) -> float:
        """Seconds to wait after ``attempts`` tries; ``rand`` in [0, 1)."""
        raw = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        return raw * (1 - self.jitter + 2 * self.jitter * rand)


@dataclass(frozen=True)
class Answer:
    """What one POST got: an HTTP ``code``, or none and an ``error`` (timeout, refused
    connection); ``refused`` when the guard would not connect (final)."""

    code: int | None = None
    error: str = ""
    refused: bool = False


def sinks_for(notify: Iterable[NotifySink], install: Iterable[Sink], phase: str) -> list[Sink]:
    """The sinks that hear of ``phase``: the request's ``spec.notify``, then the install's;
    one per URL."""
    found: dict[str, Sink] = {}
    own = [Sink(s.url, tuple(s.events), s.mode, s.signing_secret_ref, s.caller) for s in notify]
    for sink in [*own, *install]:
        if phase in sink.events and sink.url not in found:
            found[sink.url] = sink
    return list(found.values())


def admission_refusal(spec: TranscriptionSpec, allow: Iterable[IPNetwork] = ()) -> str | None:
    """The first refused ``spec.notify`` URL, said as a spec error; None if all may be used."""
    allow = tuple(allow)
    for i, sink in enumerate(spec.notify):
        why = sink_refusal(sink.url, allow)
        if why:
            return f"spec.notify[{i}].url: {why}"
    return None


def event_id(uid: str, generation: int | None, phase: str) -> str:
    """The event's id: fixed for one request, spec generation and phase, so every retry and
    every operator after a restart sends the same id, and a receiver can drop duplicates."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{uid}/{generation or 1}/{phase}"))


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


def record_for(sink: Sink, records: Iterable[NotificationRecord], eid: str, phase: str) -> NotificationRecord:
    """The sink's record for this event; a new Pending one when it has none (or one for an
    older event: the request ran again)."""
    for r in records:
        if r.sink == sink.url and r.event_id == eid:
            return r
    return NotificationRecord(sink=sink.url, event_id=eid, type=EVENT_TYPES[phase],
                              state=NotificationState.Pending)


def is_due(record: NotificationRecord, now: datetime) -> bool:
    if record.state != NotificationState.Pending.value:
        return False
    at = _parse(record.next_attempt_at)
    return at is None or at <= now


def after_attempt(record: NotificationRecord, answer: Answer, backoff: Backoff, now: datetime,
                  rand: float) -> NotificationRecord:
    """The record after one POST: Delivered, Failed (final) or Pending with the next time."""
    attempts = record.attempts + 1
    base = dict(attempts=attempts, last_code=answer.code, next_attempt_at=None)
    stamp = now.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if answer.code is not None and 200 <= answer.code < 300:
        return record.model_copy(update=dict(base, state=NotificationState.Delivered.value, last_error=None,
                                             delivered_at=stamp))
    error = answer.error or f"HTTP {answer.code}"
    final = (answer.refused or answer.code == 410 or attempts >= backoff.max_attempts
             or (answer.code is not None and 300 <= answer.code < 500
                 and record.last_code is not None and 300 <= record.last_code < 500))
    if final:
        return record.model_copy(update=dict(base, state=NotificationState.Failed.value, last_error=error[:1024]))
    wait = timedelta(seconds=backoff.delay(attempts, rand))
    return record.model_copy(update=dict(base, state=NotificationState.Pending.value, last_error=error[:1024],
                                         next_attempt_at=(now + wait).astimezone(timezone.utc).isoformat()
                                         .replace("+00:00", "Z")))


def next_due(records: Iterable[NotificationRecord]) -> datetime | None:
    """When the earliest Pending record is due; None when none is Pending."""
    times = [_parse(r.next_attempt_at) or datetime.now(timezone.utc)
             for r in records if r.state == NotificationState.Pending.value]
    return min(times) if times else None


def condition(records: list[NotificationRecord]) -> tuple[bool, str, str]:
    """The Notified condition: (status, reason, message)."""
    failed = [r for r in records if r.state == NotificationState.Failed.value]
    pending = [r for r in records if r.state == NotificationState.Pending.value]
    if failed:
        r = failed[0]
        return False, "DeliveryFailed", f"{r.sink} failed after {r.attempts} attempts: {r.last_error}"
    if pending:
        r = pending[0]
        return False, "Delivering", f"{r.sink}: {r.last_error or 'not tried yet'}; next try {r.next_attempt_at}"
    return True, "Delivered", f"delivered to {len(records)} sink(s)"


def merged(records: Iterable[NotificationRecord], updated: Iterable[NotificationRecord]) -> list[NotificationRecord]:
    """``records`` with ``updated`` put in place by sink (the list is a map keyed on sink)."""
    out = {r.sink: r for r in records}
    for r in updated:
        out[r.sink] = r
    return list(out.values())

