"""The admission pass: who runs next under the GPU budget, where everyone stands in the
queue, and how many pooled runners there should be.

Runs in its own loop (operator/main.py), at most every STEP_SECONDS and at once when a
transition frees a slot or queues a request. The decisions are ``scheduler.plan``,
``scheduler.position_updates``, ``intake.on_admitted`` and ``pool_size``; this module
gathers their inputs and hands their transitions to the applier. The loop's liveness is
this module's own: ``Admitter.healthy`` says when the pass last ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from kubescribe.metrics import OperatorMetrics
from kubescribe.models import InvalidSpec, Phase, TranscriptionSpec, parse_spec
from kubescribe.settings import OperatorSettings
from kubescribe.store import StoreError
from kubescribe.streams import WorkItem, WorkQueue

from . import intake, kueue, pool_size, scheduler
from .applier import Applier
from .health import Gauges
from .intake import NOT_ASKED, CacheAnswer
from .jobs import build_job, build_pool_job
from .kube import JobGoingAway, Kube
from .registry import Entry, entry_from_body

log = logging.getLogger("kubescribe.operator")

#: Seconds between two rounds of queue-position writes; the admission loop's own period.
POSITION_PERIOD = 5.0
#: A pass not run for this long means the loop is stuck: liveness fails, the pod restarts.
STUCK_SECONDS = 120.0
#: The pool's Jobs are listed again after this long even when the last list showed enough
#: runners (one may have ended since); more often only when the work asks for more.
POOL_LIST_PERIOD = 5.0
#: The registry's gauges are counted after a pass at most this often (and before every
#: scrape): each count walks every request, and a burst makes many passes a second.
GAUGE_PERIOD = 1.0
#: Pool mode: the batches of KUBESCRIBE_REQUESTS_PER_RUNNER requests dispatched per runner,
#: the one it decodes and the next, ready on the stream when it finishes. With only the
#: first, a runner that finished looked at a stream the operator had not refilled yet
#: (that waits for the outcomes) and took the one or two left: a window each, nearly the
#: cost of a full one (pooled_vs_bound).
POOL_BATCHES_AHEAD = 2

#: The cache's answer for a request: (cache key, spec, body) -> answer (``cache_lookup``).
Lookup = Callable[[str | None, TranscriptionSpec, dict], CacheAnswer]


class Admitter:
    """The admission pass of one operator.

    Args:
        applier: writes the transitions; its registry is the pass's view of the queue.
        kube: reads requests, creates Jobs, patches queue positions.
        settings: budget, mode, admission engine, queue positions shown, pool sizes.
        metrics: counts the Jobs created.
        lookup: the result cache's answer for a request about to be admitted.
        gauges: updated after every pass.
        synced: set by the resync after its first full pass; no admission before.
        queue: the Redis work queue (pool mode only).
    """

    def __init__(self, applier: Applier, kube: Kube, settings: OperatorSettings, metrics: OperatorMetrics,
                 lookup: Lookup, gauges: Gauges, synced: threading.Event, queue: WorkQueue | None = None):
        self.applier = applier
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.lookup = lookup
        self.gauges = gauges
        self.synced = synced
        self.queue = queue
        self.pool = settings.mode == "pool"
        self.kueue = settings.admission_engine == "kueue"
        self.pool_namespace = settings.pool_namespace or settings.pod_namespace or settings.namespace or "default"
        self.max_pool_runners = settings.pool_size_max or settings.gpu_budget
        self.last_step = time.monotonic()
        self._pool_seq = 0
        self._pool_active = 0  # pooled runner Jobs not finished, as last listed (plus those started since)
        self._pool_listed_at = float("-inf")
        self._positions_at = float("-inf")
        self._gauges_at = float("-inf")
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="admit")

    def healthy(self) -> tuple[bool, str]:
        """Liveness: the admission loop is turning (a stuck loop needs a restart)."""
        idle = time.monotonic() - self.last_step
        return idle < STUCK_SECONDS, f"admission loop last ran {idle:.0f}s ago"

    def capacity(self) -> int:
        """Admission budget: GPUs in job mode; dispatched requests in pool mode; none of
        our own under Kueue, which admits the Jobs against its quotas."""
        if self.kueue:
            return kueue.UNLIMITED
        if self.pool:
            return self.max_pool_runners * self.settings.requests_per_runner * POOL_BATCHES_AHEAD
        return self.settings.gpu_budget

    def step(self) -> None:
        """One admission pass: admit what fits the budget, update queue positions."""
        self.last_step = time.monotonic()
        if not self.synced.is_set():
            self.write_held(self.applier.registry.snapshot())  # no admission yet: they wait Queued
            return
        entries = self.applier.registry.snapshot()
        if self.pool:  # every request is one unit of pool work, whatever it asked for
            entries = [replace(e, slots=1) for e in entries]
        if self.kueue:  # a request whose Job waits in Kueue is not admitted twice
            entries = kueue.planning_view(entries)
        # plan() fits this pass's admissions into the budget; each admission marks its
        # request Running in the registry, so the next pass counts it before its watch
        # event arrives.
        p = scheduler.plan(entries, self.capacity())
        if len(p.admit) > 1 and not self.kueue:
            # plan() has fitted these into the budget already; each admission is a few API
            # round trips (read, create the Job, patch the status), so made one after the
            # other a burst of thousands is admitted at a few per second. In parallel, each
            # under its request's lock, as the watch handlers run.
            list(self._pool.map(self._admit_one, p.admit))
        else:
            # One at a time, in plan()'s order. Under Kueue this is the order that counts:
            # Kueue queues Jobs by creation time, so parallel creation would shuffle
            # kubescribe's priority-then-age order before Kueue sees it.
            for e in p.admit:
                self._admit_one(e)
        self.write_held(entries)
        # Queue positions are coalesced: written at most once per POSITION_PERIOD, not on
        # every pass a burst of admissions triggers (the write budget, docs/architecture.md).
        updates, more = [], False
        if time.monotonic() - self._positions_at >= POSITION_PERIOD:
            self._positions_at = time.monotonic()
            updates, more = scheduler.position_updates([e for e in entries if not e.unwritten], p,
                                                       max_position=self.settings.queue_positions,
                                                       min_wait=POSITION_PERIOD)
        for e, doc in updates:
            try:
                if self.kube.patch_status(e.namespace, e.name, doc) is not None:
                    self.applier.registry.mark(e.uid, queue_position=doc["queuePosition"])
                else:
                    self.applier.registry.remove(e.uid)
            except Exception as exc:
                log.warning("queue position of %s/%s not updated: %s", e.namespace, e.name, exc)
        if more:
            self.applier.wake()  # more to refresh: another pass soon
        if self.pool:
            try:
                self.ensure_pool()
            except Exception as exc:
                log.warning("pool sizing failed: %s", exc)
        if time.monotonic() - self._gauges_at >= GAUGE_PERIOD:
            self._gauges_at = time.monotonic()
            self.gauges.update()

    def _admit_one(self, e: Entry) -> None:
        try:
            with self.applier.lock_for(e.uid):
                self.admit(e.namespace, e.name, e.uid)
        except Exception as exc:  # one bad request must not stop the queue
            log.exception("admitting %s/%s failed: %s", e.namespace, e.name, exc)

    def write_held(self, entries: list[Entry]) -> None:
        """The Queued status of every request still held (``intake.on_seen``) after this
        pass's admissions: it waits, so it says so. In parallel, as admissions are made: a
        burst beyond the budget holds thousands."""
        held = [e for e in entries if e.unwritten]
        if held:
            list(self._pool.map(self._write_one, held))

    def _write_one(self, e: Entry) -> None:
        try:
            with self.applier.lock_for(e.uid):
                now = self.applier.registry.get(e.uid)
                if now is not None and now.unwritten:
                    self.applier.apply(intake.held_body(now), intake.held_queued(now))
        except Exception as exc:  # it stays held: the next pass writes it
            log.warning("queued status of %s/%s not written: %s", e.namespace, e.name, exc)

    def admit(self, namespace: str, name: str, uid: str) -> None:
        # A held request is admitted on the body it was held on, a moment ago: a newer one
        # (edited, deleted) would have replaced its registry entry under this same lock.
        # Any other is read again: it may have changed since it was queued.
        held = self.applier.registry.get(uid)
        held = held if held is not None and held.unwritten else None
        body = held.body if held is not None and held.body is not None else self.kube.get_request(namespace, name)
        if body is None or body["metadata"]["uid"] != uid:
            self.applier.registry.remove(uid)
            return
        queued_doc = None
        if held is not None:
            if body.get("status") or body["metadata"].get("generation") != held.generation:
                return  # written or edited since it was held: its watch event decides again
            body, queued_doc = intake.with_held(body, held)
        status = body.get("status") or {}
        if status.get("phase") != Phase.Queued.value or status.get("observedGeneration") != body["metadata"].get("generation"):
            self.applier.registry.upsert(entry_from_body(body))
            return
        try:
            spec: TranscriptionSpec | InvalidSpec = parse_spec(body.get("spec") or {})
        except InvalidSpec as exc:
            self.applier.apply(body, intake.carrying(intake.on_admitted(body, exc, NOT_ASKED, job_name=None),
                                                     queued_doc))
            return
        # An identical request may have finished while this one waited.
        cache = self.lookup(status.get("cacheKey"), spec, body)
        if cache.state == "hit":
            self.applier.apply(body, intake.carrying(intake.on_admitted(body, spec, cache, job_name=None),
                                                     queued_doc))
            return
        if self.pool:
            self.dispatch(body, spec, queued_doc)
        else:
            # On an error the request stays Queued: the next pass re-admits it and adopts
            # the Job (409) or finds its result in the cache.
            queue = kueue.queue_name(spec, self.settings.kueue_default_queue) if self.kueue else None
            job = build_job(body, spec, self.settings, kueue_queue=queue)
            try:
                if self.kube.create_job(namespace, job, uid):
                    self.metrics.jobs_total.labels(outcome="created").inc()
            except JobGoingAway:
                return  # the old Job is still going away; the next pass recreates it
            name = job["metadata"]["name"]
            self.applier.apply(body, intake.carrying(
                kueue.on_submitted(body, job_name=name, queue=queue) if queue
                else intake.on_admitted(body, spec, cache, job_name=name), queued_doc))

    def dispatch(self, body: dict, spec: TranscriptionSpec, queued_doc: dict | None = None) -> None:
        """Send a request to the runner pool. The stream first, then the status: a crash in
        between sends it twice (harmless: the second is a cache hit), never zero times.
        ``queued_doc``: a held request's Queued status, written with its Running one."""
        meta = body["metadata"]
        item = WorkItem(meta["uid"], meta["namespace"], meta["name"], meta.get("generation") or 1,
                        spec.model_dump(by_alias=True, mode="json"))
        try:
            self.queue.dispatch(item)
        except Exception as exc:
            self.metrics.error("redis")
            raise StoreError(f"cannot queue {meta['name']} on the Redis stream: {exc}") from exc
        self.applier.apply(body, intake.carrying(intake.on_admitted(body, spec, CacheAnswer("miss"), job_name=None),
                                                 queued_doc))

    def ensure_pool(self) -> None:
        """Size the pool from the work outstanding, within the GPU budget.

        Every admission pass asks, and a burst makes many passes: the pool's Jobs are
        listed only when the work asks for more runners than the last list showed, or
        that list is older than POOL_LIST_PERIOD (a runner may have ended). Listing them
        on every pass was 43 % of the operator's CPU in pool_burst_10k."""
        desired = pool_size.desired_runners(self.applier.registry.snapshot(), self.max_pool_runners,
                                            self.settings.requests_per_runner)
        if desired == 0:
            return
        if desired <= self._pool_active and time.monotonic() - self._pool_listed_at < POOL_LIST_PERIOD:
            return
        self._pool_listed_at = time.monotonic()
        self._pool_active = pool_size.active_pool_jobs(self.kube.pool_jobs(self.pool_namespace))
        for _ in range(max(0, desired - self._pool_active)):
            self._pool_seq += 1
            name = f"kubescribe-pool-{int(time.time() * 1000):x}-{self._pool_seq}"
            self.kube.create_pool_job(self.pool_namespace, build_pool_job(self.settings, self.pool_namespace, name))
            self._pool_active += 1
            self.metrics.jobs_total.labels(outcome="created").inc()
            log.info("pooled runner %s/%s started", self.pool_namespace, name)
