"""One transcription task: cache check, audio fetch, transcription, result write.

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
from kubescribe.objectstore import ObjectStoreError
from kubescribe.store import (AudioNotFound, Owner, Store, StoreError, cache_key, known_cache_key, result_key,
                              sha256_hex)

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


def fetch_audio(store: Store, spec: TranscriptionSpec, settings: AudioInputSettings | None = None) -> bytes:
    """The request's audio from Redis or its URL, checked against the size limit and
    ``spec.audio.sha256``. ``settings`` default to the environment."""
    settings = settings or AudioInputSettings()
    limit = settings.max_audio_bytes
    if spec.audio.redis_key:
        try:
            data = store.get_audio(spec.audio.redis_key)
        except AudioNotFound as exc:
            raise TaskError("AudioNotFound", str(exc)) from None
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


def prepare(store: Store, spec: TranscriptionSpec, *, audio: bytes | None = None,
            count_known_lookup: bool = True, owner: Owner | None = None) -> TaskOutcome | Prepared:
    """The cache answer, or the fetched audio of a miss (see :func:`run_task`)."""
    with task_errors():
        key = known_cache_key(spec)[0] if audio is None else None
        if key and spec.cache.enabled:
            hit = store.get_result(key, count=count_known_lookup, owner=owner)
            if hit is not None:
                return TaskOutcome(hit, RunnerOutcome.from_result(hit, key, result_key(key), cached=True))
        data = audio if audio is not None else fetch_audio(store, spec)
        sha = sha256_hex(data)
        lookup = None
        if key is None:
            key = cache_key(sha, spec.output_params())
            if spec.cache.enabled:
                hit = store.get_result(key, owner=owner)
                lookup = "miss" if hit is None else "hit"
                if hit is not None:
                    return TaskOutcome(hit, RunnerOutcome.from_result(hit, key, result_key(key), cached=True,
                                                                      size_bytes=len(data), cache_lookup=lookup))
        return Prepared(spec, key, data, sha, lookup, owner)


def store_result(store: Store, p: Prepared, result: dict[str, Any], board: RunBoard | None = None) -> TaskOutcome:
    """Write a transcribed result under its cache key and drop its checkpoints."""
    with task_errors():
        rkey = store.put_result(p.key, result, ttl=p.spec.cache.ttl_seconds, formats=p.spec.formats, owner=p.owner)
        if board is not None:
            _call_store(board.drop_checkpoint, p.key)
    return TaskOutcome(result, RunnerOutcome.from_result(result, p.key, rkey, cached=False, size_bytes=len(p.data),
                                                         cache_lookup=p.lookup))


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
    the result is taken before the result is read or written (kubescribe.objectstore).
    """
    p = prepare(store, spec, audio=audio, count_known_lookup=count_known_lookup, owner=owner)
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
    return store_result(store, p, result, board)
