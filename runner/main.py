"""Entry point of runner containers: ``kubescribe-runner run``.

Reads the request from the environment the operator put on the Job, transcribes it,
writes the result to Redis and leaves a short JSON summary in the termination message,
where the operator reads it from the pod status.

Exit codes tell the Job controller what to do (the Job's podFailurePolicy matches them):

* 0   done (transcribed, or answered from the cache)
* 65  bad input (EX_DATAERR): corrupt or missing audio, unloadable model, invalid spec.
      Retrying cannot help, so the Job fails at once.
* 75  transient failure (EX_TEMPFAIL): Redis unreachable, out of memory, a download
      error. The Job retries up to ``spec.retries`` times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from kubescribe.metrics import Metrics
from kubescribe.models import InvalidSpec, parse_spec
from kubescribe.serving import MetricsServer
from kubescribe.settings import RunnerSettings
from kubescribe.store import open_store

from .engine import Engine, EngineOptions
from .resources import Nvml, release_memory, rss_bytes
from .task import TaskError, run_task

EXIT_OK = 0
EXIT_BAD_INPUT = 65
EXIT_TRANSIENT = 75
#: Kubernetes truncates termination messages at 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096

log = logging.getLogger("kubescribe.runner")


def write_termination_message(path: str, doc: dict) -> None:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        doc = dict(doc)
        doc.pop("textPreview", None)
        if "message" in doc:
            doc["message"] = doc["message"][:1024]
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))[:TERMINATION_MESSAGE_LIMIT]
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:  # outside a pod /dev/termination-log may not be writable
        log.debug("no termination message written to %s: %s", path, exc)


def refresh_resource_gauges(metrics: Metrics, nvml: Nvml) -> None:
    metrics.ram_usage_bytes.set(rss_bytes())
    for g in nvml.readings():
        metrics.gpu_utilization_percent.labels(gpu=str(g.index)).set(g.utilization_percent)
        metrics.gpu_memory_used_bytes.labels(gpu=str(g.index)).set(g.memory_used_bytes)


def start_metrics_server(settings: RunnerSettings, metrics: Metrics, nvml: Nvml) -> MetricsServer | None:
    """Serve /metrics and /healthz on ``settings.metrics_port`` (-1: not at all)."""
    if settings.metrics_port < 0:
        return None
    try:
        return MetricsServer(metrics.registry, port=settings.metrics_port,
                             before_scrape=lambda: refresh_resource_gauges(metrics, nvml)).start()
    except OSError as exc:  # metrics are not worth failing a transcription over
        log.warning("metrics server not started on :%d: %s", settings.metrics_port, exc)
        return None


def cmd_run(settings: RunnerSettings) -> int:
    metrics = Metrics()
    nvml = Nvml()
    server = start_metrics_server(settings, metrics, nvml)
    term = settings.termination_log
    try:
        try:
            spec = parse_spec(json.loads(settings.spec or "null") or {})
        except (InvalidSpec, json.JSONDecodeError) as exc:
            metrics.error("invalid_spec")
            log.error("invalid request: %s", exc)
            write_termination_message(term, {"ok": False, "reason": "InvalidSpec", "message": str(exc)})
            return EXIT_BAD_INPUT
        store = open_store(settings.redis_url, settings.redis_password, metrics=metrics,
                           ca_file=settings.redis_ca_file)
        engine = Engine(EngineOptions(), metrics=metrics)
        log.info("request %s: model=%s device=%s", settings.request or "-", spec.model, spec.device)
        try:
            outcome = run_task(store, engine, spec, metrics=metrics)
        except TaskError as exc:
            log.error("request %s failed: %s: %s", settings.request or "-", exc.reason, exc.message)
            write_termination_message(term, {"ok": False, "reason": exc.reason, "message": exc.message,
                                             "final": exc.final})
            return EXIT_BAD_INPUT if exc.final else EXIT_TRANSIENT
        summary = outcome.summary()
        write_termination_message(term, summary)
        log.info("request %s done: cached=%s language=%s audio=%.1fs rtf=%s", settings.request or "-",
                 outcome.cached, summary["language"], summary["audioDurationSeconds"] or 0,
                 summary["realtimeFactor"])
        engine.unload()
        refresh_resource_gauges(metrics, nvml)
        return EXIT_OK
    finally:
        release_memory()
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubescribe-runner", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="transcribe the one request described by the environment")
    pool = sub.add_parser("pool", help="take requests from the Redis stream until idle")
    pool.add_argument("--idle-seconds", type=float, default=None)
    pool.add_argument("--max-tasks", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("KUBESCRIBE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (pod deletion, activeDeadlineSeconds) exits as a transient failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_TRANSIENT))
    settings = RunnerSettings()
    if args.command == "run":
        return cmd_run(settings)
    from .pool import cmd_pool

    return cmd_pool(settings, idle_seconds=args.idle_seconds, max_tasks=args.max_tasks)


if __name__ == "__main__":
    sys.exit(main())
