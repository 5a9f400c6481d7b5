"""kopf wiring: ``kubescribe-operator`` registers handlers here and nothing else.

Run it with ``kubescribe-operator`` (in the chart's Deployment) or ``kopf run -m
kubescribe.operator.main``. One replica with the Recreate strategy: kopf has no leader
election, and two operators would both admit requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

import kopf

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.metrics import OperatorMetrics
from kubescribe.serving import MetricsServer
from kubescribe.settings import OperatorSettings
from kubescribe.store import open_store

from .handlers import Operator
from .jobs import LABEL_MANAGED_BY, MANAGED_BY

log = logging.getLogger("kubescribe.operator")

#: Seconds between full re-lists of the requests. The watch delivers changes at once;
#: the resync retries requests left Pending (Redis down) and finds Jobs deleted while
#: the operator was down. 30 s bounds that recovery without loading the API server.
RESYNC_SECONDS = float(os.environ.get("KUBESCRIBE_RESYNC_SECONDS", "30"))
#: Longest the admission loop sleeps without a wake-up; queue positions refresh at
#: least this often.
STEP_SECONDS = 5.0

_state: dict[str, Any] = {}


def _api_client():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    # kopf runs sync handlers in a thread pool; give each thread a connection.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The request's status is the record: no kopf progress annotations or finalizers.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Events are posted by the handlers, one per transition; kopf's own are noise.
    settings.posting.enabled = False
    # A watch can go silent behind a load balancer: end it server-side after 4.5 min and
    # give up client-side after 5, then re-list.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = int(os.environ.get("KUBESCRIBE_WORKERS", "16"))

    conf = OperatorSettings()
    if conf.namespace:
        # Namespaced installs get a Role only: kopf must not try to scan namespaces and
        # CRDs cluster-wide (it would retry refused calls for about a minute first).
        settings.scanning.disabled = True
    metrics = OperatorMetrics()
    store = open_store(conf.redis_url, conf.redis_password, metrics=metrics, ca_file=conf.redis_ca_file)
    op = Operator(conf, store, _api_client(), metrics)
    if "@" in conf.redis_url.split("//", 1)[-1].split("/", 1)[0] and not conf.redis_secret_name:
        log.warning("KUBESCRIBE_REDIS_URL carries credentials, which are not passed to runners; "
                    "set KUBESCRIBE_REDIS_SECRET_NAME so runners can authenticate")
    server = MetricsServer(metrics.registry, port=conf.metrics_port, health=op.healthy,
                           before_scrape=op.refresh_process_gauges).start()
    log.info("kubescribe operator: budget=%d mode=%s namespace=%s metrics=:%d", conf.gpu_budget, conf.mode,
             conf.namespace or "*", server.port)
    tasks = [asyncio.create_task(_admission_loop(op)), asyncio.create_task(_resync_loop(op))]
    stop = threading.Event()
    if op.pool:
        threading.Thread(target=op.consume_outcomes, args=(stop,), name="outcomes", daemon=True).start()
    _state.update(op=op, server=server, tasks=tasks, stop=stop)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if "stop" in _state:
        _state["stop"].set()
    for task in _state.get("tasks", []):
        task.cancel()
    if "server" in _state:
        _state["server"].stop()


async def _admission_loop(op: Operator) -> None:
    while True:
        await asyncio.to_thread(op._wake.wait, STEP_SECONDS)
        op._wake.clear()
        try:
            await asyncio.to_thread(op.step)
        except Exception as exc:
            log.exception("admission pass failed: %s", exc)
        # Coalesce a burst of wake-ups into one pass; also bounds a pass loop that keeps
        # waking itself while it works through a long queue.
        await asyncio.sleep(0.05)


async def _resync_loop(op: Operator) -> None:
    while True:
        try:
            await asyncio.to_thread(op.resync)
        except Exception as exc:
            log.warning("resync failed (retrying in %.0fs): %s", RESYNC_SECONDS, exc)
        await asyncio.sleep(RESYNC_SECONDS)


@kopf.on.event(GROUP, VERSION, PLURAL)
def request_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    op: Operator | None = _state.get("op")
    if op is not None:
        op.on_request(event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    op: Operator | None = _state.get("op")
    if op is not None:
        op.on_job(event.get("type"), event["object"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("KUBESCRIBE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = OperatorSettings().namespace
    kopf.configure(verbose=False)
    kopf.run(standalone=True, clusterwide=not namespace, namespaces=[namespace] if namespace else [],
             liveness_endpoint=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
