"""A small HTTP server for /metrics, /healthz and /readyz, shared by operator and runner."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthFn = Callable[[], tuple[bool, str]]


class MetricsServer:
    """Serves a registry on ``/metrics`` and health checks on ``/healthz`` and ``/readyz``.

    Args:
        registry: the prometheus-client registry to expose.
        port: TCP port; 0 picks a free one (read ``.port`` afterwards).
        host: bind address; all interfaces by default because Prometheus scrapes pod IPs.
        health: liveness check returning (ok, detail); failing it makes the kubelet restart.
        ready: readiness check; defaults to ``health``.
        before_scrape: called before each scrape to refresh gauges (RAM, GPU).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int = 0,
        host: str = "0.0.0.0",
        health: HealthFn | None = None,
        ready: HealthFn | None = None,
        before_scrape: Callable[[], None] | None = None,
    ):
        self.registry = registry
        health = health or (lambda: (True, "ok"))
        ready = ready or health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if before_scrape is not None:
                        try:
                            before_scrape()
                        except Exception:  # a failed reading must not fail the scrape
                            pass
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok, detail = (ready if path == "/readyz" else health)()
                    body = json.dumps({"ok": ok, "detail": detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:  # scrapes are not news
                return

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # stop() waits for the serving loop's next poll: 50 ms, not the default 500 ms, which
        # a runner Job used to spend after its work was done (benchmarks: job_mode_breakdown).
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="metrics-http", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
