"""What the store keeps and how: key names, TTLs, the result codec, and the value types.

Key layout (docs/architecture.md)::

    kubescribe:audio:<sha256>        audio bytes, with a TTL
    kubescribe:result:<cache key>    gzip-compressed JSON transcript, 24 h TTL by default
    kubescribe:stats:cache           hash {hits, misses}: hit rate shared by every process
    kubescribe:stats:clears          how many times the cache was cleared (not reset by a clear)
    kubescribe:analysis:<cache key>  JSON analysis of a transcript (kubescribe.analysis), 7 days

Pure functions and values, no connection: :mod:`kubescribe.store` does the I/O.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "kubescribe"
AUDIO_PREFIX = f"{PREFIX}:audio:"
RESULT_PREFIX = f"{PREFIX}:result:"
ANALYSIS_PREFIX = f"{PREFIX}:analysis:"
STATS_KEY = f"{PREFIX}:stats:cache"
CLEARS_KEY = f"{PREFIX}:stats:clears"

#: Result TTL: 24 h, as the original service kept it.
DEFAULT_RESULT_TTL = 86400
#: Audio TTL: long enough for a queued request to wait for a GPU, short enough that
#: uploads do not pile up in Redis memory.
DEFAULT_AUDIO_TTL = 86400
#: Analysis TTL: 7 days, as the inherited service kept its analyses.
DEFAULT_ANALYSIS_TTL = 7 * 86400
#: Bump when the result JSON or the key derivation changes, so old entries miss.
CACHE_SCHEMA = 1

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def audio_key(sha256: str) -> str:
    return AUDIO_PREFIX + sha256


def result_key(cache_key: str) -> str:
    return RESULT_PREFIX + cache_key


def cache_key(audio_sha256: str, params: Mapping[str, Any]) -> str:
    """Hash of the audio and every output-changing parameter.

    The JSON is canonical (sorted keys, no whitespace) so the same request gives the same
    key in every process and every Python version.
    """
    doc = {"v": CACHE_SCHEMA, "audio": audio_sha256, "params": dict(params)}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def analysis_key(result_redis_key: str) -> str:
    """The analysis key of a transcript, from its result key (``status.resultKey``): one
    analysis per content, shared by every request answered with that transcript."""
    tail = result_redis_key[len(RESULT_PREFIX):] if result_redis_key.startswith(RESULT_PREFIX) else sha256_hex(result_redis_key.encode())
    return ANALYSIS_PREFIX + tail


def audio_sha_from_key(key: str | None) -> str | None:
    """The SHA-256 named by a ``kubescribe:audio:<sha256>`` key, or None for other keys."""
    if key and key.startswith(AUDIO_PREFIX):
        tail = key[len(AUDIO_PREFIX):]
        if len(tail) == 64 and all(c in "0123456789abcdef" for c in tail):
            return tail
    return None


def known_cache_key(spec) -> tuple[str | None, str | None]:
    """(cache key, audio SHA-256) of a request when its audio hash is known without
    fetching the audio (``audio.sha256``, or a content-addressed Redis key); else Nones.

    ``spec`` is a :class:`kubescribe.models.TranscriptionSpec`.
    """
    sha = spec.audio.sha256 or audio_sha_from_key(spec.audio.redis_key)
    return (cache_key(sha, spec.output_params()) if sha else None), sha


def encode_result(result: Mapping[str, Any], codec: str = "gzip", level: int = 6) -> bytes:
    raw = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    if codec == "gzip":
        return gzip.compress(raw, compresslevel=level, mtime=0)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level).compress(raw)
    if codec == "none":
        return raw
    raise ValueError(f"unknown codec {codec!r}: use gzip, zstd or none")


def decode_result(blob: bytes) -> dict[str, Any]:
    if blob.startswith(_GZIP_MAGIC):
        blob = gzip.decompress(blob)
    elif blob.startswith(_ZSTD_MAGIC):
        import zstandard

        blob = zstandard.ZstdDecompressor().decompress(blob)
    return json.loads(blob)


@dataclass(frozen=True)
class Owner:
    """The request a result is read or written for: its reference in the object store
    keeps the result while the request exists."""

    uid: str
    name: str  # namespace/name, for a person reading the bucket


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    results: int
    audio: int
    clears: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def document(self) -> dict[str, int | float]:
        """The counts as ``kubescribe cache stats`` prints them and the gateway's
        ``GET /api/admin/cache/stats`` answers them: one shape, snake_case."""
        return {"hits": self.hits, "misses": self.misses, "hit_rate": round(self.hit_rate, 4),
                "results": self.results, "audio": self.audio, "clears": self.clears}
