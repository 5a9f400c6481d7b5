"""What becomes of a request before it runs: invalid (Failed), answered from the result
cache (Succeeded), queued, or admitted (Running). Pure functions, like ``scheduler.plan``;
who is admitted when is ``scheduler``'s, how many pooled runners there are ``pool_size``'s.

One cache lookup counts per request, where its answer becomes known: a hit when the
request is answered from the cache (when it is first seen, or when an identical request
finished while it waited), a miss when it is admitted to a runner. A runner never counts
a lookup the operator could make (kubescribe.runner.task), except for a request with
``spec.output``: see :func:`answers_from_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from kubescribe.models import InvalidSpec, Phase, TranscriptionSpec
from kubescribe.outcomes import RunnerOutcome
from kubescribe.cache_layout import result_key

from . import status as st
from .lifecycle import Event, Transition, age_seconds, fail, model_of
from .registry import Entry


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
            cache: CacheAnswer, now: datetime | None = None, *, hold: bool = False) -> Transition:
    """A new request, a changed spec, or one left Pending: -> Failed, Pending, Succeeded
    or Queued.

    Redis down leaves it Pending with reason RedisUnavailable (patched and announced once;
    the resync retries it), since no cache answer means no safe way to skip a Job.

    With ``hold``, a request with no status yet is Queued in the registry only: the next
    admission pass either admits it, writing Queued and Running as one patch
    (:func:`with_held`), or writes its Queued status then (:func:`held_queued`). Either
    way the write budget has one status write less for a request admitted at once, and
    the watchers (the operator's own watch, Argo CD, Flux) one event less.
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
    if hold and not body.get("status"):
        return Transition(registry={"phase": Phase.Queued.value, "observed_generation": gen, "cache_key": key,
                                    "audio_sha": audio_sha, "unwritten": True, "body": body})
    return _queued(body, key, audio_sha, spec.priority)


def _queued(body: dict, key: str | None, audio_sha: str | None, priority: int) -> Transition:
    gen = body["metadata"].get("generation") or 1
    return Transition(
        status=st.queued(body, cache_key=key, audio_sha=audio_sha),
        registry={"phase": Phase.Queued.value, "observed_generation": gen, "cache_key": key, "unwritten": False,
                  "body": None},
        event=Event("Normal", "Queued", f"queued for a runner (priority {priority})"))


def held_body(entry: Entry) -> dict:
    """A held request as the server holds it: metadata, and no status yet."""
    return {"metadata": {"namespace": entry.namespace, "name": entry.name, "uid": entry.uid,
                         "generation": entry.generation}}


def held_queued(entry: Entry) -> Transition:
    """A held request the admission pass did not admit: its Queued status, written now."""
    return _queued(held_body(entry), entry.cache_key, entry.audio_sha, entry.priority)


def with_held(body: dict, entry: Entry) -> tuple[dict, dict]:
    """A held request about to be admitted (``body``: as held, no status): the body as if
    its Queued status were written, and that status, which the admission's own patch then
    carries (:func:`carrying`)."""
    doc = st.queued(body, cache_key=entry.cache_key, audio_sha=entry.audio_sha)
    return {**body, "status": doc}, doc


def carrying(t: Transition, queued_doc: dict | None) -> Transition:
    """``t`` with a held request's Queued status under its own patch, written as one;
    then the request is held no more (whatever the patched object says)."""
    if not queued_doc or t.status is None:
        return t
    return replace(t, status={**queued_doc, **t.status}, registry={**t.registry, "unwritten": False, "body": None})


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
