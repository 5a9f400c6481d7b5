"""The operator's one path: gather what a decision needs, decide, apply.

Level-triggered throughout: every entry point looks at the object as it is now (phase,
generation, observedGeneration) and asks a pure decision (``admission``, ``outcomes``)
for a :class:`~.lifecycle.Transition`, which :meth:`Reconciler.apply` writes. A missed
or repeated event, or an operator restart at any point, leads to the same result. kopf's
own progress annotations are not used: the request's status is the record.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from kubescribe import KIND
from kubescribe.metrics import OperatorMetrics
from kubescribe.models import TERMINAL_PHASES, InvalidSpec, Phase, TranscriptionSpec, parse_spec
from kubescribe.outcomes import RunnerOutcome
from kubescribe.progress import RunBoard
from kubescribe.settings import OperatorSettings
from kubescribe.objectstore import ObjectStoreError
from kubescribe.store import Owner, Store, StoreError, known_cache_key, result_key
from kubescribe.streams import Finished, WorkQueue

from . import admission, kueue, outcomes, status
from .admission import NOT_ASKED, CacheAnswer
from .jobs import CONTAINER, JOB_NAME_PREFIX, LABEL_MANAGED_BY, MANAGED_BY
from .kube import Kube
from .lifecycle import Transition, age_seconds, needs_reconcile, requeue, seconds_until_expiry, stale_job
from .pods import stuck_pod
from .progress import progress_to_write
from .retention import Retention
from .scheduler import Registry, entry_from_body

log = logging.getLogger("kubescribe.operator")

#: Requests per page of the resync's LIST.
RESYNC_PAGE = 500


class Reconciler:
    """The operator's state (registry, per-request locks) and its entry points.

    Args:
        settings: operator settings.
        store: the Redis store (result cache lookups).
        kube: the API calls (:class:`~.kube.Kube`).
        metrics: operator metrics.
    """

    def __init__(self, settings: OperatorSettings, store: Store, kube: Kube, metrics: OperatorMetrics):
        self.settings = settings
        self.store = store
        self.kube = kube
        self.metrics = metrics
        self.queue = WorkQueue(store.client, claim_idle_ms=settings.claim_idle_ms)
        self.registry = Registry()
        # Many stripes: admissions run in parallel and hold their request's stripe across
        # API calls; with few, watch handlers of unrelated requests would queue behind them.
        self._stripes = [threading.RLock() for _ in range(1024)]
        self.wakeup = threading.Event()
        self.synced = False
        self.pool = settings.mode == "pool"
        self.kueue = settings.admission_engine == "kueue"
        self.last_step = time.monotonic()  # the admission loop's last pass (liveness)
        self.board = RunBoard(store.client)
        self.retention = Retention(store, settings.s3_sweep_seconds)
        self._running_since: dict[str, float] = {}  # uid -> when first seen Running
        self._progress_written: dict[str, int] = {}  # uid -> percent in its status
        self._progress_series: set[tuple[str, str, str]] = set()  # gauge series: (namespace, name, uid)
        self._resync_workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="resync")
        metrics.gpu_budget.set(settings.gpu_budget)

    def wake(self) -> None:
        self.wakeup.set()

    # -- applying a decision ----------------------------------------------------------
    def apply(self, body: dict, t: Transition | None) -> bool:
        """Write a transition: the status patch first; a request deleted meanwhile (404)
        leaves the registry, and gets no Event and no count. Returns whether it applied."""
        if t is None:
            return False
        meta = body["metadata"]
        for kind in t.errors:
            self.metrics.error(kind)
        if t.status is not None:
            patched = self.kube.patch_status(meta["namespace"], meta["name"], t.status)
            if patched is None:
                self.registry.remove(meta["uid"])
                return False
            # The registry takes the patched object's resourceVersion: a LIST or a watch
            # event read before this write is then older and cannot roll the entry back
            # (a resync page listed just before the Queued patch used to queue it twice).
            if (patched.get("metadata") or {}).get("uid") == meta["uid"]:
                self.registry.upsert_if_newer(entry_from_body(patched))
        if t.registry:
            self.registry.mark(meta["uid"], **t.registry)
        if t.delete_job:
            self.kube.delete_job(meta["namespace"], t.delete_job)
        self._count(t)
        if t.event is not None and (t.event.type == "Warning" or self.settings.normal_events):
            self.kube.event(body, t.event.type, t.event.reason, t.event.message)
        if t.wake:
            self.wake()
        return True

    def _count(self, t: Transition) -> None:
        m = self.metrics
        if t.finished is not None:
            m.observe_outcome(t.model, t.finished)
            m.observe_runner_cache(t.finished)
        if t.job_outcome:
            m.jobs_total.labels(outcome=t.job_outcome).inc()
        if t.queue_wait is not None:
            m.queue_wait_seconds.observe(t.queue_wait)
        if t.admission_hit:
            m.admission_cache_hits_total.inc()
        if t.cache_lookup is not None:
            self.store.record_lookup(t.cache_lookup)

    def cache_answer(self, key: str | None, spec: TranscriptionSpec, body: dict) -> CacheAnswer:
        """The cache's answer for ``body``'s request; a hit takes the request's reference
        to the result in the object store (kubescribe.objectstore)."""
        if not key or not spec.cache.enabled or not admission.answers_from_cache(spec):
            return NOT_ASKED
        meta = body["metadata"]
        owner = Owner(meta["uid"], f"{meta.get('namespace')}/{meta.get('name')}")
        try:
            hit = self.store.get_result(key, count=False, owner=owner)  # counted once, by the transition
        except StoreError as exc:
            return CacheAnswer("unreachable", error=str(exc))
        except ObjectStoreError as exc:
            # Redis answered and missed; only the bucket is down. A runner looks again and
            # keeps retrying (ObjectStoreUnavailable) until it can read or store the
            # result, which is where the request should wait: Running, with its Job.
            log.warning("cache lookup of %s/%s: the object store did not answer (%s); treated as a miss",
                        meta.get("namespace"), meta.get("name"), exc.message)
            return CacheAnswer("miss")
        return CacheAnswer("miss") if hit is None else CacheAnswer("hit", result=hit)

    # -- per-request serialisation ----------------------------------------------------
    # Watch events, the admission loop, the outcome consumer and the resync can all reach
    # the same request at once; a striped re-entrant lock keyed by uid makes each request's
    # transitions happen one at a time, so an outcome is counted and announced once.
    def lock_for(self, uid: str) -> threading.RLock:
        return self._stripes[hash(uid) % len(self._stripes)]

    # -- requests ---------------------------------------------------------------------
    def on_request(self, event_type: str | None, body: dict) -> None:
        """Every watch event of a request: keep the registry, reconcile when needed."""
        uid = body["metadata"]["uid"]
        with self.lock_for(uid):
            if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
                self.registry.remove(uid)
                self.wake()
                if event_type == "DELETED":
                    self.retention.on_deleted(body)
                return
            entry = entry_from_body(body)
            if not self.registry.upsert_if_newer(entry):
                return  # an older view than one already handled (e.g. by the resync)
            if needs_reconcile(entry):
                self.reconcile(body)
            elif entry.phase in TERMINAL_PHASES or entry.phase == Phase.Queued.value:
                self.wake()

    def reconcile(self, body: dict) -> None:
        """A new request, a changed spec, or one left Pending: validate, cache, queue."""
        meta = body["metadata"]
        with self.lock_for(meta["uid"]):
            seen = self.registry.get(meta["uid"])
            if (seen is not None and seen.current and seen.phase not in (None, Phase.Pending.value)
                    and seen.generation >= (meta.get("generation") or 1)):
                return  # handled already by another path since this body was read
            old_job = stale_job(body)
            if old_job:
                self.kube.delete_job(meta["namespace"], old_job)  # it works on the old spec
            try:
                spec: TranscriptionSpec | InvalidSpec = parse_spec(body.get("spec") or {})
            except InvalidSpec as exc:
                spec = exc
            key, sha = known_cache_key(spec) if isinstance(spec, TranscriptionSpec) else (None, None)
            cache = self.cache_answer(key, spec, body) if isinstance(spec, TranscriptionSpec) else NOT_ASKED
            self.apply(body, admission.on_seen(body, spec, key, sha, cache))

    # -- Jobs and runner outcomes -----------------------------------------------------
    def on_job(self, event_type: str | None, job: dict, workload: dict | None = None) -> None:
        owner = next((o for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == "TranscriptionRequest"), None)
        if owner is None:
            return  # a pooled runner: it serves many requests and reports through Redis
        deleted = event_type == "DELETED" or bool(job["metadata"].get("deletionTimestamp"))
        if not deleted and not self.kueue and outcomes.quiet(job):
            return  # running and healthy: nothing to decide, no read of the request
        seen = self.registry.get(owner["uid"])
        if seen is not None and seen.current and seen.phase in TERMINAL_PHASES:
            # finished on its current spec: the Job's later events (its completion seen
            # again, the TTL deleting it) change nothing, and need no read of the request
            return
        with self.lock_for(owner["uid"]):
            meta = job["metadata"]
            body = self.kube.get_request(meta["namespace"], owner["name"])
            if body is None or body["metadata"]["uid"] != owner["uid"]:
                return  # gone
            if deleted and self._replaced(job):
                return  # a late event of an earlier Job of the same (deterministic) name
            if self.kueue and (kueue.waiting(body, job) or (kueue.suspended(job) and outcomes.owns(body, job))):
                if workload is None and kueue.suspended(job) and not deleted:
                    workload = self.kube.job_workload(meta["namespace"], meta["uid"])
                self.apply(body, kueue.on_job(body, job, deleted=deleted, workload=workload))
                return
            if not outcomes.owns(body, job):
                return  # finished already, or a Job of an older generation
            last = stored = stuck = None
            if not deleted and outcomes.needs_pods(job):
                pods = self.kube.job_pods(meta["namespace"], meta["name"])
                last = outcomes.termination_outcome(pods, CONTAINER)
                conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or []
                         if c.get("status") == "True"}
                if "Complete" in conds and (last is None or not last.ok):
                    stored = self._stored_outcome(body)
                elif not conds:
                    stuck = stuck_pod(pods, container=CONTAINER, now=datetime.now(timezone.utc),
                                      grace=self.settings.image_pull_grace_seconds)
            self.apply(body, outcomes.on_job(body, job, deleted=deleted, last=last, stored=stored, stuck=stuck))

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

    def consume_outcomes(self, stop: threading.Event) -> None:
        """Apply runner outcomes from the done stream; pending ones first after a restart."""
        pending = True  # our own unacknowledged entries first
        backoff = 0.5
        while not stop.is_set():
            try:
                got = self.queue.outcomes("operator", pending=pending, block_ms=2000)
                backoff = 0.5
            except Exception as exc:
                log.warning("reading outcomes failed (%s); retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                continue
            if pending and not got:
                pending = False
                continue
            for entry_id, done in got:
                try:
                    if done is not None:
                        self.on_pool_outcome(done)
                    self.queue.ack_outcome(entry_id)
                except Exception as exc:  # left pending; retried after a restart
                    log.exception("outcome %s not applied: %s", entry_id, exc)

    def on_pool_outcome(self, done: Finished) -> None:
        with self.lock_for(done.uid):
            body = self.kube.get_request(done.namespace, done.name)
            if body is not None:
                self.apply(body, outcomes.on_pool_outcome(body, done))

    # -- resync -----------------------------------------------------------------------
    def resync(self) -> None:
        """List every request: rebuild the registry, retry Pending ones, find lost Jobs.

        A page at a time (``RESYNC_PAGE`` requests): at 10,000 requests one LIST of them
        all held every body at once, and that transient doubled the operator's peak memory.
        Each page is merged into the registry before its requests are looked at, as the
        whole list used to be; what no page held is dropped at the end."""
        listed: set[str] = set()
        list_rv = None
        quiet = self._quiet_jobs()
        for page in self.kube.request_pages(self.settings.namespace, RESYNC_PAGE):
            if list_rv is None:
                list_rv = (page.get("metadata") or {}).get("resourceVersion")
            items = page["items"]
            live = [entry_from_body(b) for b in items if not b["metadata"].get("deletionTimestamp")]
            listed.update(e.uid for e in live)
            self.registry.merge(live)
            self._resync_page(items, quiet)
        self.registry.drop_unlisted(listed, int(list_rv) if str(list_rv or "").isdigit() else 0)
        if self.retention.sweep_due():
            self.retention.sweep(listed)
        # Admission starts only after the first full pass: every request found at startup
        # is queued by then, so the budget goes by priority, not by watch-event order.
        self.synced = True
        self.wake()

    def _quiet_jobs(self) -> set[tuple[str, str, str]]:
        """(namespace, name, owner uid) of the runner Jobs that need no look this pass
        (:func:`outcomes.quiet`: running, no pod failed, every pod ready).

        One paged LIST of Jobs replaces a read of the Job of every Running request: with
        thousands Running, thousands of reads every pass. Only names are kept. A Job that
        ends after this listing is seen by its watch event, or by the next pass; a Job
        missing from it (created meanwhile, or succeeded: the list leaves those out) is
        read, so none is taken for lost. If the listing fails, every Job is read as before."""
        quiet: set[tuple[str, str, str]] = set()
        if self.kueue:
            return quiet  # on_job reads every Job under Kueue: a suspended Job is not quiet
        try:
            for items in self.kube.job_pages(self.settings.namespace, RESYNC_PAGE):
                for job in items:
                    meta = job.get("metadata") or {}
                    owner = next((o.get("uid") for o in meta.get("ownerReferences") or []
                                  if o.get("kind") == KIND), None)
                    if owner and not meta.get("deletionTimestamp") and outcomes.quiet(job):
                        quiet.add((meta.get("namespace"), meta.get("name"), owner))
        except Exception as exc:
            log.warning("listing runner Jobs failed; this pass reads each Running request's Job: %s", exc)
            return set()
        return quiet

    def _resync_page(self, items: list[dict], quiet: set[tuple[str, str, str]] = frozenset()) -> None:
        """The requests of one page, ``KUBESCRIBE_WORKERS`` at a time: what a pass does
        for each is API calls (a TTL deletion, a Job read), and after a burst thousands
        of them come due in the same pass."""
        now = datetime.now(timezone.utc)
        list(self._resync_workers.map(lambda body: self._resync_one(body, now, quiet), items))

    def _resync_one(self, body: dict, now: datetime, quiet: set[tuple[str, str, str]] = frozenset()) -> None:
        entry = entry_from_body(body)
        try:
            left = seconds_until_expiry(body, self.settings.request_ttl_seconds, now)
            if left is not None and left <= 0:
                self.expire(body)
            elif needs_reconcile(entry):
                self.reconcile(body)
            elif entry.job_name and entry.phase == Phase.Running.value and \
                    (entry.namespace, entry.job_name, entry.uid) in quiet:
                pass  # its Job was listed this pass, running and healthy
            elif entry.job_name and (entry.phase == Phase.Running.value
                                     or (self.kueue and entry.phase == Phase.Queued.value)):
                self.check_job(body, entry.job_name)  # under Kueue a Queued request may wait on its Job
            elif entry.phase == Phase.Running.value and self.pool:
                with self.lock_for(entry.uid):
                    self.apply(body, outcomes.on_pool_timeout(body, datetime.now(timezone.utc),
                                                              self.settings.claim_idle_ms / 1000))
        except Exception as exc:
            log.warning("resync of %s/%s failed: %s", entry.namespace, entry.name, exc)

    def expire(self, body: dict) -> None:
        """Delete a finished request whose TTL has passed (found by the resync, so within
        ``resync_seconds`` of it). Its Job, if still there, goes with it by garbage
        collection; its result stays in Redis."""
        meta = body["metadata"]
        with self.lock_for(meta["uid"]):
            if self.kube.delete_request(meta["namespace"], meta["name"], meta["uid"], meta.get("resourceVersion")):
                self.registry.remove(meta["uid"])
                self.metrics.requests_expired_total.inc()
                log.info("deleted %s/%s: finished and past its TTL", meta["namespace"], meta["name"])

    # -- progress -----------------------------------------------------------------------
    def report_progress(self) -> None:
        """Once per KUBESCRIBE_PROGRESS_SECONDS: runners' reports into status.progress
        (operator.progress decides when) and the per-request gauge, whose series go
        away with the requests that leave Running."""
        now = time.monotonic()
        running = {e.uid: e for e in self.registry.snapshot() if e.phase == Phase.Running.value}
        for uid in list(self._running_since):
            if uid not in running:
                self._running_since.pop(uid, None)
                self._progress_written.pop(uid, None)
        for labels in list(self._progress_series):
            if labels[2] not in running:
                self.metrics.request_progress_ratio.remove(labels[0], labels[1])
                self._progress_series.discard(labels)
        if not running:
            return
        try:
            reports = self.board.progress(running)
        except Exception as exc:  # Redis down: no progress this period
            log.debug("progress reports unavailable: %s", exc)
            return
        for uid, e in running.items():
            since = self._running_since.setdefault(uid, now)
            got = reports.get(uid)
            if got is not None:
                self.metrics.request_progress_ratio.labels(e.namespace, e.name).set(got.percent / 100)
                self._progress_series.add((e.namespace, e.name, uid))
            percent = progress_to_write(phase=e.phase, written=self._progress_written.get(uid), reported=got,
                                        running_for=now - since, period=self.settings.progress_seconds)
            if percent is None:
                continue
            with self.lock_for(uid):
                now_entry = self.registry.get(uid)
                if now_entry is None or now_entry.phase != Phase.Running.value:
                    continue  # ended meanwhile: its final status says 100 (or why not)
                if self.kube.patch_status(e.namespace, e.name, status.progress(percent)) is not None:
                    self._progress_written[uid] = percent

    def check_job(self, body: dict, name: str) -> None:
        """Level-triggered: a Job end whose event was missed (operator down, a failed
        status patch) is applied here; a Job that vanished re-queues its request."""
        meta = body["metadata"]
        job = self.kube.read_job(meta["namespace"], name)
        if job is None:
            with self.lock_for(meta["uid"]):
                # The listed body may be stale: the Job's end may have been applied since.
                fresh = self.kube.get_request(meta["namespace"], meta["name"])
                status = (fresh or {}).get("status") or {}
                if (fresh is None or fresh["metadata"]["uid"] != meta["uid"]
                        or status.get("phase") != Phase.Running.value or status.get("jobName") != name):
                    return
                self.apply(fresh, requeue(fresh, "JobLost", f"runner Job {name} no longer exists; queued again"))
            return
        self.on_job("MODIFIED", job)

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

    def update_gauges(self) -> None:
        entries = self.registry.snapshot()
        counts = {ph.value: 0 for ph in Phase}
        for e in entries:
            counts[e.phase or Phase.Pending.value] = counts.get(e.phase or Phase.Pending.value, 0) + 1
        for ph, n in counts.items():
            self.metrics.requests.labels(phase=ph).set(n)
        self.metrics.queue_size.set(counts[Phase.Queued.value])
        oldest = min((e.created for e in entries if e.phase == Phase.Queued.value and e.created), default=None)
        self.metrics.queue_oldest_seconds.set((age_seconds(oldest) or 0.0) if oldest else 0.0)
        self.metrics.active_workers.set(counts[Phase.Running.value])

    # -- health -----------------------------------------------------------------------
    def refresh_gauges(self) -> None:
        """Before a scrape: process RAM, registry gauges, and the figures kept in Redis."""
        import psutil

        self.metrics.ram_usage_bytes.set(psutil.Process().memory_info().rss)
        self.update_gauges()
        stats = self.store.stats(count_keys=False)
        self.metrics.sync_cache_stats(stats.hit_rate, stats.clears)

    def healthy(self) -> tuple[bool, str]:
        """Liveness: the admission loop is turning (a stuck loop needs a restart)."""
        idle = time.monotonic() - self.last_step
        return idle < 120, f"admission loop last ran {idle:.0f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Readiness: alive, and both Redis and the API server answer."""
        ok, detail = self.healthy()
        if not ok:
            return ok, detail
        try:
            self.store.ping()
        except Exception as exc:
            return False, f"Redis does not answer: {exc}"
        try:
            self.kube.ping()
        except Exception as exc:
            return False, f"the API server does not answer: {exc}"
        return True, "admission loop running; Redis and the API server answer"
