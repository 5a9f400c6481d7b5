"""What ``kubescribe-gateway`` exports: its HTTP traffic, by route."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubescribe.metrics import SIZE_BUCKETS

#: Gateway latency buckets (seconds): a cache hit answers in milliseconds, a transcription
#: waits for a runner for seconds to minutes.
GATEWAY_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

@dataclass
class GatewayMetrics:
    """What ``kubescribe-gateway`` exports: its HTTP traffic. The transcriptions it starts
    are counted by the operator like every other request.

    ``routes`` are the ``route`` label's values, given by the gateway from its route
    table (``kubescribe.gateway.app.ROUTE_LABELS``): the table is their one source.
    """

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    routes: tuple[str, ...] = ("other",)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests_total = Counter(
            "kubescribe_gateway_requests_total",
            "HTTP calls answered by the gateway. route: " + "|".join(self.routes)
            + ". method: GET|POST|DELETE. code: HTTP status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.request_duration_seconds = Histogram(
            "kubescribe_gateway_request_duration_seconds",
            "Time from a call's arrival to its answer (for SSE, to the stream's end). route: as "
            "kubescribe_gateway_requests_total.",
            ["route"],
            buckets=GATEWAY_LATENCY_BUCKETS,
            registry=r,
        )
        self.upload_bytes = Histogram(
            "kubescribe_gateway_upload_bytes",
            "Size of accepted audio uploads, in bytes.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "kubescribe_gateway_requests_in_flight",
            "Calls being answered now (a synchronous transcription stays in flight while it waits).",
            registry=r,
        )
        self.ram_usage_bytes = Gauge(
            "kubescribe_ram_usage_bytes",
            "Resident memory of this process (psutil RSS), in bytes.",
            registry=r,
        )
        # Every route's latency series exists from the start, at 0: rate() cannot see the
        # first call of a series that appears with count 1.
        for route in self.routes:
            self.request_duration_seconds.labels(route=route)
