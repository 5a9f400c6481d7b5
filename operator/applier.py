"""The one place a decision is written: status, registry, Job deletion, counts, Event.

Level-triggered throughout: every handler looks at the object as it is now (phase,
generation, observedGeneration) and asks a pure decision (``intake``, ``runs``,
``kueue``) for a :class:`~.lifecycle.Transition`, which :meth:`Applier.apply` writes. A
missed or repeated event, or an operator restart at any point, leads to the same result.
kopf's own progress annotations are not used: the request's status is the record.

The applier is the small shared core the handlers are given, as kueue gives its
controllers their client and cache: the registry, the per-request locks and the wake-up
of the admission loop. Every count of a transition is made here, after the status write
that makes it true, so a transition that did not happen (a 404) is never counted.
"""

from __future__ import annotations

import threading

from kubescribe.metrics import OperatorMetrics
from kubescribe.settings import OperatorSettings
from kubescribe.store import Store

from .kube import Kube
from .lifecycle import Transition
from .registry import Registry, entry_from_body

#: Lock stripes. Many: admissions run in parallel and hold their request's stripe across
#: API calls; with few, watch handlers of unrelated requests would queue behind them.
STRIPES = 1024


class Applier:
    """Writes transitions; owns the registry, the per-request locks and the wake-up.

    Args:
        settings: operator settings (``normal_events``: whether Normal Events are posted).
        kube: the API calls (:class:`~.kube.Kube`): status patches, Job deletions, Events.
        store: the shared cache counts in Redis (one lookup per request, kept for every
            process's hit rate).
        metrics: operator metrics; every transition's counts go here.
    """

    def __init__(self, settings: OperatorSettings, kube: Kube, store: Store, metrics: OperatorMetrics):
        self.settings = settings
        self.kube = kube
        self.store = store
        self.metrics = metrics
        self.registry = Registry()
        self.wakeup = threading.Event()
        self._stripes = [threading.RLock() for _ in range(STRIPES)]

    def wake(self) -> None:
        """Ask the admission loop for a pass now (a slot freed, a request queued)."""
        self.wakeup.set()

    # Watch events, the admission loop, the outcome consumer and the resync can all reach
    # the same request at once; a striped re-entrant lock keyed by uid makes each request's
    # transitions happen one at a time, so an outcome is counted and announced once.
    def lock_for(self, uid: str) -> threading.RLock:
        return self._stripes[hash(uid) % len(self._stripes)]

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
        self.count(t)
        if t.event is not None and (t.event.type == "Warning" or self.settings.normal_events):
            self.kube.event(body, t.event.type, t.event.reason, t.event.message)
        if t.wake:
            self.wake()
        return True

    def count(self, t: Transition) -> None:
        """A transition's counts: outcomes, Jobs, queue wait, and the request's one cache
        lookup. The lookup goes into the shared hash in Redis (one HINCRBY) and into this
        process's counter; the hit-rate gauge is read from Redis before a scrape
        (``health.Gauges.refresh``), not here while the request's lock is held."""
        m = self.metrics
        if t.finished is not None:
            m.observe_outcome(t.model, t.finished)
            m.observe_runner_cache(t.finished)
        if t.job_outcome:
            m.jobs_total.labels(outcome=t.job_outcome).inc()
        if t.queue_wait is not None:
            m.queue_wait_seconds.observe(t.queue_wait)
            m.observe_phase("queue", t.queue_wait)
        if t.pod_start is not None:
            m.observe_phase("pod_start", t.pod_start)
        if t.admission_hit:
            m.admission_cache_hits_total.inc()
        if t.cache_lookup is not None:
            m.cache_operations_total.labels(operation="get", result="hit" if t.cache_lookup else "miss").inc()
            self.store.record_lookup(t.cache_lookup)
