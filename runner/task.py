"""One transcription task: cache check, audio fetch, transcription, result write, and
the transcript files a request asked for in its own bucket (``spec.output``).

Used by the runner Job entry point, the pooled runner and the local CLI, so all three
behave the same way. A task ends as a :class:`~kubescribe.outcomes.RunnerOutcome`;
whoever sees the request end counts it (the operator, or the CLI).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kubescribe.metrics import RunnerMetrics
from kubescribe.models import TranscriptionSpec
from kubescribe.objectstore import ObjectStore
from kubescribe.outcomes import RunnerOutcome, timings
from kubescribe.progress import RunBoard
from kubescribe.cache_layout import Owner, cache_key, known_cache_key, result_key
from kubescribe.store import Store

from . import buckets
from .engine import Engine, ProgressFn
from .failures import TaskError, call_store, task_errors
from .fetch import Audio, fetch_audio

__all__ = ["Prepared", "TaskError", "TaskOutcome", "deliver", "fetch_audio", "prepare", "run_task", "store_result",
           "task_errors"]

log = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """A finished task: the result document (the CLI renders it) and its summary."""

    result: dict[str, Any]
    outcome: RunnerOutcome

    @property
    def cached(self) -> bool:
        return self.outcome.cached

    @property
    def cache_key(self) -> str | None:
        return self.outcome.cache_key

    @property
    def result_key(self) -> str | None:
        return self.outcome.result_key


@dataclass
class Prepared:
    """A request that missed the cache: its audio fetched (open: :meth:`close` it when
    done with it), its cache key known."""

    spec: TranscriptionSpec
    key: str
    audio: Audio
    lookup: str | None
    owner: Owner | None = None

    def close(self) -> None:
        self.audio.close()


def _request_name(owner: Owner | None) -> tuple[str, str]:
    """(namespace, name) of the request, which names the files of ``spec.output``."""
    namespace, _, name = (owner.name if owner is not None else "").partition("/")
    if not namespace or not name:
        raise TaskError("InvalidSpec", "spec.output names its files after the request, but the runner was not "
                        "told the request's namespace/name (KUBESCRIBE_REQUEST and KUBESCRIBE_REQUEST_UID)")
    return namespace, name


def deliver(store: Store, spec: TranscriptionSpec, owner: Owner | None, done: TaskOutcome, *,
            objects: ObjectStore | None = None) -> TaskOutcome:
    """Write the files of ``spec.output`` for a finished task (transcribed or a cache
    hit) and name them in its outcome; nothing to do without ``spec.output``.

    A failure is the task's: ObjectStoreUnavailable is retried (the request stays
    Running and ends Succeeded only once the files are written), the others end it.
    The files are named after the request (``owner``: namespace/name).
    """
    if spec.output is None:
        return done
    namespace, name = _request_name(owner)
    with task_errors():
        urls = buckets.write_outputs(objects or buckets.client(store.objects), spec, namespace, name, done.result)
    log.info("wrote %d transcript file(s) to s3://%s/%s", len(urls), spec.output.s3.bucket, spec.output.s3.prefix)
    return TaskOutcome(done.result, done.outcome.model_copy(update={"outputs": urls}))


def prepare(store: Store, spec: TranscriptionSpec, *, audio: bytes | Audio | None = None,
            count_known_lookup: bool = True, owner: Owner | None = None,
            objects: ObjectStore | None = None) -> TaskOutcome | Prepared:
    """The cache answer (with ``spec.output``'s files written), or the fetched audio of a
    miss (see :func:`run_task`)."""
    # With spec.output the operator leaves even a cache hit to the runner, which must
    # write the files (operator.intake), so the runner counts that lookup itself.
    own_count = spec.output is not None and not count_known_lookup
    if spec.output is not None:
        _request_name(owner)  # refused before any work, not after it
    with task_errors():
        key = known_cache_key(spec)[0] if audio is None else None
        lookup = None
        if key and spec.cache.enabled:
            hit = store.get_result(key, count=count_known_lookup or own_count, owner=owner)
            lookup = ("miss" if hit is None else "hit") if own_count else None
            if hit is not None:
                done = TaskOutcome(hit, RunnerOutcome.from_result(hit, key, result_key(key), cached=True,
                                                                  cache_lookup=lookup))
                return deliver(store, spec, owner, done, objects=objects)
        if isinstance(audio, Audio):
            fetched = audio
        else:
            fetched = Audio.of_bytes(audio) if audio is not None else fetch_audio(store, spec, objects=objects)
        kept = False
        try:
            if key is None:
                key = cache_key(fetched.sha256, spec.output_params())
                if spec.cache.enabled:
                    hit = store.get_result(key, owner=owner)
                    lookup = "miss" if hit is None else "hit"
                    if hit is not None:
                        done = TaskOutcome(hit, RunnerOutcome.from_result(
                            hit, key, result_key(key), cached=True, size_bytes=fetched.size, cache_lookup=lookup))
                        return deliver(store, spec, owner, done, objects=objects)
            kept = True
            return Prepared(spec, key, fetched, lookup, owner)
        finally:
            if not kept:
                fetched.close()


def store_result(store: Store, p: Prepared, result: dict[str, Any], board: RunBoard | None = None, *,
                 objects: ObjectStore | None = None) -> TaskOutcome:
    """Write a transcribed result under its cache key, drop its checkpoints, then write
    ``spec.output``'s files (:func:`deliver`)."""
    with task_errors():
        rkey = store.put_result(p.key, result, ttl=p.spec.cache.ttl_seconds, formats=p.spec.formats, owner=p.owner)
        if board is not None:
            call_store(board.drop_checkpoint, p.key)
    done = TaskOutcome(result, RunnerOutcome.from_result(result, p.key, rkey, cached=False, size_bytes=p.audio.size,
                                                         cache_lookup=p.lookup))
    return deliver(store, p.spec, p.owner, done, objects=objects)


def run_task(
    store: Store,
    engine: Engine,
    spec: TranscriptionSpec,
    *,
    metrics: RunnerMetrics | None = None,
    progress: ProgressFn | None = None,
    audio: bytes | Audio | None = None,
    count_known_lookup: bool = True,
    board: RunBoard | None = None,
    owner: Owner | None = None,
    objects: ObjectStore | None = None,
) -> TaskOutcome:
    """Answer from the cache or transcribe; raise :class:`TaskError` on failure.

    ``audio`` skips the fetch: bytes, or an :class:`~.fetch.Audio` such as a local file
    the CLI opened (read as decoded, never held whole; closed here). Audio in a bucket
    is streamed, never held whole (:mod:`.fetch`). One cache lookup
    counts per request: when the cache key is known from the spec, the operator already
    counted it at admission, so a runner passes ``count_known_lookup=False``; a key known
    only after the download is counted here and reported in the outcome.

    With a ``board`` every finished segment is checkpointed under the cache key, and a
    task that finds checkpoints (an earlier attempt died) resumes after the last one;
    the checkpoints are dropped once the result is stored.

    ``owner`` is the request the task runs for: with an object store, its reference to
    the result is taken before the result is read or written (kubescribe.objectstore);
    its namespace/name names the files of ``spec.output``.

    ``objects`` reads ``spec.audio.s3`` and writes ``spec.output.s3``; by default the
    store's object store, or a client made from the environment (:func:`buckets.client`).

    The outcome's ``timings`` say where the task's seconds went: fetch (the cache check
    and the audio opened), model load (0 when the engine had it) and transcription
    (decoding included); the runner's entry point adds its own start-up.
    """
    t0 = time.perf_counter()
    p = prepare(store, spec, audio=audio, count_known_lookup=count_known_lookup, owner=owner, objects=objects)
    fetched = time.perf_counter()
    if isinstance(p, TaskOutcome):
        return _timed(p, timings(fetch=fetched - t0))
    loaded_before = engine.load_seconds
    try:
        with task_errors():
            if metrics is not None:
                metrics.active_workers.inc()
            done, on_segment = [], None
            if board is not None:
                done = call_store(board.checkpointed, p.key)
                on_segment = lambda seg: board.checkpoint(p.key, seg)  # noqa: E731
                if done:
                    log.info("resuming after %d checkpointed segment(s), at %.1fs", len(done), done[-1]["end"])
            try:
                result = engine.transcribe(p.audio.file, spec, audio_sha256=p.audio.sha256, progress=progress,
                                           done=done, on_segment=on_segment)
            finally:
                if metrics is not None:
                    metrics.active_workers.dec()
    finally:
        p.close()  # the audio's stream: nothing more is read from it
    load = engine.load_seconds - loaded_before
    spent = timings(fetch=fetched - t0, model_load=load, transcription=time.perf_counter() - fetched - load)
    return _timed(store_result(store, p, result, board, objects=objects), spent)


def _timed(done: TaskOutcome, spent) -> TaskOutcome:
    return TaskOutcome(done.result, done.outcome.model_copy(update={"timings": spent}))
