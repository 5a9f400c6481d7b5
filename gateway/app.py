"""The gateway's route table and the app built from it: every endpoint, its methods and
its handler in one list, which the metrics' ``route`` label values are built from too
(:func:`.middleware.route_labels`).

Where each decision lives: who calls and how many calls they have in flight
(:mod:`.context`); what a creating call checks, keeps and creates (:mod:`.submit`);
OpenAI's routes (:mod:`.routes_openai`); the async API (:mod:`.routes_async`) and its
events stream (:mod:`.events`); admin and probes (:mod:`.routes_admin`); errors to
answers (:mod:`.errors`); counting and timing (:mod:`.middleware`).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from .context import Gateway
from .errors import exception_handlers
from .middleware import MetricsMiddleware, route_labels
from .routes_admin import admin_clear, admin_stats, health, readyz
from .routes_async import (analysis_async, create_async, create_upload, delete_async, events_async, get_async,
                           notification_key, result_async)
from .routes_openai import models, transcriptions, translations

__all__ = ["Gateway", "ROUTES", "ROUTE_LABELS", "build_app"]

ROUTES = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/transcriptions", create_async, methods=["POST"]),
    Route("/v1/uploads", create_upload, methods=["POST"]),
    Route("/v1/notifications/key", notification_key, methods=["GET"]),
    Route("/v1/transcriptions/{name}", get_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}", delete_async, methods=["DELETE"]),
    Route("/v1/transcriptions/{name}/result", result_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}/events", events_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}/analysis", analysis_async, methods=["GET"]),
    Route("/api/admin/cache/stats", admin_stats, methods=["GET"]),
    Route("/api/admin/cache/clear", admin_clear, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]

#: The ``route`` label's values: each template above once, and ``other``.
ROUTE_LABELS = route_labels(ROUTES)


def build_app(gateway: Gateway) -> Starlette:
    app = Starlette(routes=ROUTES, exception_handlers=exception_handlers())
    app.state.gateway = gateway
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics, routes=ROUTES)
    return app
