"""Decisions about requests that run: what a runner Job's state, a runner's outcome or the
passing of time means for the request. Pure functions, like ``scheduler.plan``.

Job mode: the runner's outcome is its pod's termination message (a RunnerOutcome as
JSON); a pod killed before it could write one is judged by its exit code. Pool mode: the
outcome arrives on the done stream. Either way the failure reason's error type comes
from the one reason table (kubescribe.outcomes).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from kubescribe.models import Phase
from kubescribe.outcomes import RunnerOutcome
from kubescribe.streams import Finished

from . import status as st
from .lifecycle import Event, Transition, age_seconds, fail, requeue, succeed
from .pods import StuckPod


def termination_outcome(pods: list[dict[str, Any]], container: str) -> RunnerOutcome | None:
    """The outcome left by the Job's most recently finished runner container, or None.

    ``pods`` are API dicts. Without a parsable termination message (a kill, an OOM, a
    crash before the runner wrote one), the exit code decides: 137/143 RunnerKilled, the
    kubelet's OOMKilled as such, anything else RunnerCrashed, with the log tail the
    kubelet kept (terminationMessagePolicy FallbackToLogsOnError).
    """
    best, best_time = None, ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") != container or not terminated:
                continue
            finished = str(terminated.get("finishedAt") or "")
            if finished >= best_time:
                best_time, best = finished, terminated
    if best is None:
        return None
    code, raw = best.get("exitCode"), best.get("message") or ""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        try:
            outcome = RunnerOutcome.model_validate(doc)
        except ValueError:
            outcome = None
        if outcome is not None:
            return outcome if outcome.exit_code is not None else outcome.model_copy(update={"exit_code": code})
    name = best.get("reason") if best.get("reason") == "OOMKilled" else (
        "RunnerKilled" if code in (137, 143) else "RunnerCrashed")
    text = raw.strip()[-1024:]
    return RunnerOutcome.failure(name, f"runner exited with code {code}" + (f": {text}" if text else "")
                                 ).model_copy(update={"exit_code": code})


def _counts(job: dict[str, Any]) -> tuple[int, int, int, int]:
    s = job.get("status") or {}
    return (int(s.get("active") or 0), int(s.get("ready") or 0), int(s.get("failed") or 0),
            int(s.get("succeeded") or 0))


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def pod_start(job: dict[str, Any], outcome: RunnerOutcome) -> float | None:
    """Seconds from the Job's creation to its runner process's start, from the outcome's
    ``timings.startedAt``; None without it. creationTimestamp has whole seconds, so the
    figure is up to a second long (and a node's clock may differ from the API server's:
    clamped at 0)."""
    started = outcome.timings.started_at if outcome.timings is not None else None
    created = (job.get("metadata") or {}).get("creationTimestamp")
    if started is None or not created:
        return None
    age = age_seconds(created, datetime.fromtimestamp(started, timezone.utc))
    return None if age is None else round(age, 3)


def owns(body: dict, job: dict[str, Any]) -> bool:
    """The request is Running on this very Job (not finished, not on an older Job)."""
    status = body.get("status") or {}
    return status.get("phase") == Phase.Running.value and status.get("jobName") == job["metadata"]["name"]


def needs_pods(job: dict[str, Any]) -> bool:
    """Whether deciding on this Job needs its pods: it ended, a pod failed, or a pod is not
    ready (it may never start)."""
    active, ready, failed, _ = _counts(job)
    conds = _conditions(job)
    return "Complete" in conds or "Failed" in conds or failed > 0 or active > ready


def starting(job: dict[str, Any]) -> bool:
    """Not finished, no pod failed, a pod not ready yet: starting, or stuck. Only the
    pod's own status tells which, and a pod's changes bring no Job event; the resync
    reads the pods of every such Job on each pass (it is not :func:`quiet`). A watch
    event of one arrives as its pod is made, before the pod can be stuck, so it is left
    to the resync: reading the request and the pods for it cost two API calls per
    request for nothing."""
    _active, _ready, failed, _ = _counts(job)
    return not _conditions(job) and failed == 0 and not quiet(job)


def quiet(job: dict[str, Any]) -> bool:
    """A Job event :func:`on_job` would answer with nothing whatever the request says:
    not finished, no pod failed, every active pod ready (so none can be stuck). The
    operator skips reading the request for it."""
    _active, _ready, failed, _ = _counts(job)
    return not _conditions(job) and failed == 0 and not needs_pods(job)


def on_job(body: dict, job: dict[str, Any], *, deleted: bool, last: RunnerOutcome | None,
           stored: RunnerOutcome | None, stuck: StuckPod | None) -> Transition | None:
    """A change of the request's runner Job.

    Args:
        body: the request, read after the Job event.
        job: the Job as an API dict.
        deleted: the Job was deleted (or is being deleted).
        last: the latest finished runner's outcome (``termination_outcome``).
        stored: the result in Redis summarised, for a Job that completed without leaving
            a readable outcome; None when not looked up or absent.
        stuck: a runner pod that can never start (``pods.stuck_pod``).
    """
    if not owns(body, job):
        return None
    name = job["metadata"]["name"]
    if deleted:
        return requeue(body, "JobDeleted", f"runner Job {name} was deleted; queued again")
    active, _ready, failed, succeeded = _counts(job)
    conds = _conditions(job)
    attempts = failed + active + succeeded
    if "Complete" in conds:
        outcome = last if last is not None and last.ok else stored
        if outcome is None:
            return fail(body, "NoResult", "the runner finished but left no result summary and no result in Redis")
        return succeed(body, outcome, by=f"Job {name}", attempts=attempts, job_outcome="succeeded",
                       pod_start=pod_start(job, outcome))
    if "Failed" in conds:
        return _job_failed(body, conds["Failed"], last, attempts, failed)
    if stuck is not None:
        # The pod would back off and retry the pull for ever; the request is over.
        current = int((body.get("status") or {}).get("attempts") or 1)
        return fail(body, stuck.reason, stuck.message, attempts=current, job_outcome="failed", delete_job=name)
    # Only a retry is written: the first pod is attempt 1 from the Running patch on
    # (one write fewer per request; docs/architecture.md, the write budget).
    if failed > 0 and attempts != (body.get("status") or {}).get("attempts"):
        event = None
        if active > 0:
            why = (last.message if last is not None else None) or "the runner failed"
            event = Event("Warning", "Retrying", f"attempt {failed} failed ({why}); retrying")
        return Transition(status=st.attempts(attempts), event=event, wake=False)
    return None


def _job_failed(body: dict, cond: dict[str, Any], last: RunnerOutcome | None, attempts: int,
                failures: int) -> Transition:
    """Running -> Failed: the Job controller gave up. Its condition says why; the runner's
    outcome names the reason."""
    runner_reason = last.reason if last is not None else None
    runner_msg = (last.message if last is not None else None) or ""
    cond_reason = cond.get("reason") or "Failed"
    if cond_reason == "DeadlineExceeded":
        reason = "Timeout"
        message = f"the runner did not finish within timeoutSeconds={(body.get('spec') or {}).get('timeoutSeconds')}"
    elif cond_reason == "PodFailurePolicy":
        reason, message = runner_reason or "BadInput", runner_msg or "the runner refused the input"
    elif cond_reason == "BackoffLimitExceeded":
        reason = runner_reason or "RunnerFailed"
        message = f"failed {failures} time(s), retries exhausted" + (f": {runner_msg}" if runner_msg else "")
    else:
        reason = runner_reason or cond_reason
        message = runner_msg or cond.get("message") or "the runner Job failed"
    return fail(body, reason, message, attempts=max(attempts, failures), job_outcome="failed")


def on_pool_outcome(body: dict, done: Finished) -> Transition | None:
    """A pooled runner's outcome: Running -> Succeeded or Failed. Ignored when the request
    finished already (a repeated outcome) or its spec changed since it was dispatched."""
    status = body.get("status") or {}
    if (body["metadata"]["uid"] != done.uid or status.get("phase") != Phase.Running.value
            or status.get("jobName") or body["metadata"].get("generation") != done.generation):
        return None
    outcome = done.outcome
    if outcome.ok:
        return succeed(body, outcome, by="a pooled runner", attempts=done.attempts)
    message = outcome.message or "the runner failed"
    if not outcome.final:
        message = f"failed {done.attempts} time(s), retries exhausted: {message}"
    return fail(body, outcome.reason or "RunnerFailed", message, attempts=done.attempts)


def on_pool_timeout(body: dict, now: datetime, claim_idle_seconds: float) -> Transition | None:
    """A dispatched request past its timeout, plus the time a dead runner's entry takes
    to be reclaimed, ends as Timeout."""
    status, spec = body.get("status") or {}, body.get("spec") or {}
    age = age_seconds(status.get("startedAt"), now)
    limit = int(spec.get("timeoutSeconds") or 3600) + claim_idle_seconds
    if age is None or age <= limit:
        return None
    return fail(body, "Timeout", f"no pooled runner finished it within timeoutSeconds={spec.get('timeoutSeconds')}",
                attempts=status.get("attempts") or 0)
