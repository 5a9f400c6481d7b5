"""Prometheus metrics, shared by the operator, the runner and the local CLI.

Every family of the original transcription service is kept under the same name with the
``kubescribe_`` prefix. The operator sees every request end, so it records the
per-request counters and histograms, from each runner's outcome (:class:`Metrics`);
runners export live gauges only (:class:`RunnerMetrics`: RAM, GPU, work in progress),
because a runner Job may be gone before the next scrape. ``kubescribe transcribe
--metrics-port`` is a process that sees all its requests end and exports the whole set.
In a cluster the scrape configuration adds a ``component`` label (operator or runner).

Help texts list every label value, so ``curl /metrics`` documents itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubescribe.outcomes import ERROR_TYPES, RunnerOutcome
from kubescribe.queue_metrics import WorkqueueMetrics

#: Processing time buckets (seconds): a few hundred ms for a cache-warm short clip up to
#: an hour-long recording on CPU.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Audio length buckets (seconds): voice notes to long meetings.
AUDIO_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
#: Upload size buckets (bytes): 16 KiB to 1 GiB, factor 4.
SIZE_BUCKETS = tuple(16384 * 4**i for i in range(9))
#: Real-time factor buckets: processing seconds per audio second.
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
#: Queue wait buckets (seconds) from creation to runner Job.
WAIT_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600)
#: Phase buckets (seconds): a Redis GET of a few ms up to an hour of transcription.
PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
#: Where a request's seconds go, in order (kubescribe_request_phase_seconds).
PHASES = ("queue", "pod_start", "startup", "model_load", "fetch", "transcription")

@dataclass
class RunnerMetrics:
    """Live gauges of one process: what a runner pod exports.

    A registry per instance (not the global one) keeps tests independent and lets the
    operator and an in-process runner live side by side in one test. Runner Jobs are
    short-lived and a scrape can miss them, so a runner exports only what is true while it
    lives (resource use, work in progress); per-request counters and histograms are
    recorded by the operator from each runner's outcome.
    """

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.active_workers = Gauge(
            "kubescribe_active_workers",
            "Runner Jobs running (operator) or requests being transcribed (runner).",
            registry=r,
        )
        self.gpu_utilization_percent = Gauge(
            "kubescribe_gpu_utilization_percent",
            "GPU utilisation reported by NVML, 0..100. gpu: device index.",
            ["gpu"],
            registry=r,
        )
        self.gpu_memory_used_bytes = Gauge(
            "kubescribe_gpu_memory_used_bytes",
            "GPU memory in use reported by NVML, in bytes. gpu: device index.",
            ["gpu"],
            registry=r,
        )
        self.ram_usage_bytes = Gauge(
            "kubescribe_ram_usage_bytes",
            "Resident memory of this process (psutil RSS), in bytes.",
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "kubescribe_model_load_seconds",
            "Time to load a faster-whisper model. model: model name.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )


@dataclass
class Metrics(RunnerMetrics):
    """The whole set: live gauges plus per-request totals, for a process that sees every
    request end (the operator, or ``kubescribe transcribe --metrics-port``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.transcriptions_total = Counter(
            "kubescribe_transcriptions_total",
            "Transcriptions finished. status: succeeded|failed. model: model name or path.",
            ["status", "model"],
            registry=r,
        )
        self.transcription_duration_seconds = Histogram(
            "kubescribe_transcription_duration_seconds",
            "Wall time spent transcribing one request (model load excluded). model: model name.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.file_size_bytes = Histogram(
            "kubescribe_file_size_bytes",
            "Size of the audio files transcribed, in bytes.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.audio_duration_seconds = Histogram(
            "kubescribe_audio_duration_seconds",
            "Length of the audio transcribed, in seconds.",
            buckets=AUDIO_BUCKETS,
            registry=r,
        )
        self.cache_operations_total = Counter(
            "kubescribe_cache_operations_total",
            "Result cache operations. operation: get|set. result: hit|miss|ok|error. "
            "One get per request.",
            ["operation", "result"],
            registry=r,
        )
        self.cache_hit_rate = Gauge(
            "kubescribe_cache_hit_rate",
            "Share of result-cache lookups that hit (0..1), across every operator, runner and "
            "CLI (counts kept in Redis, reset by a cache clear).",
            registry=r,
        )
        self.queue_size = Gauge(
            "kubescribe_queue_size",
            "Requests waiting for a GPU budget slot (phase Queued).",
            registry=r,
        )
        self.errors_total = Counter(
            "kubescribe_errors_total",
            "Errors by type. type: " + "|".join(ERROR_TYPES) + ".",
            ["type"],
            registry=r,
        )
        self.realtime_factor = Histogram(
            "kubescribe_realtime_factor",
            "Processing seconds per second of audio; below 1 is faster than real time.",
            ["model"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.request_phase_seconds = Histogram(
            "kubescribe_request_phase_seconds",
            "Where a request's seconds go. phase: " + "|".join(PHASES) + ": queue (creation to "
            "admission), pod_start (runner Job created to runner process started), startup (process "
            "start to work: Python, imports), model_load (0 when a pooled runner had it), fetch (cache "
            "check and audio opened), transcription (audio decoding included).",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self._zero_known_labels()

    def _zero_known_labels(self) -> None:
        """Export every known label set at 0 from the start: increase() and rate() cannot
        see the first event of a series that appears with value 1."""
        for kind in ERROR_TYPES:
            self.errors_total.labels(type=kind)
        for op, results in (("get", ("hit", "miss", "error")), ("set", ("ok", "error"))):
            for result in results:
                self.cache_operations_total.labels(operation=op, result=result)
        for phase in PHASES:
            self.request_phase_seconds.labels(phase=phase)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.request_phase_seconds.labels(phase=phase).observe(max(0.0, seconds))

    def error(self, kind: str) -> None:
        self.errors_total.labels(type=kind).inc()

    def observe_outcome(self, model: str, outcome: RunnerOutcome) -> None:
        """Count one finished request: its status, and for a transcription (not a cache
        answer) its processing time, audio length, real-time factor and file size; for a
        failure, its error type from the reason table. The phases the runner timed count
        for any outcome that carries them (a cache answer found by a runner too)."""
        status = "succeeded" if outcome.ok else "failed"
        self.transcriptions_total.labels(status=status, model=model).inc()
        for phase, seconds in (outcome.timings.phases() if outcome.timings is not None else {}).items():
            self.observe_phase(phase, seconds)
        if not outcome.ok:
            self.error(outcome.error_type)
            return
        if outcome.cached:
            return
        seconds, audio_seconds = outcome.processing_seconds, outcome.audio_duration_seconds
        if seconds is not None:
            self.transcription_duration_seconds.labels(model=model).observe(seconds)
        if audio_seconds is not None and audio_seconds > 0:
            self.audio_duration_seconds.observe(audio_seconds)
            if seconds is not None:
                self.realtime_factor.labels(model=model).observe(seconds / audio_seconds)
        if outcome.size_bytes is not None:
            self.file_size_bytes.observe(outcome.size_bytes)


class OperatorMetrics(Metrics):
    """The shared set plus what only the operator can know."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.requests = Gauge(
            "kubescribe_requests",
            "TranscriptionRequests by phase: Pending|Queued|Running|Succeeded|Failed.",
            ["phase"],
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "kubescribe_queue_wait_seconds",
            "Time from request creation to its runner Job (or to the cache answer).",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.request_progress_ratio = Gauge(
            "kubescribe_request_progress_ratio",
            "Share of the audio transcribed, 0..1, per running request (namespace, name); the "
            "series is removed when the request leaves Running, so it never outgrows the "
            "requests running at once.",
            ["namespace", "name"],
            registry=r,
        )
        self.admission_cache_hits_total = Counter(
            "kubescribe_admission_cache_hits_total",
            "Requests answered from the result cache at admission, with no Job.",
            registry=r,
        )
        self.requests_expired_total = Counter(
            "kubescribe_requests_expired_total",
            "Finished requests deleted by the operator after their TTL (ttlSecondsAfterFinished).",
            registry=r,
        )
        self.jobs_total = Counter(
            "kubescribe_jobs_total",
            "Runner Jobs by outcome: created|succeeded|failed.",
            ["outcome"],
            registry=r,
        )
        self.gpu_budget = Gauge(
            "kubescribe_gpu_budget",
            "Configured maximum of runner GPUs (or Jobs) in use at once.",
            registry=r,
        )
        self.queue_oldest_seconds = Gauge(
            "kubescribe_queue_oldest_seconds",
            "Age of the oldest request still Queued (0 when the queue is empty).",
            registry=r,
        )
        self.cache_clears_total = Counter(
            "kubescribe_cache_clears_total",
            "Result cache clears by anyone (CLI, admin API); counted in Redis, exported here.",
            registry=r,
        )
        self._clears_seen = 0
        for outcome in ("created", "succeeded", "failed"):
            self.jobs_total.labels(outcome=outcome)
        self.workqueue = WorkqueueMetrics(r)
        self.notifications = NotificationMetrics(r)

    def sync_cache_stats(self, hit_rate: float, clears: int) -> None:
        """Copy the shared figures kept in Redis: the hit rate, and the clears made by
        processes Prometheus never scrapes (a CLI)."""
        self.cache_hit_rate.set(hit_rate)
        if clears > self._clears_seen:
            self.cache_clears_total.inc(clears - self._clears_seen)
        self._clears_seen = clears

    def observe_runner_cache(self, outcome: RunnerOutcome) -> None:
        """The cache traffic of a runner, from its outcome: the lookup it made when the
        operator could not (the audio hash was unknown before the download), and the
        result it wrote."""
        if outcome.cache_lookup:
            self.cache_operations_total.labels(operation="get", result=outcome.cache_lookup).inc()
        if outcome.ok and not outcome.cached:
            self.cache_operations_total.labels(operation="set", result="ok").inc()


#: Seconds from a request's completion to its event's 2xx: a first try answered at once
#: lands in the first buckets, retries after an outage in the hour and day buckets.
DELIVERY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)


class NotificationMetrics:
    """The operator's notification deliveries (kubescribe.operator.notifier). No sink
    label: sinks are URLs users choose, and each request's status names its sink."""

    def __init__(self, registry: CollectorRegistry):
        self.total = Counter(
            "kubescribe_notifications_total",
            "Notification POSTs by outcome: delivered (2xx), retried (failed, tried again later), "
            "failed (final: 410, a second 4xx, a refused destination, attempts used up).",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "kubescribe_notification_delivery_seconds",
            "Seconds from a request's completion to its event's 2xx answer, retries included.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        for outcome in ("delivered", "retried", "failed"):
            self.total.labels(outcome=outcome)
