"""kopf wiring: ``kubescribe-operator`` registers handlers here and nothing else.

Run it with ``kubescribe-operator`` (in the chart's Deployment) or ``kopf run -m
kubescribe.operator.main``. One replica with the Recreate strategy: kopf has no leader
election, and two operators would both admit requests. The parts each handler reaches
are built in ``controllers``; why the admission and resync loops are not kopf timers is in
docs/architecture.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import kopf

from kubescribe import GROUP, PLURAL, VERSION, __version__, kubeconfig
from kubescribe.metrics import OperatorMetrics
from kubescribe.serving import MetricsServer
from kubescribe.outcomes import EXIT_USAGE
from kubescribe.settings import OperatorSettings, load_or_exit
from kubescribe.store import store_from_settings

from . import controllers, kueue_api
from .admitter import Admitter
from .event_queue import EventQueue
from .jobs import LABEL_MANAGED_BY, MANAGED_BY
from .kube import Kube

log = logging.getLogger("kubescribe.operator")

#: Longest the admission loop sleeps without a wake-up; queue positions refresh at
#: least this often.
STEP_SECONDS = 5.0
#: The cyclic garbage collector's thresholds once started (``tune_gc``): the youngest
#: generation is collected after 50,000 net allocations, not Python's 700.
GC_THRESHOLDS = (50_000, 20, 10)


def _api_client(workers: int):
    from kubernetes import client

    cfg = kubeconfig.load()
    # kopf runs sync handlers in a thread pool; give each thread a connection.
    cfg.connection_pool_maxsize = 2 * workers
    return client.ApiClient(cfg)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's connection from the same loader and precedence as the operator's own client
    (:mod:`kubescribe.kubeconfig`; kopf's ``login_via_client`` tries in-cluster first).
    kopf calls it again after a 401, which renews an expired token."""
    try:
        cfg = kubeconfig.load()
    except kubeconfig.NoCredentials as exc:
        raise kopf.LoginError(str(exc)) from None
    token = kubeconfig.bearer_token(cfg)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None, token=token,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
        trust_env=settings.networking.trust_env,
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base. kopf builds one on every watch event, for every object, before it
    looks at which handlers there are: a deep copy of the whole body (a Job with its pod
    template, a request with its managedFields), fetched and diffed against the last, for
    change handlers (``on.create``/``on.update``/...). kubescribe has only ``on.event``
    handlers, which get the raw event and no diff: in a burst of 600 requests the copy
    was 15 % of the operator's busy samples (py-spy). A change handler would need
    kopf's own storage back (tests/test_operator_main.py checks there is none)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings, conf: OperatorSettings) -> None:
    """kopf's settings for this operator (apart from startup, so a test can check them
    against the installed kopf: a renamed setting warns, and its value may be ignored)."""
    # The request's status is the record: no kopf progress annotations or finalizers.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events are posted by the applier, one per transition; kopf's own are noise.
    settings.posting.enabled = False
    # A watch can go silent behind a load balancer: end it server-side after 4.5 min and
    # give up client-side after 5, then re-list.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = conf.workers
    # kopf keeps a worker task (and the last event's object) per watched object until it
    # has been idle this long: at thousands of requests and Jobs, 5 s (kopf's default)
    # holds tens of thousands of object bodies at once. (``queueing``: kopf 1.45 renamed
    # it from ``batching``, which still works but warns.)
    settings.queueing.idle_timeout = 1.0
    if conf.namespace:
        # Namespaced installs get a Role only: kopf must not try to scan namespaces and
        # CRDs cluster-wide (it would retry refused calls for about a minute first).
        settings.scanning.disabled = True


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    conf = OperatorSettings()
    configure_kopf(settings, conf)
    if "@" in conf.redis_url.split("//", 1)[-1].split("/", 1)[0] and not conf.redis_secret_name:
        log.warning("KUBESCRIBE_REDIS_URL carries credentials, which are not passed to runners; "
                    "set KUBESCRIBE_REDIS_SECRET_NAME so runners can authenticate")
    metrics = OperatorMetrics()
    store = store_from_settings(conf, metrics=metrics)
    parts = controllers.build(conf, store, Kube(_api_client(conf.workers)), metrics)
    server = MetricsServer(metrics.registry, port=conf.metrics_port, health=parts.health.healthy,
                           ready=parts.health.ready, before_scrape=parts.gauges.refresh).start()
    log.info("kubescribe operator: budget=%s mode=%s admission=%s namespace=%s metrics=:%d",
             "off (Kueue admits)" if conf.admission_engine == "kueue" else conf.gpu_budget, conf.mode,
             conf.admission_engine, conf.namespace or "*", server.port)
    stop = threading.Event()
    if parts.pool_outcomes is not None:
        threading.Thread(target=parts.pool_outcomes.consume, args=(stop,), name="outcomes", daemon=True).start()
    memo.events = EventQueue(conf.workers, observer=metrics.workqueue).start()
    metrics.workqueue.watch(memo.events)
    memo.handlers = {"request": parts.requests.on_request, "job": parts.jobs.on_job,
                     "workload": parts.jobs.on_workload_event}
    memo.notifier = parts.notifier.start()
    memo.server = server
    memo.stop = stop
    memo.tasks = [asyncio.create_task(_admission_loop(parts.applier.wakeup, parts.admitter)),
                  asyncio.create_task(_every(conf.resync_seconds, parts.resync.run, "resync", first=True)),
                  asyncio.create_task(_every(conf.progress_seconds, parts.progress.report, "progress pass"))]
    tune_gc()


def tune_gc() -> None:
    """Once everything is imported and built: what exists now is kept out of every later
    collection (``gc.freeze``), and the youngest generation is collected less often.

    Every watch event is decoded into thousands of dicts and lists, and Python's default
    collects after every 700 of them, promoting whatever is alive at that moment; each
    full collection then walked every object the imports had made (about 190,000). In a
    burst of 600 requests the collector took 2.9 s of the operator's 17 s of CPU, its 14
    full collections 131 ms each; frozen and with these thresholds, 0.9 s (gc.callbacks,
    scale_vs_bare_jobs --quick). The cost: cyclic garbage lives up to 50,000 allocations
    longer (the peak RSS of that run rose from 124 to 129 MiB)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "stop" in memo:
        memo.stop.set()
    for task in memo.get("tasks", []):
        task.cancel()
    if "server" in memo:
        memo.server.stop()
    if "events" in memo:
        memo.events.stop()
    if "notifier" in memo:
        memo.notifier.stop()


async def _admission_loop(wakeup: threading.Event, admitter: Admitter) -> None:
    while True:
        await asyncio.to_thread(wakeup.wait, STEP_SECONDS)
        wakeup.clear()
        try:
            await asyncio.to_thread(admitter.step)
        except Exception as exc:
            log.exception("admission pass failed: %s", exc)
        # Coalesce a burst of wake-ups into one pass; also bounds a pass loop that keeps
        # waking itself while it works through a long queue.
        await asyncio.sleep(0.05)


async def _every(seconds: float, work: Callable[[], None], what: str, *, first: bool = False) -> None:
    """``work`` in a thread every ``seconds``; at once first when ``first`` (the resync:
    admission waits for its first pass)."""
    if not first:
        await asyncio.sleep(seconds)
    while True:
        try:
            await asyncio.to_thread(work)
        except Exception as exc:
            log.warning("%s failed (retrying in %.0fs): %s", what, seconds, exc)
        await asyncio.sleep(seconds)


# The kopf handlers only record the event (operator/event_queue.py says why); the
# controllers' handlers run on the queue's threads.
def _record(memo: kopf.Memo, kind: str, event: kopf.RawEvent) -> None:
    if "handlers" in memo:
        body = event["object"]
        memo.events.put((kind, body["metadata"]["uid"]), memo.handlers[kind], event.get("type"), body)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def request_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _record(memo, "request", event)
    if "notifier" in memo:  # only schedules: deliveries run on the notifier's own threads
        memo.notifier.consider(event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _record(memo, "job", event)


async def workload_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Kueue's Workloads (admission engine kueue only): its reason for a waiting Job."""
    _record(memo, "workload", event)


def _credentials_problem() -> str | None:
    """Why the operator could not reach a cluster, checked before kopf starts: kopf would
    log a traceback and wait for ever instead of exiting."""
    try:
        kubeconfig.load()
        return None
    except kubeconfig.NoCredentials as exc:
        return str(exc)


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` glibc malloc arenas from here on (MALLOC_ARENA_MAX, set in-process
    so that every way of starting the operator gets it). glibc gives each thread that
    allocates concurrently its own arena; with the API-call and handler threads, memory
    freed in one arena is not reused by another and the RSS grows with the thread count."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        pass


def main(argv: list[str] | None = None) -> int:
    _cap_malloc_arenas()
    parser = argparse.ArgumentParser(
        prog="kubescribe-operator",
        description="The kubescribe operator: TranscriptionRequests to runner Jobs. Configured by "
                    "KUBESCRIBE_* environment variables (README, Configuration); exit code 2 on a "
                    "bad setting or no cluster credentials.")
    parser.add_argument("--version", action="version", version=f"kubescribe-operator {__version__}")
    parser.parse_args(argv)
    conf = load_or_exit(OperatorSettings, "kubescribe-operator", EXIT_USAGE)
    problem = _credentials_problem()
    if problem:
        print(f"kubescribe-operator: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if conf.admission_engine == "kueue":
        # Registered only here: without Kueue's CRDs a watch on workloads would fail for ever.
        kopf.on.event(kueue_api.GROUP, kueue_api.VERSION, "workloads")(workload_event)
    logging.basicConfig(level=conf.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.configure(verbose=False)
    # kopf.configure adds its own handler next to basicConfig's and sets the root logger to
    # INFO whatever KUBESCRIBE_LOG_LEVEL says: every watch event was logged twice, which
    # at thousands of requests is a good part of the operator's CPU. One handler, the
    # level asked for.
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h).__name__ == "_KopfStreamHandler"] or root.handlers
    root.setLevel(conf.log_level.upper())
    kopf.run(standalone=True, clusterwide=not conf.namespace, namespaces=[conf.namespace] if conf.namespace else [],
             liveness_endpoint=None, memo=kopf.Memo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
