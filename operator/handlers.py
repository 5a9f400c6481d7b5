"""What the operator does with requests and Jobs. kopf wiring is in ``main``.

Level-triggered throughout: every handler looks at the object as it is now (phase,
generation, observedGeneration) and decides, so a missed or repeated event, or an
operator restart at any point, leads to the same result. kopf's own progress
annotations are not used: the request's status is the record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.metrics import OperatorMetrics
from kubescribe.models import TERMINAL_PHASES, InvalidSpec, TranscriptionSpec, now_rfc3339, parse_spec
from kubescribe.settings import OperatorSettings
from kubescribe.outcomes import RunnerOutcome
from kubescribe.store import Store, StoreError, known_cache_key, result_key

def result_summary(hit, key, rkey, cached):
    return RunnerOutcome.from_result(hit, key, rkey, cached=cached).model_dump(by_alias=True)

from kubescribe.streams import WorkItem, WorkQueue

from . import status as st
from .kubeapi import Retrying
from .jobs import CONTAINER, LABEL_POOL, LABEL_REQUEST_UID, build_job, build_pool_job
from .pods import stuck_pod
from .scheduler import Entry, Registry, entry_from_body, plan

log = logging.getLogger("kubescribe.operator")

#: Queue-position status patches per admission pass (see Operator.step).
POSITION_PATCHES_PER_STEP = 50

#: Events are posted as this component (kubectl describe shows "From: kubescribe-operator").
EVENT_SOURCE = "kubescribe-operator"


def _error_type(reason: str) -> str:
    return {"AudioNotFound": "audio_not_found", "ModelLoadFailed": "model_load", "RedisUnavailable": "redis",
            "BadAudio": "bad_audio", "AudioTooLarge": "bad_audio", "AudioChecksumMismatch": "bad_audio",
            "InvalidSpec": "invalid_spec", "Timeout": "timeout"}.get(reason, "job_failed")


def _age_seconds(created: str) -> float | None:
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return max(0.0, (datetime.now(timezone.utc) - t).total_seconds())


class Operator:
    """The operator's state and actions. One instance per process.

    Args:
        settings: operator settings (environment).
        store: the Redis store (result cache lookups at admission).
        api_client: a configured ``kubernetes.client.ApiClient``.
        metrics: operator metrics.
    """

    def __init__(self, settings: OperatorSettings, store: Store, api_client, metrics: OperatorMetrics):
        from kubernetes import client

        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.custom = Retrying(client.CustomObjectsApi(api_client))
        self.batch = Retrying(client.BatchV1Api(api_client))
        self.core = Retrying(client.CoreV1Api(api_client))
        # Events are best effort: one try, so a throttled API server does not slow admission.
        self.events_api = client.CoreV1Api(api_client)
        self.registry = Registry()
        self._stripes = [threading.RLock() for _ in range(64)]
        self._wake = threading.Event()
        self.last_step = time.monotonic()
        self.synced = False
        self.pool = settings.mode == "pool"
        self.pool_namespace = (settings.pool_namespace or os.environ.get("POD_NAMESPACE")
                               or settings.namespace or "default")
        self._pool_seq = 0
        metrics.gpu_budget.set(settings.gpu_budget)

    @property
    def max_pool_runners(self) -> int:
        return self.settings.pool_size_max or self.settings.gpu_budget

    def capacity(self) -> int:
        """Admission budget: GPUs in job mode; dispatched requests in pool mode."""
        if self.pool:
            return self.max_pool_runners * self.settings.requests_per_runner
        return self.settings.gpu_budget

    # -- API helpers ------------------------------------------------------------------
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        except ApiException as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: nothing to report to
            raise

    def get_request(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def event(self, body: dict, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the request; never fails the caller."""
        meta = body["metadata"]
        now = datetime.now(timezone.utc)
        ev = {
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": body.get("kind", "TranscriptionRequest"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.events_api.create_namespaced_event(meta["namespace"], ev)
        except Exception as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

    def wake(self) -> None:
        self._wake.set()

    # -- per-request serialisation ---------------------------------------------------------
    # Watch events, the admission loop, the outcome consumer and the resync can all reach
    # the same request at once; a striped re-entrant lock keyed by uid makes each request's
    # transitions happen one at a time, so an outcome is counted and announced once.
    def _lock_for(self, uid: str) -> threading.RLock:
        return self._stripes[hash(uid) % len(self._stripes)]

    def on_request(self, event_type: str | None, body: dict) -> None:
        with self._lock_for(body["metadata"]["uid"]):
            self._on_request(event_type, body)

    def reconcile(self, body: dict) -> None:
        meta = body["metadata"]
        with self._lock_for(meta["uid"]):
            seen = self.registry.get(meta["uid"])
            if (seen is not None and seen.current and seen.phase not in (None, "Pending")
                    and seen.generation >= (meta.get("generation") or 1)):
                return  # handled already by another path since this body was read
            self._reconcile(body)

    def admit(self, e: Entry) -> None:
        with self._lock_for(e.uid):
            self._admit(e)

    def apply_outcome(self, outcome: dict[str, Any]) -> None:
        with self._lock_for(outcome["uid"]):
            self._apply_outcome(outcome)

    def on_job(self, event_type: str | None, job: dict) -> None:
        owner = next((o for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == "TranscriptionRequest"), None)
        if owner is None:
            return  # a pooled runner: it serves many requests and reports through Redis
        with self._lock_for(owner["uid"]):
            self._on_job(event_type, job, owner)

    def check_dispatched(self, body: dict) -> None:
        with self._lock_for(body["metadata"]["uid"]):
            self._check_dispatched(body)

    # -- requests ---------------------------------------------------------------------
    def _on_request(self, event_type: str | None, body: dict) -> None:
        """Every watch event of a request: keep the registry, reconcile when needed."""
        uid = body["metadata"]["uid"]
        if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
            self.registry.remove(uid)
            self.wake()
            return
        entry = entry_from_body(body)
        if not self.registry.upsert_if_newer(entry):
            return  # an older view than one already handled (e.g. by the resync)
        if self.needs_reconcile(entry):
            self.reconcile(body)
        elif entry.phase in TERMINAL_PHASES or entry.phase == "Queued":
            self.wake()

    @staticmethod
    def needs_reconcile(entry: Entry) -> bool:
        return entry.phase in (None, "Pending") or not entry.current

    def _reconcile(self, body: dict) -> None:
        """A new request, a changed spec, or one left Pending: validate, cache, queue."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status = body.get("status") or {}
        entry = entry_from_body(body)
        if status.get("phase") == "Running" and status.get("jobName"):
            # The spec changed under a running Job: that Job works on the old spec.
            self.delete_job(ns, status["jobName"])
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec as exc:
            self.finish_failed(body, "InvalidSpec", str(exc), count_model=(body.get("spec") or {}).get("model"))
            return
        key, sha = known_cache_key(spec)
        if key and spec.cache.enabled:
            try:
                hit = self.store.get_result(key)
            except StoreError as exc:
                self.metrics.error("redis")
                msg = f"cannot reach Redis to look up the result cache: {exc}; retrying"
                if status.get("reason") != "RedisUnavailable":
                    self.patch_status(ns, name, {
                        "phase": "Pending", "reason": "RedisUnavailable", "message": msg,
                        "conditions": st.set_condition(status.get("conditions"), st.READY, False,
                                                       "RedisUnavailable", msg, meta.get("generation"))})
                    self.event(body, "Warning", "RedisUnavailable", msg)
                return  # the periodic resync retries Pending requests
            if hit is not None:
                self.finish_cached(body, spec, key, hit)
                return
        new = st.queued(body, cache_key=key, audio_sha=sha)
        if self.patch_status(ns, name, new) is not None:
            self.registry.upsert(Entry(**{**entry.__dict__, "phase": "Queued",
                                          "observed_generation": entry.generation, "cache_key": key}))
            self.event(body, "Normal", "Queued", f"queued for a runner (priority {spec.priority})")
        self.wake()

    def finish_cached(self, body: dict, spec: TranscriptionSpec, key: str, hit: dict) -> None:
        meta = body["metadata"]
        summary = result_summary(hit, key, result_key(key), cached=True)
        new = st.succeeded(body, summary, cached=True, message="answered from the result cache")
        if self.patch_status(meta["namespace"], meta["name"], new) is None:
            return
        self.metrics.admission_cache_hits_total.inc()
        self.metrics.transcriptions_total.labels(status="succeeded", model=spec.model).inc()
        age = _age_seconds(meta.get("creationTimestamp", ""))
        if age is not None:
            self.metrics.queue_wait_seconds.observe(age)
        self.registry.mark(meta["uid"], phase="Succeeded", observed_generation=meta.get("generation"))
        self.event(body, "Normal", "CacheHit", f"answered from the result cache ({key[:12]})")
        self.wake()

    def finish_failed(self, body: dict, reason: str, message: str, *, count_model: str | None = None,
                      error_type: str = "invalid_spec") -> None:
        meta = body["metadata"]
        if self.patch_status(meta["namespace"], meta["name"], st.failed(body, reason, message)) is None:
            return
        self.metrics.error(error_type)
        self.metrics.transcriptions_total.labels(status="failed", model=str(count_model or "unknown")[:64]).inc()
        self.registry.mark(meta["uid"], phase="Failed", observed_generation=meta.get("generation"))
        self.event(body, "Warning", reason, message)
        self.wake()

    # -- admission --------------------------------------------------------------------
    def step(self) -> None:
        """One admission pass: admit what fits the budget, update queue positions."""
        self.last_step = time.monotonic()
        if not self.synced:
            return
        entries = self.registry.snapshot()
        if self.pool:  # every request is one unit of pool work, whatever it asked for
            entries = [replace(e, slots=1) for e in entries]
        # plan() fits this pass's admissions into the budget; each admission marks its
        # request Running in the registry, so the next pass counts it before its watch
        # event arrives.
        p = plan(entries, self.capacity())
        for e in p.admit:
            try:
                self.admit(e)
            except Exception as exc:  # one bad request must not stop the queue
                log.exception("admitting %s/%s failed: %s", e.namespace, e.name, exc)
        # Positions shift by one for everyone behind an admitted request; patching all of
        # a long queue on every admission would be O(n^2) API writes. Update the front of
        # the queue first and at most POSITION_PATCHES_PER_STEP per pass: the head is
        # always exact, the tail catches up over the next passes.
        stale = sorted(((p.positions[e.uid], e) for e in entries
                        if e.phase == "Queued" and e.current and e.uid in p.positions
                        and p.positions[e.uid] != e.queue_position), key=lambda t: t[0])
        for pos, e in stale[:POSITION_PATCHES_PER_STEP]:
            try:
                reason = "WaitingForIdentical" if e.uid in p.waiting_for_identical else "Queued"
                msg = ("an identical request is running; its result will answer this one"
                       if reason == "WaitingForIdentical" else f"position {pos} in the queue")
                if self.patch_status(e.namespace, e.name, {"queuePosition": pos, "reason": reason,
                                                           "message": msg}) is not None:
                    self.registry.mark(e.uid, queue_position=pos)
                else:
                    self.registry.remove(e.uid)
            except Exception as exc:
                log.warning("queue position of %s/%s not updated: %s", e.namespace, e.name, exc)
        if len(stale) > POSITION_PATCHES_PER_STEP:
            self.wake()  # more to refresh: another pass soon
        if self.pool:
            try:
                self.ensure_pool()
            except Exception as exc:
                log.warning("pool sizing failed: %s", exc)
        self.update_gauges()

    def update_gauges(self) -> None:
        entries = self.registry.snapshot()
        counts = {ph: 0 for ph in ("Pending", "Queued", "Running", "Succeeded", "Failed")}
        for e in entries:
            counts[e.phase or "Pending"] = counts.get(e.phase or "Pending", 0) + 1
        for ph, n in counts.items():
            self.metrics.requests.labels(phase=ph).set(n)
        self.metrics.queue_size.set(counts["Queued"])
        oldest = min((e.created for e in entries if e.phase == "Queued" and e.created), default=None)
        self.metrics.queue_oldest_seconds.set((_age_seconds(oldest) or 0.0) if oldest else 0.0)
        self.metrics.active_workers.set(counts["Running"])

    def _admit(self, e: Entry) -> None:
        body = self.get_request(e.namespace, e.name)
        if body is None or body["metadata"]["uid"] != e.uid:
            self.registry.remove(e.uid)
            return
        status = body.get("status") or {}
        if status.get("phase") != "Queued" or status.get("observedGeneration") != body["metadata"].get("generation"):
            self.registry.upsert(entry_from_body(body))
            return
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec as exc:
            self.finish_failed(body, "InvalidSpec", str(exc))
            return
        key = status.get("cacheKey")
        if key and spec.cache.enabled:
            # An identical request may have finished while this one waited.
            try:
                hit = self.store.get_result(key, count=False)
            except StoreError:
                hit = None
            if hit is not None:
                self.store.record_lookup(True)
                self.finish_cached(body, spec, key, hit)
                return
        if self.pool:
            self.dispatch(e, body, spec)
            return
        # On an error the request stays Queued: the next pass re-admits it and adopts the
        # Job (409) or finds its result in the cache.
        self._start_job(e, body, status, build_job(body, spec, self.settings))

    def _start_job(self, e: Entry, body: dict, status: dict, job: dict) -> None:
        from kubernetes.client.exceptions import ApiException

        name = job["metadata"]["name"]
        try:
            self.batch.create_namespaced_job(e.namespace, job)
            self.metrics.jobs_total.labels(outcome="created").inc()
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self.batch.read_namespaced_job(name, e.namespace)
            if (existing.metadata.labels or {}).get(LABEL_REQUEST_UID) != e.uid:
                raise RuntimeError(f"Job {name} exists and belongs to another request") from None
            if existing.metadata.deletion_timestamp:
                return  # the old Job is still going away; the next pass recreates it
            log.info("Job %s/%s already exists (operator restart): adopting it", e.namespace, name)
        age = _age_seconds(body["metadata"].get("creationTimestamp", ""))
        if age is not None:
            self.metrics.queue_wait_seconds.observe(age)
        gen = body["metadata"].get("generation")
        conds = st.set_condition(status.get("conditions"), st.ADMITTED, True, "JobCreated",
                                 f"runner Job {name} created", gen)
        conds = st.set_condition(conds, st.READY, False, "Running", "transcribing", gen)
        self.patch_status(e.namespace, e.name, {
            "phase": "Running", "reason": "JobCreated", "message": f"runner Job {name} created",
            "jobName": name, "startedAt": now_rfc3339(), "queuePosition": None, "attempts": 0,
            "conditions": conds,
        })
        self.registry.mark(e.uid, phase="Running", job_name=name, queue_position=None)
        self.event(body, "Normal", "JobCreated", f"runner Job {name} created")

    # -- pooled mode ------------------------------------------------------------------
    def dispatch(self, e: Entry, body: dict, spec: TranscriptionSpec) -> None:
        """Send a request to the runner pool. XADD first, then the status: a crash in
        between sends it twice (harmless: the second is a cache hit), never zero times."""
        meta = body["metadata"]
        item = WorkItem(meta["uid"], meta["namespace"], meta["name"], meta.get("generation") or 1,
                        spec.model_dump(by_alias=True, mode="json"))
        try:
            WorkQueue(self.store.client).dispatch(item)
        except Exception as exc:
            self.metrics.error("redis")
            raise StoreError(f"cannot queue {meta['name']} on the Redis stream: {exc}") from exc
        status = body.get("status") or {}
        gen = meta.get("generation")
        conds = st.set_condition(status.get("conditions"), st.ADMITTED, True, "Dispatched",
                                 "sent to the runner pool", gen)
        conds = st.set_condition(conds, st.READY, False, "Running", "waiting for a pooled runner", gen)
        self.patch_status(e.namespace, e.name, {
            "phase": "Running", "reason": "Dispatched", "message": "sent to the runner pool",
            "jobName": None, "startedAt": now_rfc3339(), "queuePosition": None, "attempts": 0,
            "conditions": conds,
        })
        self.registry.mark(e.uid, phase="Running", job_name=None, queue_position=None)
        age = _age_seconds(meta.get("creationTimestamp", ""))
        if age is not None:
            self.metrics.queue_wait_seconds.observe(age)
        self.event(body, "Normal", "Dispatched", "sent to the runner pool")

    def ensure_pool(self) -> None:
        """Size the pool from the work outstanding, within the GPU budget."""
        outstanding = sum(1 for e in self.registry.snapshot() if e.phase == "Running" and not e.job_name)
        desired = min(self.max_pool_runners, math.ceil(outstanding / self.settings.requests_per_runner))
        if desired <= 0:
            return
        jobs = self.batch.list_namespaced_job(self.pool_namespace, label_selector=f"{LABEL_POOL}=true").items
        active = [j for j in jobs if not any(c.type in ("Complete", "Failed") and c.status == "True"
                                             for c in (j.status.conditions or []))]
        for _ in range(desired - len(active)):
            self._pool_seq += 1
            name = f"kubescribe-pool-{int(time.time() * 1000):x}-{self._pool_seq}"
            self.batch.create_namespaced_job(self.pool_namespace,
                                             build_pool_job(self.settings, self.pool_namespace, name))
            self.metrics.jobs_total.labels(outcome="created").inc()
            log.info("pooled runner %s/%s started (%d outstanding)", self.pool_namespace, name, outstanding)

    def consume_outcomes(self, stop: threading.Event) -> None:
        """Apply runner outcomes from the done stream; pending ones first after a restart."""
        queue = WorkQueue(self.store.client)
        cursor = "0"  # our own unacknowledged entries first
        backoff = 0.5
        while not stop.is_set():
            try:
                got = queue.outcomes("operator", pending=cursor == "0", block_ms=2000)
                backoff = 0.5
            except Exception as exc:
                log.warning("reading outcomes failed (%s); retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                continue
            entries = got
            if cursor == "0" and not entries:
                cursor = ">"
                continue
            for entry_id, fin in entries:
                try:
                    if fin is not None:
                        self.apply_outcome({"uid": fin.uid, "namespace": fin.namespace, "name": fin.name,
                                            "generation": fin.generation, "attempts": fin.attempts,
                                            "summary": fin.outcome.model_dump(by_alias=True)})
                    queue.ack_outcome(entry_id)
                except Exception as exc:  # left pending; retried after a restart
                    log.exception("outcome %s not applied: %s", entry_id, exc)

    def _apply_outcome(self, outcome: dict[str, Any]) -> None:
        body = self.get_request(outcome["namespace"], outcome["name"])
        if body is None or body["metadata"]["uid"] != outcome["uid"]:
            return
        status = body.get("status") or {}
        if (status.get("phase") != "Running" or status.get("jobName")
                or body["metadata"].get("generation") != outcome["generation"]):
            return  # finished already (a repeated outcome), or the spec changed since
        summary = outcome["summary"]
        if summary.get("ok"):
            self.complete(body, summary, outcome["attempts"], "a pooled runner")
        else:
            reason = summary.get("reason") or "RunnerFailed"
            message = summary.get("message") or "the runner failed"
            if not summary.get("final", True):
                message = f"failed {outcome['attempts']} time(s), retries exhausted: {message}"
            self.fail_from_runner(body, reason, message, outcome["attempts"], _error_type(reason))

    def delete_job(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- jobs -------------------------------------------------------------------------
    def _on_job(self, event_type: str | None, job: dict, owner: dict) -> None:
        meta = job["metadata"]
        body = self.get_request(meta["namespace"], owner["name"])
        if body is None or body["metadata"]["uid"] != owner["uid"]:
            return
        status = body.get("status") or {}
        if status.get("phase") != "Running" or status.get("jobName") != meta["name"]:
            return  # finished already, or a Job of an older generation
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self.requeue(body, "JobDeleted", f"runner Job {meta['name']} was deleted; queued again")
            return
        jstatus = job.get("status") or {}
        conds = {c["type"]: c for c in jstatus.get("conditions") or [] if c.get("status") == "True"}
        attempts = int(jstatus.get("failed") or 0) + int(jstatus.get("active") or 0) + int(jstatus.get("succeeded") or 0)
        if "Complete" in conds:
            self.job_succeeded(body, meta["name"], attempts)
        elif "Failed" in conds:
            self.job_failed(body, meta["name"], conds["Failed"], attempts, int(jstatus.get("failed") or 0))
        elif int(jstatus.get("active") or 0) > int(jstatus.get("ready") or 0) and self.fail_if_stuck(body, meta):
            return
        elif attempts and attempts != status.get("attempts"):
            failed = int(jstatus.get("failed") or 0)
            self.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], {"attempts": attempts})
            if failed > 0 and int(jstatus.get("active") or 0) > 0:
                last = self.termination_summary(meta["namespace"], meta["name"])
                why = (last or {}).get("message") or "the runner failed"
                self.event(body, "Warning", "Retrying", f"attempt {failed} failed ({why}); retrying")

    def fail_if_stuck(self, body: dict, job_meta: dict) -> bool:
        """Fail the request, and delete its Job, when a runner pod can never start."""
        pods = self.core.list_namespaced_pod(job_meta["namespace"],
                                             label_selector=f"batch.kubernetes.io/job-name={job_meta['name']}")
        stuck = stuck_pod(self.core.api_client.sanitize_for_serialization(pods.items), container=CONTAINER,
                          now=datetime.now(timezone.utc), grace=self.settings.image_pull_grace_seconds)
        if stuck is None:
            return False
        attempts = int((body.get("status") or {}).get("attempts") or 1)
        self.metrics.jobs_total.labels(outcome="failed").inc()
        self.fail_from_runner(body, stuck.reason, stuck.message, attempts, "job_failed")
        # The pod would back off and retry the pull for ever; the request is over.
        self.delete_job(job_meta["namespace"], job_meta["name"])
        return True

    def requeue(self, body: dict, reason: str, message: str) -> None:
        meta = body["metadata"]
        new = st.queued(body, cache_key=(body.get("status") or {}).get("cacheKey"),
                        audio_sha=(body.get("status") or {}).get("audioSha256"))
        new.update(reason=reason, message=message)
        if self.patch_status(meta["namespace"], meta["name"], new) is not None:
            self.registry.mark(meta["uid"], phase="Queued", job_name=None, queue_position=None)
            self.event(body, "Warning", reason, message)
        self.wake()

    def termination_summary(self, namespace: str, job: str) -> dict[str, Any] | None:
        """The runner's termination message from the Job's latest finished pod."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
        best, best_time = None, ""
        for pod in pods:
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                if cs.name != CONTAINER or not cs.state or not cs.state.terminated:
                    continue
                t = cs.state.terminated
                finished = t.finished_at.isoformat() if t.finished_at else ""
                if finished >= best_time:
                    best_time = finished
                    best = {"exitCode": t.exit_code, "raw": t.message or "", "reason": t.reason}
        if best is None:
            return None
        try:
            doc = json.loads(best["raw"])
            if isinstance(doc, dict):
                doc.setdefault("exitCode", best["exitCode"])
                return doc
        except ValueError:
            pass
        code = best["exitCode"]
        reason = best["reason"] if best["reason"] == "OOMKilled" else (
            "RunnerKilled" if code in (137, 143) else "RunnerCrashed")
        text = (best["raw"] or "").strip()[-1024:]
        return {"ok": False, "reason": reason, "exitCode": code,
                "message": f"runner exited with code {code}" + (f": {text}" if text else "")}

    def job_succeeded(self, body: dict, job: str, attempts: int) -> None:
        meta = body["metadata"]
        summary = self.termination_summary(meta["namespace"], job) or {}
        if not summary.get("ok"):
            key = (body.get("status") or {}).get("cacheKey")
            hit = self.store.read_result_key(result_key(key)) if key else None
            if hit is None:
                self.finish_failed(body, "NoResult", "the runner finished but left no result summary and "
                                   "no result in Redis", error_type="internal")
                return
            summary = result_summary(hit, key, result_key(key), cached=False)
        self.metrics.jobs_total.labels(outcome="succeeded").inc()
        self.complete(body, summary, attempts, f"Job {job}")

    def complete(self, body: dict, summary: dict[str, Any], attempts: int, by: str) -> None:
        meta = body["metadata"]
        new = st.succeeded(body, summary, cached=bool(summary.get("cached")), message=f"transcribed by {by}")
        new["attempts"] = max(attempts, 1)
        if self.patch_status(meta["namespace"], meta["name"], new) is None:
            return
        model = (body.get("spec") or {}).get("model", "unknown")
        self.metrics.observe_transcription(model=model, status="succeeded",
                                           seconds=summary.get("processingSeconds"),
                                           audio_seconds=summary.get("audioDurationSeconds"))
        self.registry.mark(meta["uid"], phase="Succeeded")
        rtf = summary.get("realtimeFactor")
        self.event(body, "Normal", "Succeeded",
                   f"transcribed {summary.get('audioDurationSeconds') or 0:.1f}s of "
                   f"{summary.get('language') or '?'} audio"
                   + (f" at {rtf:.3f}x real time" if isinstance(rtf, (int, float)) else ""))
        self.wake()

    def job_failed(self, body: dict, job: str, cond: dict, attempts: int, failures: int) -> None:
        summary = self.termination_summary(body["metadata"]["namespace"], job) or {}
        runner_reason = summary.get("reason")
        runner_msg = summary.get("message") or ""
        cond_reason = cond.get("reason") or "Failed"
        if cond_reason == "DeadlineExceeded":
            reason, error_type = "Timeout", "timeout"
            timeout = (body.get("spec") or {}).get("timeoutSeconds")
            message = f"the runner did not finish within timeoutSeconds={timeout}"
        elif cond_reason == "PodFailurePolicy":
            reason, error_type = runner_reason or "BadInput", "bad_audio"
            message = runner_msg or "the runner refused the input"
        elif cond_reason == "BackoffLimitExceeded":
            reason, error_type = runner_reason or "RunnerFailed", "job_failed"
            message = f"failed {failures} time(s), retries exhausted" + (f": {runner_msg}" if runner_msg else "")
        else:
            reason, error_type = runner_reason or cond_reason, "job_failed"
            message = runner_msg or cond.get("message") or "the runner Job failed"
        if runner_reason in ("AudioNotFound", "ModelLoadFailed", "RedisUnavailable"):
            error_type = _error_type(runner_reason)
        self.metrics.jobs_total.labels(outcome="failed").inc()
        self.fail_from_runner(body, reason, message, max(attempts, failures), error_type)

    def fail_from_runner(self, body: dict, reason: str, message: str, attempts: int, error_type: str) -> None:
        new = st.failed(body, reason, message)
        new["attempts"] = attempts
        meta = body["metadata"]
        if self.patch_status(meta["namespace"], meta["name"], new) is None:
            return
        self.metrics.error(error_type)
        self.metrics.transcriptions_total.labels(status="failed", model=(body.get("spec") or {}).get("model", "unknown")).inc()
        self.registry.mark(meta["uid"], phase="Failed")
        self.event(body, "Warning", reason, message)
        self.wake()

    # -- resync -----------------------------------------------------------------------
    def resync(self) -> None:
        """List every request: rebuild the registry, retry Pending ones, find lost Jobs."""
        if self.settings.namespace:
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.settings.namespace, PLURAL)
        else:
            listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        items = listing["items"]
        list_rv = (listing.get("metadata") or {}).get("resourceVersion")
        self.registry.replace_all((entry_from_body(b) for b in items if not b["metadata"].get("deletionTimestamp")),
                                  list_version=int(list_rv) if str(list_rv or "").isdigit() else 0)
        for body in items:
            entry = entry_from_body(body)
            try:
                if self.needs_reconcile(entry):
                    self.reconcile(body)
                elif entry.phase == "Running" and entry.job_name:
                    self.check_job(body, entry.job_name)
                elif entry.phase == "Running" and self.pool:
                    self.check_dispatched(body)
            except Exception as exc:
                log.warning("resync of %s/%s failed: %s", entry.namespace, entry.name, exc)
        # Admission starts only after the first full pass: every request found at startup
        # is queued by then, so the budget goes by priority, not by watch-event order.
        self.synced = True
        self.wake()

    def check_job(self, body: dict, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        try:
            job = self.batch.read_namespaced_job(name, meta["namespace"])
        except ApiException as exc:
            if exc.status == 404:
                self.requeue(body, "JobLost", f"runner Job {name} no longer exists; queued again")
                return
            raise
        # Level-triggered: a Job end whose event was missed (operator down, a failed
        # status patch) is applied here.
        self.on_job("MODIFIED", self.batch.api_client.sanitize_for_serialization(job))

    def _check_dispatched(self, body: dict) -> None:
        """A pooled request past its timeout (plus the reclaim delay) ends as Timeout."""
        status, spec = body.get("status") or {}, body.get("spec") or {}
        age = _age_seconds(status.get("startedAt") or "")
        limit = int(spec.get("timeoutSeconds") or 3600) + self.settings.claim_idle_ms / 1000
        if age is not None and age > limit:
            self.fail_from_runner(body, "Timeout", f"no pooled runner finished it within "
                                  f"timeoutSeconds={spec.get('timeoutSeconds')}", status.get("attempts") or 0,
                                  "timeout")

    def refresh_process_gauges(self) -> None:
        import psutil

        self.metrics.ram_usage_bytes.set(psutil.Process().memory_info().rss)
        self.update_gauges()

    def healthy(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_step
        ok = idle < 120
        return ok, f"admission loop last ran {idle:.0f}s ago"
