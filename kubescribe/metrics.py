"""Prometheus metrics, shared by the operator, the runner and the local CLI.

Every family of the original transcription service is kept under the same name with the
``kubescribe_`` prefix. Both processes export the whole set, so that a single runner (or
``kubescribe transcribe --metrics-port``) is observable on its own; in a cluster the
scrape configuration adds a ``component`` label (operator or runner) and the dashboard
takes exact totals from the operator, which sees every request end, and live resource use
(RAM, GPU) from the runners, whose pods may be gone before the next scrape.

Help texts list every label value, so ``curl /metrics`` documents itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

STATUSES = ("succeeded", "failed")
ERROR_TYPES = (
    "invalid_spec",
    "bad_audio",
    "audio_not_found",
    "redis",
    "model_load",
    "transcription",
    "job_failed",
    "timeout",
    "internal",
)


@dataclass
class Metrics:
    """One set of kubescribe metric families in its own registry.

    A registry per instance (not the global one) keeps tests independent and lets the
    operator and an in-process runner live side by side in one test.
    """

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
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
            "Result cache operations. operation: get|set|clear. result: hit|miss|ok|error.",
            ["operation", "result"],
            registry=r,
        )
        self.cache_hit_rate = Gauge(
            "kubescribe_cache_hit_rate",
            "Share of result-cache lookups that hit (0..1), across every operator and runner "
            "(counts kept in Redis).",
            registry=r,
        )
        self.queue_size = Gauge(
            "kubescribe_queue_size",
            "Requests waiting for a GPU budget slot (phase Queued).",
            registry=r,
        )
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
        self.model_load_seconds = Histogram(
            "kubescribe_model_load_seconds",
            "Time to load a faster-whisper model. model: model name.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )

        self._zero_known_labels()

    def _zero_known_labels(self) -> None:
        """Export every known label set at 0 from the start: increase() and rate() cannot
        see the first event of a series that appears with value 1."""
        for kind in ERROR_TYPES:
            self.errors_total.labels(type=kind)
        for op, results in (("get", ("hit", "miss", "error")), ("set", ("ok", "error")), ("clear", ("ok",))):
            for result in results:
                self.cache_operations_total.labels(operation=op, result=result)

    def error(self, kind: str) -> None:
        self.errors_total.labels(type=kind).inc()

    def observe_transcription(
        self,
        *,
        model: str,
        status: str,
        seconds: float | None = None,
        audio_seconds: float | None = None,
        size_bytes: int | None = None,
    ) -> None:
        self.transcriptions_total.labels(status=status, model=model).inc()
        if seconds is not None:
            self.transcription_duration_seconds.labels(model=model).observe(seconds)
        if audio_seconds is not None and audio_seconds > 0:
            self.audio_duration_seconds.observe(audio_seconds)
            if seconds is not None:
                self.realtime_factor.labels(model=model).observe(seconds / audio_seconds)
        if size_bytes is not None:
            self.file_size_bytes.observe(size_bytes)


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
        self.admission_cache_hits_total = Counter(
            "kubescribe_admission_cache_hits_total",
            "Requests answered from the result cache at admission, with no Job.",
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
        for outcome in ("created", "succeeded", "failed"):
            self.jobs_total.labels(outcome=outcome)
