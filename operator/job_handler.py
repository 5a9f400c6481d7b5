"""Runner Jobs and Kueue's Workloads: what a Job's state means for its request.

Gathers what ``runs.on_job`` (or, under Kueue, ``kueue.on_job``) needs (the request, the
Job's pods, a result the runner stored, a pod that can never start, the Job's Workload),
and hands the transition to the applier. ``check_job`` is the resync's level-triggered
look at a Running request's Job, for an end whose event was missed.
"""

from __future__ import annotations

from datetime import datetime, timezone

from kubescribe import KIND
from kubescribe.models import TERMINAL_PHASES, Phase
from kubescribe.outcomes import RunnerOutcome
from kubescribe.settings import OperatorSettings
from kubescribe.cache_layout import result_key
from kubescribe.store import Store

from . import kueue, runs
from .applier import Applier
from .jobs import CONTAINER, JOB_NAME_PREFIX, LABEL_MANAGED_BY, MANAGED_BY
from .kube import Kube
from .lifecycle import requeue
from .pods import stuck_pod


class JobHandler:
    """One per operator; every method may run on several threads at once.

    Args:
        applier: writes the transitions; its registry and locks are shared.
        kube: reads requests, Jobs, pods and Workloads.
        store: the result a runner wrote, for a Job that completed without a readable outcome.
        settings: ``admission_engine`` (Kueue or not), ``image_pull_grace_seconds``.
    """

    def __init__(self, applier: Applier, kube: Kube, store: Store, settings: OperatorSettings):
        self.applier = applier
        self.kube = kube
        self.store = store
        self.settings = settings
        self.kueue = settings.admission_engine == "kueue"

    def on_job(self, event_type: str | None, job: dict, workload: dict | None = None, *,
               watched: bool = True) -> None:
        """A Job's watch event (``watched``), or the resync's look at the Job it read."""
        a = self.applier
        owner = next((o for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == KIND), None)
        if owner is None:
            return  # a pooled runner: it serves many requests and reports through Redis
        deleted = event_type == "DELETED" or bool(job["metadata"].get("deletionTimestamp"))
        if not deleted and not self.kueue and (runs.quiet(job) or (watched and runs.starting(job))):
            return  # running and healthy, or starting (the resync looks for a stuck pod): no read
        seen = a.registry.get(owner["uid"])
        if seen is not None and seen.current and seen.phase in TERMINAL_PHASES:
            # finished on its current spec: the Job's later events (its completion seen
            # again, the TTL deleting it) change nothing, and need no read of the request
            return
        with a.lock_for(owner["uid"]):
            meta = job["metadata"]
            body = self.kube.get_request(meta["namespace"], owner["name"])
            if body is None or body["metadata"]["uid"] != owner["uid"]:
                return  # gone
            if deleted and self._replaced(job):
                return  # a late event of an earlier Job of the same (deterministic) name
            if self.kueue and (kueue.waiting(body, job) or (kueue.suspended(job) and runs.owns(body, job))):
                if workload is None and kueue.suspended(job) and not deleted:
                    workload = self.kube.job_workload(meta["namespace"], meta["uid"])
                a.apply(body, kueue.on_job(body, job, deleted=deleted, workload=workload))
                return
            if not runs.owns(body, job):
                return  # finished already, or a Job of an older generation
            last = stored = stuck = None
            if not deleted and runs.needs_pods(job):
                pods = self.kube.job_pods(meta["namespace"], meta["name"])
                last = runs.termination_outcome(pods, CONTAINER)
                conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or []
                         if c.get("status") == "True"}
                if "Complete" in conds and (last is None or not last.ok):
                    stored = self._stored_outcome(body)
                elif not conds:
                    stuck = stuck_pod(pods, container=CONTAINER, now=datetime.now(timezone.utc),
                                      grace=self.settings.image_pull_grace_seconds)
            a.apply(body, runs.on_job(body, job, deleted=deleted, last=last, stored=stored, stuck=stuck))

    def _replaced(self, job: dict) -> bool:
        """A Job of this name exists again with another uid: ``job`` is an earlier one."""
        meta = job["metadata"]
        current = self.kube.read_job(meta["namespace"], meta["name"])
        return current is not None and current["metadata"].get("uid") != meta.get("uid")

    def _stored_outcome(self, body: dict) -> RunnerOutcome | None:
        """The result a runner wrote, for a Job that completed without a readable outcome."""
        key = (body.get("status") or {}).get("cacheKey")
        hit = self.store.read_result_key(result_key(key)) if key else None
        return RunnerOutcome.from_result(hit, key, result_key(key), cached=False) if hit is not None else None

    def check_job(self, body: dict, name: str) -> None:
        """Level-triggered: a Job end whose event was missed (operator down, a failed
        status patch) is applied here; a Job that vanished re-queues its request."""
        meta = body["metadata"]
        job = self.kube.read_job(meta["namespace"], name)
        if job is None:
            with self.applier.lock_for(meta["uid"]):
                # The listed body may be stale: the Job's end may have been applied since.
                fresh = self.kube.get_request(meta["namespace"], meta["name"])
                status = (fresh or {}).get("status") or {}
                if (fresh is None or fresh["metadata"]["uid"] != meta["uid"]
                        or status.get("phase") != Phase.Running.value or status.get("jobName") != name):
                    return
                self.applier.apply(fresh, requeue(fresh, "JobLost", f"runner Job {name} no longer exists; queued again"))
            return
        self.on_job("MODIFIED", job, watched=False)

    def on_workload_event(self, event_type: str | None, workload: dict) -> None:
        if event_type != "DELETED":
            self.on_workload(workload)

    def on_workload(self, workload: dict) -> None:
        """A Kueue Workload changed: re-decide the request whose runner Job it stands for
        (Kueue's reason while it waits). Workloads of other Jobs cost no API call."""
        meta = workload["metadata"]
        ref = next((o for o in meta.get("ownerReferences") or []
                    if o.get("kind") == "Job" and str(o.get("apiVersion", "")).startswith("batch/")), None)
        if ref is None or not ref.get("name", "").startswith(JOB_NAME_PREFIX):
            return
        job = self.kube.read_job(meta["namespace"], ref["name"])
        if job is None or job["metadata"].get("uid") != ref.get("uid"):
            return
        if (job["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
            return
        self.on_job("MODIFIED", job, workload=workload)
