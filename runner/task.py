"""One transcription task: cache check, audio fetch, transcription, result write.

Used by the runner Job entry point, the pooled runner and the local CLI, so all three
behave the same way and count the same metrics.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any

from kubescribe.metrics import Metrics
from kubescribe.models import TranscriptionSpec
from kubescribe.settings import AudioUrlSettings
from kubescribe.store import (
    AudioNotFound,
    Store,
    StoreError,
    cache_key,
    known_cache_key,
    result_summary,
    sha256_hex,
)

from .engine import BadAudio, Engine, ModelLoadError, ProgressFn
from .url_guard import TooManyRedirects, URLRefused, UrlGuard, open_url

log = logging.getLogger(__name__)

#: Refuse audio larger than this before decoding it: a 2 GiB upload would need several
#: times that in RAM once decoded to float32 samples. Override with
#: KUBESCRIBE_MAX_AUDIO_BYTES.
DEFAULT_MAX_AUDIO_BYTES = 512 * 1024 * 1024


def max_audio_bytes() -> int:
    return int(os.environ.get("KUBESCRIBE_MAX_AUDIO_BYTES", DEFAULT_MAX_AUDIO_BYTES))


class TaskError(Exception):
    """A task failure with a machine reason (CamelCase) and whether a retry can help."""

    def __init__(self, reason: str, message: str, *, final: bool, error_type: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.final = final
        self.error_type = error_type


@dataclass
class TaskOutcome:
    cache_key: str
    result_key: str
    cached: bool
    result: dict[str, Any]
    audio_sha256: str
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The short JSON the runner leaves in its termination message."""
        return result_summary(self.result, self.cache_key, self.result_key, cached=self.cached)


def _download(url: str, limit: int, guard: UrlGuard | None = None) -> bytes:
    """GET ``url`` from a destination the guard allows (by default: settings from the
    environment, see kubescribe.runner.url_guard)."""
    if guard is None:
        guard = UrlGuard.from_settings(AudioUrlSettings())
    try:
        with open_url(url, guard, timeout=60, headers={"User-Agent": "kubescribe-runner"}) as resp:
            chunks, total = [], 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise TaskError("AudioTooLarge", f"audio at {url} is larger than {limit} bytes",
                                    final=True, error_type="bad_audio")
                chunks.append(chunk)
            return b"".join(chunks)
    except TaskError:
        raise
    except URLRefused as exc:
        via = f" (redirected to {exc.url})" if exc.url and exc.url != url else ""
        raise TaskError("AudioURLForbidden", f"GET {url}{via}: {exc.message}", final=True,
                        error_type="invalid_spec") from None
    except TooManyRedirects as exc:
        raise TaskError("AudioDownloadFailed", f"GET {url}: {exc}", final=True,
                        error_type="audio_not_found") from None
    except urllib.error.HTTPError as exc:
        final = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise TaskError("AudioDownloadFailed", f"GET {url}: HTTP {exc.code}", final=final,
                        error_type="audio_not_found" if final else "internal") from None
    except OSError as exc:
        raise TaskError("AudioDownloadFailed", f"GET {url}: {exc}", final=False, error_type="internal") from None


def fetch_audio(store: Store, spec: TranscriptionSpec) -> bytes:
    limit = max_audio_bytes()
    if spec.audio.redis_key:
        try:
            data = store.get_audio(spec.audio.redis_key)
        except AudioNotFound as exc:
            raise TaskError("AudioNotFound", str(exc), final=True, error_type="audio_not_found") from None
    else:
        data = _download(spec.audio.url, limit)
    if len(data) > limit:
        raise TaskError("AudioTooLarge", f"audio is {len(data)} bytes, over the {limit}-byte limit "
                        "(KUBESCRIBE_MAX_AUDIO_BYTES)", final=True, error_type="bad_audio")
    if not data:
        raise TaskError("BadAudio", "audio is empty (0 bytes)", final=True, error_type="bad_audio")
    if spec.audio.sha256 and hashlib.sha256(data).hexdigest() != spec.audio.sha256:
        raise TaskError("AudioChecksumMismatch", "the audio does not match spec.audio.sha256",
                        final=True, error_type="bad_audio")
    return data


def run_task(
    store: Store,
    engine: Engine,
    spec: TranscriptionSpec,
    *,
    metrics: Metrics | None = None,
    progress: ProgressFn | None = None,
    audio: bytes | None = None,
) -> TaskOutcome:
    """Answer from the cache or transcribe; raise :class:`TaskError` on failure.

    ``audio`` skips the fetch (the local CLI already holds the bytes).
    """
    try:
        key = known_cache_key(spec)[0] if audio is None else None
        if key and spec.cache.enabled:
            hit = store.get_result(key)
            if hit is not None:
                return TaskOutcome(key, f"kubescribe:result:{key}", True, hit, hit.get("audio_sha256") or "")
        data = audio if audio is not None else fetch_audio(store, spec)
        sha = sha256_hex(data)
        if key is None:
            key = cache_key(sha, spec.output_params())
            if spec.cache.enabled:
                hit = store.get_result(key)
                if hit is not None:
                    return TaskOutcome(key, f"kubescribe:result:{key}", True, hit, sha, len(data))
        if metrics is not None:
            metrics.active_workers.inc()
        t0 = time.perf_counter()
        try:
            result = engine.transcribe(data, spec, audio_sha256=sha, progress=progress)
        finally:
            if metrics is not None:
                metrics.active_workers.dec()
        rkey = store.put_result(key, result, ttl=spec.cache.ttl_seconds)
        if metrics is not None:
            metrics.observe_transcription(
                model=spec.model, status="succeeded", seconds=time.perf_counter() - t0,
                audio_seconds=result.get("audio_duration_seconds"), size_bytes=len(data),
            )
        return TaskOutcome(key, rkey, False, result, sha, len(data))
    except TaskError as exc:
        _count_failure(metrics, spec, exc.error_type)
        raise
    except BadAudio as exc:
        _count_failure(metrics, spec, "bad_audio")
        raise TaskError("BadAudio", str(exc), final=True, error_type="bad_audio") from None
    except ModelLoadError as exc:
        _count_failure(metrics, spec, "model_load")
        raise TaskError("ModelLoadFailed", str(exc), final=True, error_type="model_load") from None
    except StoreError as exc:
        _count_failure(metrics, spec, "redis")
        raise TaskError("RedisUnavailable", str(exc), final=False, error_type="redis") from None
    except MemoryError:
        _count_failure(metrics, spec, "transcription")
        raise TaskError("OutOfMemory", "the runner ran out of memory", final=False, error_type="transcription") from None


def _count_failure(metrics: Metrics | None, spec: TranscriptionSpec, kind: str) -> None:
    if metrics is not None:
        metrics.error(kind)
        metrics.transcriptions_total.labels(status="failed", model=spec.model).inc()
