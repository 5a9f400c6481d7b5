"""Counting and timing every call, labelled by its route's template (not the raw path:
request names would explode the label set)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match

from kubescribe.gateway.http_metrics import GatewayMetrics

#: The label of a call no route matches.
OTHER = "other"


def route_labels(routes: Sequence[BaseRoute]) -> tuple[str, ...]:
    """Every value of the ``route`` label: each route's template once, and ``other``.
    The metrics are built from this (:class:`kubescribe.gateway.http_metrics.GatewayMetrics`), so the
    route table is their one source."""
    return (*dict.fromkeys(getattr(r, "path") for r in routes), OTHER)


class MetricsMiddleware:
    """Counts every call by route template and code, and times it; an SSE call is timed
    to the end of its stream."""

    def __init__(self, app, metrics: GatewayMetrics, routes: Sequence[BaseRoute]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path")
        return OTHER

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self._route(scope)
        code = 500
        t0 = time.perf_counter()

        async def send_wrapper(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests_total.labels(route=route, method=scope["method"], code=str(code)).inc()
            self.metrics.request_duration_seconds.labels(route=route).observe(time.perf_counter() - t0)
