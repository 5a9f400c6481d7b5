"""Pooled runner: ``kubescribe-runner pool``.

Takes requests from the ``kubescribe:queue`` stream one at a time while the model stays
loaded, so a burst of short requests pays for pod start and model load once instead of
once per request. Exits after ``pool_idle_seconds`` without work, giving the GPU back.

At-least-once: an entry is acknowledged only after its outcome is written. If this
runner dies mid-task, the entry stays pending and another runner reclaims it after
CLAIM_IDLE_MS (renewed by a heartbeat while a task runs). A repeat is harmless: results
are keyed by content, and the operator ignores an outcome for a finished request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from kubescribe.metrics import Metrics
from kubescribe.models import InvalidSpec, parse_spec
from kubescribe.settings import RunnerSettings
from kubescribe.store import StoreError, open_store
from kubescribe.streams import (
    CLAIM_IDLE_MS,
    DONE_STREAM,
    HEARTBEAT_SECONDS,
    MAX_DELIVERIES,
    MAXLEN,
    QUEUE_STREAM,
    RUNNERS_GROUP,
    WorkItem,
    ensure_group,
    outcome_fields,
)

from .engine import Engine, EngineOptions
from .resources import Nvml, release_memory
from .task import TaskError, run_task

log = logging.getLogger("kubescribe.runner.pool")

EXIT_OK = 0
EXIT_TRANSIENT = 75


class _Heartbeat:
    """Renews this consumer's claim on an entry while it is being transcribed."""

    def __init__(self, client, consumer: str, entry_id):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, consumer, entry_id), daemon=True)

    def _run(self, client, consumer, entry_id) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                client.xclaim(QUEUE_STREAM, RUNNERS_GROUP, consumer, 0, [entry_id], justid=True)
            except Exception as exc:
                log.warning("heartbeat for %s failed: %s", entry_id, exc)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _next_entry(client, consumer: str, block_ms: int):
    """A reclaimed entry of a dead runner first, else a new one."""
    claimed = client.xautoclaim(QUEUE_STREAM, RUNNERS_GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=1)
    entries = claimed[1] if claimed and len(claimed) > 1 else []
    entries = [e for e in entries if e and e[1]]
    if entries:
        entry_id, fields = entries[0]
        pending = client.xpending_range(QUEUE_STREAM, RUNNERS_GROUP, min=entry_id, max=entry_id, count=1)
        deliveries = pending[0]["times_delivered"] if pending else 1
        if deliveries > MAX_DELIVERIES:
            _give_up(client, entry_id, fields, deliveries)
            return None
        return entries[0]
    got = client.xreadgroup(RUNNERS_GROUP, consumer, {QUEUE_STREAM: ">"}, count=1, block=block_ms)
    for _stream, items in got or []:
        for item in items:
            return item
    return None


def _give_up(client, entry_id, fields, deliveries: int) -> None:
    """A poison entry: report it failed and acknowledge it, so no more runners die on it."""
    try:
        item = WorkItem.from_fields(fields)
    except (KeyError, ValueError):
        client.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
        return
    summary = {"ok": False, "reason": "RunnerCrashed", "final": True,
               "message": f"the request was taken by {deliveries} runners and none finished it "
                          "(each crashed or was killed); giving up"}
    pipe = client.pipeline()
    pipe.xadd(DONE_STREAM, outcome_fields(item, summary, deliveries), maxlen=MAXLEN, approximate=True)
    pipe.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
    pipe.execute()
    log.error("%s/%s given up after %d deliveries", item.namespace, item.name, deliveries)


def process(client, store, engine: Engine, metrics: Metrics, consumer: str, entry_id, fields) -> None:
    try:
        item = WorkItem.from_fields(fields)
    except (KeyError, ValueError) as exc:
        log.error("dropping malformed queue entry %s: %s", entry_id, exc)
        client.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
        return
    attempts = item.attempt + 1
    try:
        spec = parse_spec(item.spec)
    except InvalidSpec as exc:
        summary = {"ok": False, "reason": "InvalidSpec", "message": str(exc), "final": True}
    else:
        try:
            with _Heartbeat(client, consumer, entry_id):
                outcome = run_task(store, engine, spec, metrics=metrics)
            summary = outcome.summary()
        except TaskError as exc:
            if not exc.final and item.attempt < spec.retries:
                log.warning("%s/%s attempt %d failed (%s); queued again", item.namespace, item.name,
                            attempts, exc.message)
                retry = WorkItem(item.uid, item.namespace, item.name, item.generation, item.spec, attempts)
                pipe = client.pipeline()
                pipe.xadd(QUEUE_STREAM, retry.fields(), maxlen=MAXLEN, approximate=True)
                pipe.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
                pipe.execute()
                return
            summary = {"ok": False, "reason": exc.reason, "message": exc.message, "final": exc.final}
    pipe = client.pipeline()
    pipe.xadd(DONE_STREAM, outcome_fields(item, summary, attempts), maxlen=MAXLEN, approximate=True)
    pipe.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
    pipe.execute()
    log.info("%s/%s done: ok=%s cached=%s", item.namespace, item.name, summary.get("ok"), summary.get("cached"))


def cmd_pool(settings: RunnerSettings, idle_seconds: float | None = None, max_tasks: int | None = None) -> int:
    from .main import start_metrics_server

    idle = settings.pool_idle_seconds if idle_seconds is None else idle_seconds
    consumer = settings.consumer or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    metrics = Metrics()
    server = start_metrics_server(settings, metrics, Nvml())
    store = open_store(settings.redis_url, settings.redis_password, metrics=metrics, ca_file=settings.redis_ca_file)
    client = store.client
    engine = Engine(EngineOptions(), metrics=metrics)
    last_work = time.monotonic()
    done = 0
    backoff = 0.5
    log.info("pooled runner %s: idle exit after %.0fs", consumer, idle)
    try:
        while max_tasks is None or done < max_tasks:
            try:
                ensure_group(client, QUEUE_STREAM, RUNNERS_GROUP)
                entry = _next_entry(client, consumer, block_ms=1000)
                backoff = 0.5
            except (StoreError, OSError, Exception) as exc:  # redis down: back off, keep trying until idle
                if time.monotonic() - last_work > max(idle, 30):
                    log.error("Redis unavailable for too long: %s", exc)
                    return EXIT_TRANSIENT
                log.warning("Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if entry is None:
                if time.monotonic() - last_work > idle:
                    log.info("idle for %.0fs after %d task(s): exiting", idle, done)
                    break
                continue
            entry_id, fields = entry
            try:
                process(client, store, engine, metrics, consumer, entry_id, fields)
            except Exception as exc:  # leave it pending: another runner (or we) reclaim it
                log.exception("task %s failed unexpectedly: %s", entry_id, exc)
            done += 1
            release_memory()
            last_work = time.monotonic()
        return EXIT_OK
    finally:
        engine.unload()
        if server is not None:
            server.stop()
