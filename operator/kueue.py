"""Kueue as the admission engine: decisions only, like ``scheduler.plan``.

With ``KUBESCRIBE_ADMISSION_ENGINE=kueue`` the operator stops deciding *when* a runner
starts. A queued request gets its runner Job at once, created suspended and labelled
``kueue.x-k8s.io/queue-name``; Kueue admits it against its ClusterQueue's quota (fair
sharing, preemption and quotas per team are Kueue's) by unsuspending it. Meanwhile the
request stays ``Queued``, with ``jobName`` set and Kueue's own words in its status.

The operator only reads Kueue's Workload (never writes it) and patches the request when
what Kueue says changes, so a request costs one status write per distinct Kueue
reason, not one per Workload update (:func:`on_waiting` returns ``None`` otherwise).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime
from typing import Any

from kubescribe.models import Phase, TranscriptionSpec

from . import status as st
from .lifecycle import Event, Transition, age_seconds, requeue
from .registry import Entry

#: The request's reason while its Job waits in Kueue, and when Kueue let it start.
WAITING = "WaitingForKueue"
ADMITTED = "AdmittedByKueue"

#: No budget of our own: every queued request is handed to Kueue at once.
UNLIMITED = sys.maxsize


def queue_name(spec: TranscriptionSpec, default: str) -> str:
    """The request's LocalQueue, else the namespace's default one."""
    return spec.queue_name or default


def planning_view(entries: list[Entry]) -> list[Entry]:
    """Entries as ``scheduler.plan`` should see them under Kueue.

    A Queued request that has a Job has been handed to Kueue: it must not be admitted a
    second time, and an identical request behind it should wait for its result rather
    than take quota too. For the plan it is therefore running.
    """
    return [replace(e, phase=Phase.Running.value) if e.phase == Phase.Queued.value and e.job_name else e
            for e in entries]


def suspended(job: dict[str, Any]) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def waiting(body: dict[str, Any], job: dict[str, Any]) -> bool:
    """The request is Queued on this very Job: the Job waits for Kueue (or just left it)."""
    status = body.get("status") or {}
    return status.get("phase") == Phase.Queued.value and status.get("jobName") == job["metadata"]["name"]


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def workload_reason(workload: dict[str, Any] | None) -> str:
    """What Kueue says about a suspended Job, in one line, from its Workload's conditions.

    The order follows a Workload's life: no Workload yet; evicted (preempted, or its
    LocalQueue stopped); quota not reserved (Kueue's message names the resource and what
    is missing); quota reserved, waiting for admission checks; admitted (the Job is
    about to be unsuspended).
    """
    if workload is None:
        return "Kueue has not created a Workload for the Job yet"
    conds = _conditions(workload)
    name = workload["metadata"]["name"]
    evicted = conds.get("Evicted")
    if evicted and evicted.get("status") == "True":
        return f"Workload {name} evicted by Kueue ({evicted.get('reason')}): {evicted.get('message') or ''}".rstrip(": ")
    admitted = conds.get("Admitted")
    if admitted and admitted.get("status") == "True":
        return f"Workload {name} admitted by Kueue; the Job starts"
    quota = conds.get("QuotaReserved")
    if quota and quota.get("status") == "True":
        return f"Workload {name} has quota; waiting for Kueue's admission checks"
    if quota and quota.get("message"):
        return f"Workload {name} pending in Kueue: {quota['message']}"
    return f"Workload {name} waits for Kueue to evaluate it"


def on_submitted(body: dict[str, Any], *, job_name: str, queue: str) -> Transition:
    """Queued -> Queued with a suspended Job in Kueue's LocalQueue ``queue``.

    The request's cache lookup missed; it is counted here, where the Job is made (as
    ``intake.on_admitted`` does for the operator's own admission).
    """
    status = body.get("status") or {}
    key = status.get("cacheKey")
    # With spec.output the runner looks the cache up and counts it (intake.answers_from_cache).
    spec_cache = ((body.get("spec") or {}).get("cache") or {}).get("enabled", True) and not (body.get("spec") or {}).get("output")
    lookup = False if key and spec_cache and status.get("attempts") is None else None
    message = f"runner Job {job_name} waits in Kueue LocalQueue {queue}"
    gen = body["metadata"].get("generation")
    conds = st.set_condition(status.get("conditions"), st.ADMITTED, False, WAITING, message, gen)
    return Transition(
        status=st.patch(reason=WAITING, message=message, job_name=job_name, queue_position=None, conditions=conds),
        registry={"job_name": job_name, "queue_position": None},
        event=Event("Normal", "SubmittedToKueue", message), cache_lookup=lookup, wake=False)


def on_waiting(body: dict[str, Any], workload: dict[str, Any] | None) -> Transition | None:
    """Queued on a suspended Job: show what Kueue says; nothing when that is unchanged."""
    status = body.get("status") or {}
    if (_conditions(workload).get("Admitted") or {}).get("status") == "True":
        return None  # the Job is being unsuspended; its own event makes the request Running
    message = workload_reason(workload)
    if status.get("reason") == WAITING and status.get("message") == message:
        return None
    gen = body["metadata"].get("generation")
    conds = st.set_condition(status.get("conditions"), st.ADMITTED, False, WAITING, message, gen)
    return Transition(status=st.patch(reason=WAITING, message=message, conditions=conds), wake=False)


def on_admitted(body: dict[str, Any], job: dict[str, Any], now: datetime | None = None) -> Transition:
    """Queued -> Running: Kueue unsuspended the Job; its pods start now."""
    name = job["metadata"]["name"]
    message = f"Kueue admitted runner Job {name}"
    return Transition(
        status=st.running(body, reason=ADMITTED, message=message, job_name=name),
        registry={"phase": Phase.Running.value, "job_name": name, "queue_position": None},
        event=Event("Normal", ADMITTED, message),
        queue_wait=age_seconds(body["metadata"].get("creationTimestamp"), now), wake=False)


def on_evicted(body: dict[str, Any], job: dict[str, Any], workload: dict[str, Any] | None) -> Transition:
    """Running -> Queued on the same Job: Kueue suspended it again (preempted, or its
    queue was stopped); the Job controller removes its pods, Kueue re-admits it later."""
    status = body.get("status") or {}
    name = job["metadata"]["name"]
    message = workload_reason(workload)
    doc = st.queued(body, cache_key=status.get("cacheKey"), audio_sha=status.get("audioSha256"))
    gen = body["metadata"].get("generation")
    doc.update(reason=WAITING, message=message, jobName=name,
               conditions=st.set_condition(doc.get("conditions"), st.ADMITTED, False, WAITING, message, gen))
    return Transition(status=doc, registry={"phase": Phase.Queued.value, "job_name": name},
                      event=Event("Warning", "SuspendedByKueue", f"runner Job {name} suspended by Kueue: {message}"))


def on_job(body: dict[str, Any], job: dict[str, Any], *, deleted: bool,
           workload: dict[str, Any] | None) -> Transition | None:
    """A change of a Job handed to Kueue: admitted, still waiting, suspended again, or gone.

    ``None`` when Kueue has nothing to do with it (then ``runs.on_job`` decides, as
    for any running request).
    """
    status = body.get("status") or {}
    if (not deleted and suspended(job) and status.get("phase") == Phase.Running.value
            and status.get("jobName") == job["metadata"]["name"]):
        return on_evicted(body, job, workload)
    if not waiting(body, job):
        return None
    name = job["metadata"]["name"]
    if deleted:
        # Same as a running request's Job deleted by hand: queued again, a new Job later.
        return requeue(body, "JobDeleted", f"runner Job {name} was deleted; queued again")
    if not suspended(job):
        return on_admitted(body, job)
    return on_waiting(body, workload)
