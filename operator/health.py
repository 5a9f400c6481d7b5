"""What the operator tells Prometheus and the kubelet about itself: the registry's gauges
(requests by phase, queue, oldest wait, active workers), the figures kept in Redis
(hit rate, clears) read before each scrape, and liveness and readiness.
"""

from __future__ import annotations

from collections.abc import Callable

from kubescribe.metrics import OperatorMetrics
from kubescribe.models import Phase
from kubescribe.store import Store

from .kube import Kube
from .lifecycle import age_seconds
from .registry import Registry


class Gauges:
    """The gauges a scrape reads. ``update`` is cheap (the registry only) and runs after
    every admission pass too; ``refresh`` adds RAM and two Redis reads, once per scrape.

    Args:
        registry: the operator's view of the requests.
        store: the shared cache figures in Redis.
        metrics: operator metrics.
    """

    def __init__(self, registry: Registry, store: Store, metrics: OperatorMetrics):
        self.registry = registry
        self.store = store
        self.metrics = metrics

    def update(self) -> None:
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

    def refresh(self) -> None:
        """Before a scrape: process RAM, registry gauges, and the figures kept in Redis."""
        import psutil

        self.metrics.ram_usage_bytes.set(psutil.Process().memory_info().rss)
        self.update()
        stats = self.store.stats(count_keys=False)
        self.metrics.sync_cache_stats(stats.hit_rate, stats.clears)


class Health:
    """Liveness and readiness for the metrics server's /healthz and /readyz.

    Args:
        alive: the admission loop's own liveness (``Admitter.healthy``): a stuck loop
            needs a restart.
        store: Redis, which must answer for readiness.
        kube: the API server, which must answer for readiness.
    """

    def __init__(self, alive: Callable[[], tuple[bool, str]], store: Store, kube: Kube):
        self.alive = alive
        self.store = store
        self.kube = kube

    def healthy(self) -> tuple[bool, str]:
        return self.alive()

    def ready(self) -> tuple[bool, str]:
        """Readiness: alive, and both Redis and the API server answer."""
        ok, detail = self.alive()
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
