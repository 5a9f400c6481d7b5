"""Entry point of runner containers: ``kubescribe-runner run`` and ``kubescribe-runner pool``.

``run`` reads the request from the environment the operator put on the Job, transcribes
it, writes the result to Redis and leaves its :class:`~kubescribe.outcomes.RunnerOutcome`
in the termination message, where the operator reads it from the pod status.

The exit code tells the Job controller what to do (the Job's podFailurePolicy matches
it); each failure reason has its code in the reason table (kubescribe.outcomes):

* 0   done (transcribed, or answered from the cache)
* 65  bad input (EX_DATAERR): corrupt or missing audio, unloadable model, invalid spec.
      Retrying cannot help, so the Job fails at once.
* 75  transient failure (EX_TEMPFAIL): Redis unreachable, out of memory, a download
      error, SIGTERM. The Job retries up to ``spec.retries`` times.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from kubescribe.metrics import RunnerMetrics
from kubescribe.models import InvalidSpec, parse_spec

from kubescribe.outcomes import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT, RunnerOutcome
from kubescribe.progress import ProgressReporter, RunBoard
from kubescribe.settings import RunnerSettings, load_or_exit
from kubescribe.cache_layout import Owner
from kubescribe.store import store_from_settings

from .engine import Engine, EngineOptions
from .pool import cmd_pool
from .resources import Nvml, process_start_time, start_metrics_server
from .task import TaskError, run_task

#: Kubernetes truncates termination messages at 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096

log = logging.getLogger("kubescribe.runner")


def write_termination_message(path: str, outcome: RunnerOutcome) -> None:
    text = outcome.to_json()
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        short = outcome.model_copy(update={"text_preview": None,
                                           "message": outcome.message[:1024] if outcome.message else None})
        text = short.to_json()[:TERMINATION_MESSAGE_LIMIT]
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:  # outside a pod /dev/termination-log may not be writable
        log.debug("no termination message written to %s: %s", path, exc)


def _finish(settings: RunnerSettings, outcome: RunnerOutcome) -> int:
    write_termination_message(settings.termination_log, outcome)
    if outcome.ok:
        log.info("request %s done: cached=%s language=%s audio=%.1fs rtf=%s", settings.request or "-",
                 outcome.cached, outcome.language, outcome.audio_duration_seconds or 0, outcome.realtime_factor)
        return EXIT_OK
    log.error("request %s failed: %s: %s", settings.request or "-", outcome.reason, outcome.message)
    return outcome.exit_code if outcome.exit_code is not None else EXIT_TRANSIENT


def cmd_run(settings: RunnerSettings) -> int:
    metrics = RunnerMetrics()
    nvml = Nvml()
    server = start_metrics_server(settings.metrics_port, metrics, nvml)
    try:
        try:
            spec = parse_spec(json.loads(settings.spec or "null") or {})
        except (InvalidSpec, json.JSONDecodeError) as exc:
            return _finish(settings, RunnerOutcome.failure("InvalidSpec", str(exc)))
        store = store_from_settings(settings)
        engine = Engine(EngineOptions(), metrics=metrics)
        log.info("request %s: model=%s device=%s", settings.request or "-", spec.model, spec.device)
        board = RunBoard(store.client) if hasattr(store.client, "pipeline") else None  # None: memory://
        progress = (ProgressReporter(board, settings.request_uid, settings.progress_report_seconds)
                    if board is not None and settings.request_uid else None)
        try:
            # The operator counted this request's cache lookup at admission.
            owner = Owner(settings.request_uid, settings.request or "") if settings.request_uid else None
            started = process_start_time()
            startup = round(time.time() - started, 3)  # Python, imports, settings, the metrics server
            outcome = run_task(store, engine, spec, metrics=metrics, count_known_lookup=False, board=board,
                               progress=progress, owner=owner).outcome
            outcome = outcome.model_copy(update={"timings": outcome.timings.model_copy(
                update={"started_at": round(started, 3), "startup": startup})})
        except TaskError as exc:
            return _finish(settings, exc.outcome())
        # No unload and no release of memory here: the process ends next and gives it all
        # back; both used to hold the pod 0.1-0.3 s past its outcome (job_mode_breakdown).
        return _finish(settings, outcome)
    finally:
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
    # Bad input to this runner (the operator wrote it): not worth a retry.
    settings = load_or_exit(RunnerSettings, "kubescribe-runner", EXIT_BAD_INPUT)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (pod deletion, activeDeadlineSeconds) exits as a transient failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_TRANSIENT))
    if args.command == "run":
        return cmd_run(settings)
    return cmd_pool(settings, idle_seconds=args.idle_seconds, max_tasks=args.max_tasks)


if __name__ == "__main__":
    sys.exit(main())
