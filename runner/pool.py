"""Pooled runner: ``kubescribe-runner pool``.

Takes requests from the work queue one at a time while the model stays loaded, so a
burst of short requests pays for pod start and model load once instead of once per
request. Exits after ``pool_idle_seconds`` without work, giving the GPU back.

At-least-once: an entry is acknowledged only after its outcome is written. If this
runner dies mid-task, the entry stays pending and another runner reclaims it after
``claim_idle_ms`` (renewed by a heartbeat while a task runs). A repeat is harmless:
results are keyed by content, and the operator ignores an outcome for a finished request.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time

from kubescribe.metrics import RunnerMetrics
from kubescribe.models import InvalidSpec, TranscriptionSpec, parse_spec
from kubescribe.outcomes import EXIT_OK, EXIT_TRANSIENT, RunnerOutcome, timings
from kubescribe.progress import ProgressReporter, RunBoard
from kubescribe.settings import RunnerSettings
from kubescribe.cache_layout import Owner
from kubescribe.store import Store, store_from_settings
from kubescribe.streams import HEARTBEAT_SECONDS, Delivery, WorkItem, WorkQueue

from .engine import Engine, EngineOptions
from .packing import batch_key, short_samples
from .resources import Nvml, release_memory, start_metrics_server
from .task import Prepared, TaskError, TaskOutcome, _timed, prepare, run_task, store_result, task_errors

log = logging.getLogger("kubescribe.runner.pool")


class _Heartbeat:
    """Renews this consumer's claim on an entry while it is being transcribed."""

    def __init__(self, queue: WorkQueue, consumer: str, entry_id):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(queue, consumer, entry_id), daemon=True)

    def _run(self, queue: WorkQueue, consumer: str, entry_id) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                queue.heartbeat(consumer, entry_id)
            except Exception as exc:
                log.warning("heartbeat for %s failed: %s", entry_id, exc)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def process(queue: WorkQueue, store: Store, engine: Engine, metrics: RunnerMetrics, consumer: str,
            delivery: Delivery, report_every: float = 2.0) -> None:
    item, entry_id = delivery.item, delivery.entry_id
    attempts = item.attempt + 1
    try:
        spec = parse_spec(item.spec)
    except InvalidSpec as exc:
        outcome = RunnerOutcome.failure("InvalidSpec", str(exc))
    else:
        try:
            with _Heartbeat(queue, consumer, entry_id):
                # The operator counted this request's cache lookup before dispatching it.
                # A reclaimed entry resumes after the crashed runner's last checkpoint.
                board = RunBoard(store.client)
                outcome = run_task(store, engine, spec, metrics=metrics, count_known_lookup=False, board=board,
                                   progress=ProgressReporter(board, item.uid, report_every),
                                   owner=_owner(item)).outcome
        except TaskError as exc:
            if not exc.final and item.attempt < spec.retries:
                log.warning("%s/%s attempt %d failed (%s); queued again", item.namespace, item.name,
                            attempts, exc.message)
                queue.retry(entry_id, item)
                return
            outcome = exc.outcome()
    queue.finish(entry_id, item, attempts, outcome)
    log.info("%s/%s done: ok=%s cached=%s", item.namespace, item.name, outcome.ok, outcome.cached)


def _owner(item: WorkItem) -> Owner:
    return Owner(item.uid, f"{item.namespace}/{item.name}")


def _failed(queue: WorkQueue, delivery: Delivery, spec, exc: TaskError) -> None:
    """A task failure: queued again while retries last and it can help, else reported."""
    item = delivery.item
    if not exc.final and spec is not None and item.attempt < spec.retries:
        log.warning("%s/%s attempt %d failed (%s); queued again", item.namespace, item.name, item.attempt + 1,
                    exc.message)
        queue.retry(delivery.entry_id, item)
        return
    queue.finish(delivery.entry_id, item, item.attempt + 1, exc.outcome())


def process_batch(queue: WorkQueue, store: Store, engine: Engine, metrics: RunnerMetrics, consumer: str,
                  deliveries: list[Delivery], report_every: float = 2.0) -> None:
    """Several queued requests at once: cache answers and failures are finished one by one;
    short misses of one namespace that can share a batch (:func:`~.packing.batch_key`) are
    packed into shared windows by :meth:`~.engine.Engine.transcribe_many`; the rest run alone, as :func:`process`
    runs them. Every request gets its own result, outcome and status; a packed request's
    timings are its own fetch and the batch's model load and transcription, the seconds it
    waited for its result."""
    if len(deliveries) == 1:
        process(queue, store, engine, metrics, consumer, deliveries[0], report_every)
        return
    groups: dict[tuple, list[tuple[Delivery, Prepared, object, float]]] = {}
    alone: list[Delivery] = []
    keys: set[str] = set()
    with contextlib.ExitStack() as beats:
        for d in deliveries:
            beats.enter_context(_Heartbeat(queue, consumer, d.entry_id))
        for d in deliveries:
            try:
                spec = parse_spec(d.item.spec)
            except InvalidSpec as exc:
                queue.finish(d.entry_id, d.item, d.item.attempt + 1, RunnerOutcome.failure("InvalidSpec", str(exc)))
                continue
            key = batch_key(spec)
            if key is None:
                alone.append(d)
                continue
            try:
                t0 = time.perf_counter()
                p = prepare(store, spec, count_known_lookup=False, owner=_owner(d.item))
                if isinstance(p, TaskOutcome):
                    queue.finish(d.entry_id, d.item, d.item.attempt + 1, p.outcome)
                    continue
                with task_errors():
                    try:
                        samples = short_samples(p.audio.file, engine.options.batched_min_seconds)
                    finally:
                        p.close()
            except TaskError as exc:
                _failed(queue, d, spec, exc)
                continue
            if samples is None or p.key in keys:
                # long audio: batched on its own, with checkpoints; the same audio and
                # settings twice: the second is answered from the cache after the batch
                alone.append(d)
                continue
            keys.add(p.key)
            # One namespace per batch: requests sharing a window condition each other's text.
            groups.setdefault((d.item.namespace, key), []).append((d, p, samples, time.perf_counter() - t0))
        for members in groups.values():
            if len(members) == 1:
                alone.append(members[0][0])
                continue
            if metrics is not None:
                metrics.active_workers.inc()
            loaded_before, started = engine.load_seconds, time.perf_counter()
            try:
                with task_errors():
                    results = engine.transcribe_many([(samples, p.spec, p.audio.sha256)
                                                      for _, p, samples, _ in members])
            except TaskError as exc:
                log.warning("batch of %d failed (%s): each request runs alone", len(members), exc.message)
                alone += [d for d, _, _, _ in members]
                continue
            finally:
                if metrics is not None:
                    metrics.active_workers.dec()
            load = engine.load_seconds - loaded_before
            decoded = time.perf_counter() - started - load
            for (d, p, _, fetch), result in zip(members, results):
                try:
                    outcome = _timed(store_result(store, p, result),
                                     timings(fetch=fetch, model_load=load, transcription=decoded)).outcome
                except TaskError as exc:
                    _failed(queue, d, p.spec, exc)
                    continue
                queue.finish(d.entry_id, d.item, d.item.attempt + 1, outcome)
            log.info("decoded %d requests in one batch", len(members))
    for d in alone:
        process(queue, store, engine, metrics, consumer, d, report_every)


def preload(engine: Engine, model: str) -> None:
    """Load ``model`` as a request with spec's default device and compute type would, before
    the first take: a runner that took work and then loaded would hold requests a warm one
    could serve. A model that cannot load is only logged: requests naming it fail on their
    own, with their reason."""
    if not model:
        return
    fields = TranscriptionSpec.model_fields
    try:
        engine.model(model, fields["device"].default.value, fields["compute_type"].default.value)
    except Exception as exc:  # noqa: BLE001 - the requests report their own failure
        log.warning("could not preload model %s: %s", model, exc)


def gather(queue: WorkQueue, consumer: str, first: Delivery, room: int, wait_ms: int) -> list[Delivery]:
    """``first`` and the requests queued after it, up to ``room``: each further one waited
    for up to ``wait_ms``, so that a burst still being admitted shares windows (0: only
    what is queued at that moment)."""
    batch = [first]
    while len(batch) < room:
        more = queue.take(consumer, block_ms=wait_ms or None)  # Redis would block for ever on 0
        if more is None or any(more.entry_id == d.entry_id for d in batch):
            break  # nothing more, or our own entry reclaimed back (claim_idle_ms 0)
        batch.append(more)
    return batch


def settle() -> None:
    """What the imports made (about 47,000 objects) is kept out of every later collection
    (``gc.freeze``), so the collection after each batch (:func:`~.resources.release_memory`)
    walks the rest: 3 ms instead of 18. Called before a model loads, so that a model the
    engine unloads is still collected."""
    gc.collect()
    gc.freeze()


def cmd_pool(settings: RunnerSettings, idle_seconds: float | None = None, max_tasks: int | None = None) -> int:
    idle = settings.pool_idle_seconds if idle_seconds is None else idle_seconds
    consumer = settings.consumer or settings.pod_name or f"{socket.gethostname()}-{os.getpid()}"
    metrics = RunnerMetrics()
    server = start_metrics_server(settings.metrics_port, metrics, Nvml())
    store = store_from_settings(settings)
    queue = WorkQueue(store.client, claim_idle_ms=settings.claim_idle_ms)
    engine = Engine(EngineOptions(), metrics=metrics)
    settle()
    preload(engine, settings.pool_preload_model)
    last_work = time.monotonic()
    done = 0
    backoff = 0.5
    log.info("pooled runner %s: idle exit after %.0fs", consumer, idle)
    try:
        while max_tasks is None or done < max_tasks:
            try:
                delivery = queue.take(consumer, block_ms=1000)
                backoff = 0.5
            except Exception as exc:  # redis down: back off, keep trying until idle
                if time.monotonic() - last_work > max(idle, 30):
                    log.error("Redis unavailable for too long: %s", exc)
                    return EXIT_TRANSIENT
                log.warning("Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if delivery is None:
                if time.monotonic() - last_work > idle:
                    log.info("idle for %.0fs after %d task(s): exiting", idle, done)
                    break
                continue
            room = settings.pool_batch_max if max_tasks is None else min(settings.pool_batch_max, max_tasks - done)
            batch = gather(queue, consumer, delivery, room, settings.pool_batch_wait_ms)
            try:
                process_batch(queue, store, engine, metrics, consumer, batch, settings.progress_report_seconds)
            except Exception as exc:  # leave them pending: another runner (or we) reclaim them
                log.exception("tasks %s failed unexpectedly: %s", [d.entry_id for d in batch], exc)
            done += len(batch)
            release_memory()
            last_work = time.monotonic()
        return EXIT_OK
    finally:
        gc.unfreeze()  # for a caller that goes on (tests run the pool in their own process)
        engine.unload()
        if server is not None:
            server.stop()
