"""``kubescribe-gateway``: the HTTP API on uvicorn, /metrics on its own port.

Configured by ``KUBESCRIBE_*`` environment variables (``GatewaySettings``, README "HTTP
gateway"). Exit code 2 on an invalid setting, an unreadable API-key file or no cluster
credentials: one line saying what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys


from kubescribe import __version__
from kubescribe.gateway.http_metrics import GatewayMetrics
from kubescribe.outcomes import EXIT_USAGE
from kubescribe.serving import MetricsServer
from kubescribe.settings import GatewaySettings, load_or_exit
from kubescribe.store import store_from_settings

log = logging.getLogger("kubescribe.gateway")


def _async_redis(conf: GatewaySettings):
    """redis.asyncio with the same URL forms (Sentinel too), password, TLS CA, timeouts and
    failover retries as the sync store (kubescribe.redisconn)."""
    from kubescribe.redisconn import connect_async

    try:
        return connect_async(conf.redis_url, conf.redis_password, sentinel_password=conf.redis_sentinel_password,
                             ca_file=conf.redis_ca_file, max_connections=1000)
    except ValueError as exc:
        raise ValueError(f"KUBESCRIBE_REDIS_URL: {exc}") from None


def build(conf: GatewaySettings):
    """The ASGI app and its metrics, wired from settings (also used by tests and benchmarks)."""
    from .app import ROUTE_LABELS, Gateway, build_app
    from .auth import ApiKeys
    from .kubeclient import KubeClient, load_credentials

    if conf.gateway_api_keys_file:
        try:
            ApiKeys(conf.gateway_api_keys_file).lookup("")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"KUBESCRIBE_GATEWAY_API_KEYS_FILE={conf.gateway_api_keys_file}: not a valid "
                             f"API-key file ({type(exc).__name__}: {exc})") from None
    creds = load_credentials(conf.kubeconfig)
    metrics = GatewayMetrics(routes=ROUTE_LABELS)
    gateway = Gateway(settings=conf, kube=KubeClient(creds), redis=_async_redis(conf),
                      store=store_from_settings(conf),
                      metrics=metrics)
    return build_app(gateway), gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubescribe-gateway",
        description="The kubescribe HTTP gateway: OpenAI-compatible /v1/audio/transcriptions, an async "
                    "API, the admin and health endpoints; Kubernetes authentication. Configured by "
                    "KUBESCRIBE_* environment variables (README, HTTP gateway); exit code 2 on a bad "
                    "setting or no cluster credentials.")
    parser.add_argument("--version", action="version", version=f"kubescribe-gateway {__version__}")
    parser.parse_args(argv)
    conf = load_or_exit(GatewaySettings, "kubescribe-gateway", EXIT_USAGE)
    logging.basicConfig(level=conf.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app, gateway = build(conf)
    except (RuntimeError, ValueError) as exc:
        print(f"kubescribe-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import psutil
    import uvicorn

    proc = psutil.Process()
    server = None
    if conf.gateway_metrics_port >= 0:
        server = MetricsServer(gateway.metrics.registry, port=conf.gateway_metrics_port,
                               before_scrape=lambda: gateway.metrics.ram_usage_bytes.set(proc.memory_info().rss)).start()
        log.info("metrics on :%d/metrics", server.port)
    config = uvicorn.Config(app, host=conf.gateway_host, port=conf.gateway_port, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=30)
    try:
        uvicorn.Server(config).run()
    except OSError as exc:  # port in use
        print(f"kubescribe-gateway: cannot listen on {conf.gateway_host}:{conf.gateway_port}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
