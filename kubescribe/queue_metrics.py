"""The operator's event queue metrics, named and shaped as client-go's workqueue metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Work queue buckets (seconds): a handler's API round trip of milliseconds up to a backlog
#: of minutes.
WORKQUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkqueueMetrics:
    """The operator's event queue, as client-go exports a controller's workqueue.

    It observes an :class:`kubescribe.operator.event_queue.EventQueue`; :meth:`watch` makes the
    depth and the longest running handling read from the queue at each scrape.
    """

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.events_total = Counter(
            "kubescribe_workqueue_events_total",
            "Watch events the operator recorded, by kind of object: "
            "TranscriptionRequest|Job|Workload.",
            ["kind"],
            registry=r,
        )
        self.adds_total = Counter(
            "kubescribe_workqueue_adds_total",
            "Objects queued for handling; the events of an object already waiting are coalesced "
            "into its one handling, so events minus adds is what coalescing saved.",
            registry=r,
        )
        self.depth = Gauge(
            "kubescribe_workqueue_depth",
            "Objects waiting for a handler thread (KUBESCRIBE_WORKERS threads handle them).",
            registry=r,
        )
        self.queue_duration_seconds = Histogram(
            "kubescribe_workqueue_queue_duration_seconds",
            "Time from an object being queued to its handling.",
            buckets=WORKQUEUE_BUCKETS,
            registry=r,
        )
        self.work_duration_seconds = Histogram(
            "kubescribe_workqueue_work_duration_seconds",
            "Time one handling of an object took (its API calls included).",
            buckets=WORKQUEUE_BUCKETS,
            registry=r,
        )
        self.longest_running_seconds = Gauge(
            "kubescribe_workqueue_longest_running_seconds",
            "How long the longest handling still under way has run; a value that keeps "
            "growing is a stuck handler.",
            registry=r,
        )
        for kind in ("TranscriptionRequest", "Job", "Workload"):
            self.events_total.labels(kind=kind)

    def watch(self, queue) -> None:
        """Read ``queue``'s depth and longest running handling at each scrape."""
        self.depth.set_function(queue.depth)
        self.longest_running_seconds.set_function(queue.longest_running)

    # the EventQueue observer
    def event(self, kind: str) -> None:
        self.events_total.labels(kind=kind or "unknown").inc()

    def added(self) -> None:
        self.adds_total.inc()

    def started(self, waited: float) -> None:
        self.queue_duration_seconds.observe(waited)

    def finished(self, seconds: float) -> None:
        self.work_duration_seconds.observe(seconds)
