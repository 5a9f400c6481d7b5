"""One transcription task: cache check, audio fetch, transcription, result write, and
the transcript files a request asked for in its own bucket (``spec.output``).

Used by the runner Job entry point, the pooled runner and the local CLI, so all three
behave the same way. A task ends as a :class:`~kubescribe.outcomes.RunnerOutcome`;
whoever sees the request end counts it (the operator, or the CLI).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import urllib.error
from dataclasses import dataclass
from typing import Any

from kubescribe.metrics import RunnerMetrics
from kubescribe.models import TranscriptionSpec
from kubescribe.outcomes import RunnerOutcome, reason
from kubescribe.progress import RunBoard
from kubescribe.settings import AudioInputSettings
from kubescribe.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError
from kubescribe.store import (AudioNotFound, Owner, Store, StoreError, cache_key, known_cache_key, result_key,
                              sha256_hex)

from . import buckets
from .engine import BadAudio, Engine, ModelLoadError, ProgressFn
from .url_guard import TooManyRedirects, URLRefused, UrlGuard, open_url

log = logging.getLogger(__name__)

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - redis is a dependency of the runner
    RedisError = OSError  # type: ignore[misc,assignment]


def _call_store(fn, *args):
    try:
        return fn(*args)
    except RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc


class TaskError(Exception):
    """A task failure with a reason from the reason table (kubescribe.outcomes), which
    says whether a retry can help and how it is counted."""

    def __init__(self, reason_name: str, message: str):
        super().__init__(message)
        self.reason = reason_name
        self.message = message

    @property
    def final(self) -> bool:
        return reason(self.reason).final

    @property
    def error_type(self) -> str:
        return reason(self.reason).error_type

    def outcome(self) -> RunnerOutcome:
        return RunnerOutcome.failure(self.reason, self.message)


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


def _download(url: str, limit: int, guard: UrlGuard) -> bytes:
    """GET ``url`` from a destination the guard allows (see kubescribe.runner.url_guard)."""
    try:
        with open_url(url, guard, timeout=60, headers={"User-Agent": "kubescribe-runner"}) as resp:
            chunks, total = [], 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise TaskError("AudioTooLarge", f"audio at {url} is larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TaskError:
        raise
    except URLRefused as exc:
        via = f" (redirected to {exc.url})" if exc.url and exc.url != url else ""
        raise TaskError("AudioURLForbidden", f"GET {url}{via}: {exc.message}") from None
    except TooManyRedirects as exc:
        raise TaskError("AudioDownloadFailed", f"GET {url}: {exc}") from None
    except urllib.error.HTTPError as exc:
        final = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise TaskError("AudioDownloadFailed" if final else "AudioServerUnavailable",
                        f"GET {url}: HTTP {exc.code}") from None
    except OSError as exc:
        raise TaskError("AudioServerUnavailable", f"GET {url}: {exc}") from None


def _read_object(objects: ObjectStore, spec: TranscriptionSpec, limit: int) -> bytes:
    obj = spec.audio.s3_object()
    assert obj is not None
    field = "spec.audio.s3.key" if spec.audio.s3 is not None else "spec.audio.url"
    try:
        return buckets.read_audio(objects, obj, limit)
    except ObjectNotFound:
        raise TaskError("AudioNotFound", f"{obj} does not exist: upload it or fix {field}") from None
    except buckets.TooLarge as exc:
        raise TaskError("AudioTooLarge", str(exc)) from None
    except ObjectStoreError as exc:
        hint = (" (without s3:ListBucket on the bucket, S3 answers a missing key with 403 too)"
                if exc.reason == "ObjectStoreAccessDenied" else "")
        raise TaskError(exc.reason, exc.message + hint) from None


def fetch_audio(store: Store, spec: TranscriptionSpec, settings: AudioInputSettings | None = None, *,
                objects: ObjectStore | None = None) -> bytes:
    """The request's audio from Redis, its URL or a bucket, checked against the size
    limit and ``spec.audio.sha256``. ``settings`` default to the environment; ``objects``
    (for ``spec.audio.s3`` or an s3:// URL) to :func:`buckets.client`."""
    settings = settings or AudioInputSettings()
    limit = settings.max_audio_bytes
    if spec.audio.redis_key:
        try:
            data = store.get_audio(spec.audio.redis_key)
        except AudioNotFound as exc:
            raise TaskError("AudioNotFound", str(exc)) from None
    elif spec.audio.s3_object() is not None:
        data = _read_object(objects or buckets.client(store.objects), spec, limit)
    else:
        data = _download(spec.audio.url, limit, UrlGuard.from_settings(settings))
    if len(data) > limit:
        raise TaskError("AudioTooLarge", f"audio is {len(data)} bytes, over the {limit}-byte limit "
                        "(KUBESCRIBE_MAX_AUDIO_BYTES)")
    if not data:
        raise TaskError("BadAudio", "audio is empty (0 bytes)")
    if spec.audio.sha256 and hashlib.sha256(data).hexdigest() != spec.audio.sha256:
        raise TaskError("AudioChecksumMismatch", "the audio does not match spec.audio.sha256")
    return data


@dataclass
class Prepared:
    """A request that missed the cache: its audio fetched, its cache key known."""

    spec: TranscriptionSpec
    key: str
    data: bytes
    sha: str
    lookup: str | None
    owner: Owner | None = None


@contextlib.contextmanager
def task_errors():
    """Every failure of a task as a :class:`TaskError` with its reason."""
    try:
        yield
    except BadAudio as exc:
        raise TaskError("BadAudio", str(exc)) from None
    except ModelLoadError as exc:
        raise TaskError("ModelLoadFailed", str(exc)) from None
    except StoreError as exc:
        raise TaskError("RedisUnavailable", str(exc)) from None
    except ObjectStoreError as exc:
        raise TaskError(exc.reason, exc.message) from None
    except RedisError as exc:  # a checkpoint write that failed mid-transcription
        raise TaskError("RedisUnavailable", f"redis: {type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise TaskError("OutOfMemory", "the runner ran out of memory") from None


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


def prepare(store: Store, spec: TranscriptionSpec, *, audio: bytes | None = None,
            count_known_lookup: bool = True, owner: Owner | None = None,
            objects: ObjectStore | None = None) -> TaskOutcome | Prepared:
    """The cache answer (with ``spec.output``'s files written), or the fetched audio of a
    miss (see :func:`run_task`)."""
    # With spec.output the operator leaves even a cache hit to the runner, which must
    # write the files (operator.admission), so the runner counts that lookup itself.
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
        data = audio if audio is not None else fetch_audio(store, spec, objects=objects)
        sha = sha256_hex(data)
        if key is None:
            key = cache_key(sha, spec.output_params())
            if spec.cache.enabled:
                hit = store.get_result(key, owner=owner)
                lookup = "miss" if hit is None else "hit"
                if hit is not None:
                    done = TaskOutcome(hit, RunnerOutcome.from_result(hit, key, result_key(key), cached=True,
                                                                      size_bytes=len(data), cache_lookup=lookup))
                    return deliver(store, spec, owner, done, objects=objects)
        return Prepared(spec, key, data, sha, lookup, owner)


def store_result(store: Store, p: Prepared, result: dict[str, Any], board: RunBoard | None = None, *,
                 objects: ObjectStore | None = None) -> TaskOutcome:
    """Write a transcribed result under its cache key, drop its checkpoints, then write
    ``spec.output``'s files (:func:`deliver`)."""
    with task_errors():
        rkey = store.put_result(p.key, result, ttl=p.spec.cache.ttl_seconds, formats=p.spec.formats, owner=p.owner)
        if board is not None:
            _call_store(board.drop_checkpoint, p.key)
    done = TaskOutcome(result, RunnerOutcome.from_result(result, p.key, rkey, cached=False, size_bytes=len(p.data),
                                                         cache_lookup=p.lookup))
    return deliver(store, p.spec, p.owner, done, objects=objects)


def run_task(
    store: Store,
    engine: Engine,
    spec: TranscriptionSpec,
    *,
    metrics: RunnerMetrics | None = None,
    progress: ProgressFn | None = None,
    audio: bytes | None = None,
    count_known_lookup: bool = True,
    board: RunBoard | None = None,
    owner: Owner | None = None,
    objects: ObjectStore | None = None,
) -> TaskOutcome:
    """Answer from the cache or transcribe; raise :class:`TaskError` on failure.

    ``audio`` skips the fetch (the local CLI already holds the bytes). One cache lookup
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
    """
    p = prepare(store, spec, audio=audio, count_known_lookup=count_known_lookup, owner=owner, objects=objects)
    if isinstance(p, TaskOutcome):
        return p
    with task_errors():
        if metrics is not None:
            metrics.active_workers.inc()
        done, on_segment = [], None
        if board is not None:
            done = _call_store(board.checkpointed, p.key)
            on_segment = lambda seg: board.checkpoint(p.key, seg)  # noqa: E731
            if done:
                log.info("resuming after %d checkpointed segment(s), at %.1fs", len(done), done[-1]["end"])
        try:
            result = engine.transcribe(p.data, spec, audio_sha256=p.sha, progress=progress, done=done,
                                       on_segment=on_segment)
        finally:
            if metrics is not None:
                metrics.active_workers.dec()
    return store_result(store, p, result, board, objects=objects)
