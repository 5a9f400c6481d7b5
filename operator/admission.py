"""Decisions about requests before they run: validation, the result cache, the queue,
admission and the size of the runner pool. Pure functions, like ``scheduler.plan``.

One cache lookup counts per request, where its answer becomes known: a hit when the
request is answered from the cache (when it is first seen, or when an identical request
finished while it waited), a miss when it is admitted to a runner. A runner never counts
a lookup the operator could make (kubescribe.runner.task), except for a request with
``spec.output``: see :func:`answers_from_cache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubescribe.models import InvalidSpec, Phase, TranscriptionSpec
from kubescribe.outcomes import RunnerOutcome
from kubescribe.store import result_key

from . import status as st
from .lifecycle import Event, Transition, age_seconds, fail, model_of
from .scheduler import Entry, Plan

#: Queue-position status patches per admission pass. Positions shift by one for everyone
#: behind an admitted request; patching all of a long queue on every admission would be
#: O(n^2) API writes. The head is always exact, the tail catches up over the next passes.
POSITION_PATCHES_PER_STEP = 50


@dataclass(frozen=True)
class CacheAnswer:
    """What the result cache said about a request: ``hit`` (with the result), ``miss``,
    ``unreachable`` (Redis down, with the error) or ``not_asked`` (cache disabled, or the
    audio hash is not known before the download)."""

    state: Literal["hit", "miss", "unreachable", "not_asked"]
    result: dict[str, Any] | None = None
    error: str = ""


NOT_ASKED = CacheAnswer("not_asked")


def answers_from_cache(spec: TranscriptionSpec) -> bool:
    """Whether the operator may answer this request from the cache itself.

    Not when it has ``spec.output``: the user asked for files in a bucket, and only a
    runner writes them (with the runner's credentials, which the operator does not
    hold). Such a request goes to a runner, which then hits the cache, writes the files
    and counts that lookup; the operator counts none for it. Skipping a Job would
    otherwise end the request Succeeded with no files where the pipeline looks.
    """
    return spec.output is None


def answered_from_cache(body: dict, key: str, result: dict[str, Any], now: datetime | None = None) -> Transition:
    """Pending or Queued -> Succeeded (cached): no Job, milliseconds."""
    outcome = RunnerOutcome.from_result(result, key, result_key(key), cached=True)
    meta = body["metadata"]
    return Transition(
        status=st.succeeded(body, outcome, message="answered from the result cache"),
        registry={"phase": Phase.Succeeded.value, "observed_generation": meta.get("generation")},
        event=Event("Normal", "CacheHit", f"answered from the result cache ({key[:12]})"),
        finished=outcome, model=model_of(body), queue_wait=age_seconds(meta.get("creationTimestamp"), now),
        cache_lookup=True, admission_hit=True)


def on_seen(body: dict, spec: TranscriptionSpec | InvalidSpec, key: str | None, audio_sha: str | None,
            cache: CacheAnswer, now: datetime | None = None) -> Transition:
    """A new request, a changed spec, or one left Pending: -> Failed, Pending, Succeeded
    or Queued.

    Redis down leaves it Pending with reason RedisUnavailable (patched and announced once;
    the resync retries it), since no cache answer means no safe way to skip a Job.
    """
    if isinstance(spec, InvalidSpec):
        return fail(body, "InvalidSpec", str(spec))
    if cache.state == "unreachable":
        msg = f"cannot reach Redis to look up the result cache: {cache.error}; retrying"
        if (body.get("status") or {}).get("reason") == "RedisUnavailable":
            return Transition(errors=("redis",), wake=False)
        return Transition(status=st.pending(body, "RedisUnavailable", msg),
                          event=Event("Warning", "RedisUnavailable", msg), errors=("redis",), wake=False)
    if cache.state == "hit" and key and cache.result is not None and answers_from_cache(spec):
        return answered_from_cache(body, key, cache.result, now)
    gen = body["metadata"].get("generation") or 1
    return Transition(
        status=st.queued(body, cache_key=key, audio_sha=audio_sha),
        registry={"phase": Phase.Queued.value, "observed_generation": gen, "cache_key": key},
        event=Event("Normal", "Queued", f"queued for a runner (priority {spec.priority})"))


def on_admitted(body: dict, spec: TranscriptionSpec | InvalidSpec, cache: CacheAnswer, *, job_name: str | None,
                now: datetime | None = None) -> Transition:
    """Queued -> Running (a Job named ``job_name`` was created, or, with no name, the
    request was sent to the pool), or -> Succeeded when an identical request finished
    while this one waited, or -> Failed when the spec no longer validates."""
    if isinstance(spec, InvalidSpec):
        return fail(body, "InvalidSpec", str(spec))
    status = body.get("status") or {}
    key = status.get("cacheKey")
    if cache.state == "hit" and key and cache.result is not None and answers_from_cache(spec):
        return answered_from_cache(body, key, cache.result, now)
    # Its lookup missed: counted once, on the first start (a requeued request has attempts).
    counted = key and spec.cache.enabled and answers_from_cache(spec) and status.get("attempts") is None
    lookup = False if counted else None
    if job_name:
        reason, message = "JobCreated", f"runner Job {job_name} created"
    else:
        reason, message = "Dispatched", "sent to the runner pool"
    return Transition(
        status=st.running(body, reason=reason, message=message, job_name=job_name),
        registry={"phase": Phase.Running.value, "job_name": job_name, "queue_position": None},
        event=Event("Normal", reason, message),
        queue_wait=age_seconds(body["metadata"].get("creationTimestamp"), now), cache_lookup=lookup, wake=False)


def position_updates(entries: list[Entry], p: Plan, limit: int = POSITION_PATCHES_PER_STEP,
                     max_position: int | None = None, *, min_wait: float = 0.0, now: datetime | None = None,
                     ) -> tuple[list[tuple[Entry, dict[str, Any]]], bool]:
    """Queue-position patches for this pass, front of the queue first, at most ``limit``;
    and whether more are left for the next pass.

    Only the first ``max_position`` places are shown (None: all): every admission moves
    everyone behind it up by one, so numbering a long queue costs a write per waiting
    request per admission. Only a request that has waited ``min_wait`` seconds since it
    was created gets a number: one admitted within that time costs no position write at
    all. A request that had a place and fell behind the shown ones (higher priorities
    arrived) has it cleared, so no stale number stays on it.
    """
    shown = (lambda pos: True) if max_position is None else (lambda pos: pos <= max_position)
    stale = []
    for e in entries:
        if not (e.phase == Phase.Queued.value and e.current and e.uid in p.positions):
            continue
        pos = p.positions[e.uid]
        want = pos if shown(pos) else None
        if want is not None and e.queue_position is None and min_wait > 0:
            waited = age_seconds(e.created, now)
            if waited is None or waited < min_wait:
                continue  # it may well be admitted before anyone looks
        if want != e.queue_position:
            stale.append((pos, want, e))
    stale.sort(key=lambda t: t[0])
    out = []
    for pos, want, e in stale[:limit]:
        if want is None:
            doc = st.queue_position(None, "Queued", "waiting for a runner slot in the GPU budget")
        elif e.uid in p.waiting_for_identical:
            doc = st.queue_position(pos, "WaitingForIdentical",
                                    "an identical request is running; its result will answer this one")
        else:
            doc = st.queue_position(pos, "Queued", f"position {pos} in the queue")
        out.append((e, doc))
    return out, len(stale) > limit


def active_pool_jobs(jobs: list[dict[str, Any]]) -> int:
    """Pooled runner Jobs that have not finished."""
    return sum(1 for j in jobs if not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                          for c in (j.get("status") or {}).get("conditions") or []))


def pool_shortfall(entries: list[Entry], active: int, max_runners: int, per_runner: int) -> int:
    """Pooled runners to start: enough for the dispatched work, within the budget."""
    outstanding = sum(1 for e in entries if e.phase == Phase.Running.value and not e.job_name)
    desired = min(max_runners, math.ceil(outstanding / per_runner))
    return max(0, desired - active)
