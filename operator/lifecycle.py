"""The state machine of a request: every transition as a value, built by pure functions.

A :class:`Transition` says everything one decision changes: the status patch, the Event
to post, the operator's registry entry, the metrics of a request that ended. It is
applied in one place (``Applier.apply``), which owns the patch and its 404: a request
deleted meanwhile gets no registry change, no Event and no count. The decisions live in
``intake`` (new, changed and admitted requests) and ``runs`` (Jobs and runner
outcomes); this module holds what they share. docs/architecture.md draws the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubescribe.models import Phase
from kubescribe.outcomes import RunnerOutcome

from . import status as st
from .registry import Entry


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """One decision's effects, applied in this order: status patch (stop on 404),
    registry, Job deletion, metrics, Event, wake-up of the admission loop.

    Attributes:
        status: merge patch of ``status``; ``None`` changes nothing on the server.
        registry: changes to the request's registry entry (``Entry`` fields).
        event: the Event posted on the request.
        finished: the request ended with this outcome: count it (status, error type,
            durations, file size) under ``model``.
        job_outcome: a runner Job ended (``succeeded``/``failed``): ``jobs_total``.
        queue_wait: seconds from creation to admission, observed once per request.
        pod_start: seconds from the runner Job's creation to its runner process's start.
        cache_lookup: the request's one cache lookup, hit (True) or miss (False).
        admission_hit: answered from the cache by the operator, with no Job.
        errors: error types counted even when nothing is patched (Redis down).
        delete_job: a Job to delete once the status is written.
        wake: run an admission pass soon (a slot was freed or a request queued).
    """

    status: dict[str, Any] | None = None
    registry: dict[str, Any] = field(default_factory=dict)
    event: Event | None = None
    finished: RunnerOutcome | None = None
    model: str = "unknown"
    job_outcome: str | None = None
    queue_wait: float | None = None
    pod_start: float | None = None
    cache_lookup: bool | None = None
    admission_hit: bool = False
    errors: tuple[str, ...] = ()
    delete_job: str | None = None
    wake: bool = True


def age_seconds(created: str | None, now: datetime | None = None) -> float | None:
    """Seconds since an RFC 3339 time, or None when it cannot be read."""
    try:
        t = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except (ValueError, TypeError):
        return None
    return max(0.0, ((now or datetime.now(timezone.utc)) - t).total_seconds())


def model_of(body: dict) -> str:
    """The model label of a request's metrics; bounded, since an invalid spec may hold anything."""
    return str((body.get("spec") or {}).get("model") or "unknown")[:64]


def needs_reconcile(entry: Entry) -> bool:
    """New (no phase), left Pending (Redis was down), or its spec changed since."""
    return entry.phase in (None, Phase.Pending.value) or not entry.current


def stale_job(body: dict) -> str | None:
    """A Job that works on an older spec: the request is Running, or Queued on a Job that
    waits in Kueue (which would otherwise admit it later), and its spec changed."""
    status = body.get("status") or {}
    return status.get("jobName") if status.get("phase") in (Phase.Running.value, Phase.Queued.value) else None


def _notifying(body: dict, install_events: frozenset[str]) -> bool:
    """A sink (the request's, or the install's: ``install_events``) is to hear of the
    request's finished phase and its delivery is not final yet (the Notified condition is
    missing, or False with reason Delivering)."""
    phase = (body.get("status") or {}).get("phase")
    sinks = (body.get("spec") or {}).get("notify") or []
    wanted = phase in install_events or any(
        phase in (s.get("events") or ("Succeeded", "Failed")) for s in sinks if isinstance(s, dict))
    if not wanted:
        return False
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Notified":
            return c.get("status") != "True" and c.get("reason") != "DeliveryFailed"
    return True


def seconds_until_expiry(body: dict, default_ttl: int, now: datetime | None = None,
                         install_events: frozenset[str] = frozenset()) -> float | None:
    """How long until a finished request may be deleted (``<= 0``: now), or ``None``
    when it must stay: it has not finished (Pending, Queued, Running, or a spec edited
    since it finished and not yet reconciled), its TTL is off, or its completion time is
    unreadable.

    The TTL is ``spec.ttlSecondsAfterFinished``, else the operator's default
    (``KUBESCRIBE_REQUEST_TTL_SECONDS``); 0 in the spec means at once, 0 as the default
    means never. Counted from ``status.completedAt``, as the Job TTL counts from the
    Job's completion. Only the request goes: its transcript stays in Redis under the
    cache TTL, readable by anyone who kept its ``resultKey``.

    A request whose event is still being delivered stays until the delivery is final
    (``status.notifications`` is the record that makes delivery at-least-once; deleting
    the request would drop it). ``install_events``: the phases the install's sinks hear of.
    """
    status, spec = body.get("status") or {}, body.get("spec") or {}
    if status.get("phase") not in (Phase.Succeeded.value, Phase.Failed.value):
        return None
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return None  # edited after it finished: it runs again
    if _notifying(body, install_events):
        return None  # its event is not delivered yet
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        if default_ttl <= 0:
            return None
        ttl = default_ttl
    age = age_seconds(status.get("completedAt"), now)
    if age is None:
        return None
    return ttl - age


def requeue(body: dict, reason: str, message: str) -> Transition:
    """Running -> Queued: the runner Job vanished (deleted by hand, or lost while the
    operator was down). The request keeps its cache key and waits for a slot again."""
    status = body.get("status") or {}
    doc = st.queued(body, cache_key=status.get("cacheKey"), audio_sha=status.get("audioSha256"))
    doc.update(reason=reason, message=message)
    return Transition(status=doc, registry={"phase": Phase.Queued.value, "job_name": None, "queue_position": None},
                      event=Event("Warning", reason, message))


def fail(body: dict, reason: str, message: str, *, attempts: int | None = None, job_outcome: str | None = None,
         delete_job: str | None = None) -> Transition:
    """Any phase -> Failed, counted under the reason's error type."""
    return Transition(
        status=st.failed(body, reason, message, attempts=attempts),
        registry={"phase": Phase.Failed.value, "observed_generation": body["metadata"].get("generation")},
        event=Event("Warning", reason, message), finished=RunnerOutcome.failure(reason, message),
        model=model_of(body), job_outcome=job_outcome, delete_job=delete_job)


def succeed(body: dict, outcome: RunnerOutcome, *, by: str, attempts: int, job_outcome: str | None = None,
            pod_start: float | None = None) -> Transition:
    """Running -> Succeeded with a runner's outcome."""
    rtf = outcome.realtime_factor
    message = (f"transcribed {outcome.audio_duration_seconds or 0:.1f}s of {outcome.language or '?'} audio"
               + (f" at {rtf:.3f}x real time" if isinstance(rtf, (int, float)) else ""))
    return Transition(
        status=st.succeeded(body, outcome, message=f"transcribed by {by}", attempts=max(attempts, 1),
                            pod_start=pod_start),
        registry={"phase": Phase.Succeeded.value}, event=Event("Normal", "Succeeded", message),
        finished=outcome, model=model_of(body), job_outcome=job_outcome, pod_start=pod_start)
