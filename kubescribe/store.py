"""The Redis store: audio by SHA-256, transcripts in a gzip result cache, shared stats.

Key layout (docs/architecture.md)::

    kubescribe:audio:<sha256>        audio bytes, with a TTL
    kubescribe:result:<cache key>    gzip-compressed JSON transcript, 24 h TTL by default
    kubescribe:stats:cache           hash {hits, misses}: hit rate shared by every process
    kubescribe:stats:clears          how many times the cache was cleared (not reset by a clear)
    kubescribe:analysis:<cache key>  JSON analysis of a transcript (kubescribe.analysis), 7 days

With an object store (kubescribe.objectstore) the store is a read-through cache in front
of it: every result is written there first, a read that misses Redis reads it there and
warms Redis, and losing Redis (a key, or all of it) costs speed, never a transcript.

Redis is reached through a URL (``redis://``, ``rediss://`` for TLS, ``redis+sentinel://``
for a primary that can fail over; kubescribe.redisconn) and a password that comes from a
Secret via the environment, never from a custom resource. ``MemoryStore``
is the same store on an in-process dict, so ``kubescribe transcribe`` needs no server.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kubescribe.objectstore import ObjectStore
# Every process opens Redis through redisconn (URL forms, timeouts, failover retries);
# re-exported here, where callers have always found it.
from kubescribe.redisconn import connect  # noqa: F401

if TYPE_CHECKING:
    from kubescribe.metrics import Metrics

log = logging.getLogger(__name__)

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


class StoreError(RuntimeError):
    """Redis could not be reached or answered wrongly: transient, worth a retry."""


class AudioNotFound(LookupError):
    """The audio key is missing or expired: final, the client must upload again."""


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


class _Backend(Protocol):
    """The few Redis commands the store uses; redis.Redis and _MemoryBackend both fit."""

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ex: int | None = None, nx: bool = False) -> Any: ...
    def delete(self, *keys: str) -> int: ...
    def exists(self, *keys: str) -> int: ...
    def incr(self, key: str) -> int: ...
    def hincrby(self, key: str, field: str, amount: int = 1) -> int: ...
    def hgetall(self, key: str) -> dict[bytes, bytes]: ...
    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[bytes]: ...
    def ping(self) -> bool: ...


class Store:
    """Audio and result storage over a Redis connection.

    Args:
        client: a ``redis.Redis`` (or anything with the same commands).
        metrics: optional :class:`~kubescribe.metrics.Metrics` to count cache operations.
        codec: compression for new results, ``gzip`` (default, the inherited format) or
            ``zstd``; reads accept both.
        objects: the object store that keeps results for good; None keeps them in Redis
            only (they expire with the cache).
    """

    def __init__(self, client: _Backend, metrics: "Metrics | None" = None, codec: str = "gzip",
                 objects: ObjectStore | None = None):
        self.client = client
        self.metrics = metrics
        self.codec = codec
        self.objects = objects

    # -- plumbing -------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AudioNotFound, ValueError):
            raise
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    def _count(self, operation: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_operations_total.labels(operation=operation, result=result).inc()

    def ping(self) -> bool:
        return bool(self._call(self.client.ping))

    # -- audio ----------------------------------------------------------------------
    def put_audio(self, data: bytes, ttl: int = DEFAULT_AUDIO_TTL) -> str:
        """Store audio under its SHA-256 and return the Redis key. Idempotent."""
        if not data:
            raise ValueError("audio is empty (0 bytes)")
        key = audio_key(sha256_hex(data))
        self._call(self.client.set, key, data, ex=ttl)
        return key

    def get_audio(self, key: str) -> bytes:
        data = self._call(self.client.get, key)
        if data is None:
            raise AudioNotFound(
                f"audio {key} is not in Redis (never uploaded, or expired): upload it again"
            )
        return data

    def has_audio(self, key: str) -> bool:
        return bool(self._call(self.client.exists, key))

    # -- results --------------------------------------------------------------------
    def put_result(self, key: str, result: Mapping[str, Any], ttl: int = DEFAULT_RESULT_TTL, *,
                   formats: tuple[str, ...] | list[str] = (), owner: Owner | None = None) -> str:
        """Write a transcript under its cache key; returns the Redis key.

        With an object store the result goes there first (with ``formats`` rendered beside
        it, and ``owner``'s reference taken before anything is written): an
        :class:`~kubescribe.objectstore.ObjectStoreError` then means nothing was promised and the caller retries.
        Redis is only warmed after that, and a Redis failure no longer loses anything.
        """
        rkey = result_key(key)
        blob = encode_result(result, self.codec)
        if self.objects is not None:
            from kubescribe.render import render

            if owner is not None:
                self.objects.retain(key, owner.uid, owner.name)
            self.objects.put_result(key, blob, {f: render(result, f) for f in formats})
        try:
            self._call(self.client.set, rkey, blob, ex=ttl)
        except StoreError as exc:
            self._count("set", "error")
            if self.objects is None:
                raise
            log.warning("result %s kept in the object store; Redis not warmed: %s", key, exc)
            return rkey
        self._count("set", "ok")
        return rkey

    def get_result(self, key: str, *, count: bool = True, owner: Owner | None = None) -> dict[str, Any] | None:
        """Read a transcript by cache key; records a hit or miss unless ``count=False``.

        Redis first; on a miss (or with Redis down) the object store, whose copy then warms
        Redis. A hit for ``owner`` takes its reference and makes sure the object store holds
        the result (a copy left only in Redis is written back), so a request answered from
        the cache keeps its transcript as long as one that ran.
        """
        blob, redis_up = self._redis_result(key)
        from_cache = blob is not None
        if blob is None and self.objects is not None:
            blob = self.objects.get_result(key)
            if blob is not None and redis_up:
                self._warm(key, blob)
        hit = blob is not None
        if count:
            self._counted_lookup(hit)
        if not hit:
            return None
        if owner is not None and self.objects is not None:
            self.objects.retain(key, owner.uid, owner.name)
            if from_cache and not self.objects.has_result(key):
                self.objects.put_result(key, blob)
        return decode_result(blob)

    def _redis_result(self, key: str) -> tuple[bytes | None, bool]:
        """(the cached blob or None, whether Redis answered); Redis down is a StoreError
        only without an object store to fall back on."""
        try:
            return self._call(self.client.get, result_key(key)), True
        except StoreError:
            self._count("get", "error")
            if self.objects is None:
                raise
            return None, False

    def _warm(self, key: str, blob: bytes, ttl: int = DEFAULT_RESULT_TTL) -> None:
        try:
            self._call(self.client.set, result_key(key), blob, ex=ttl)
        except StoreError as exc:
            log.debug("cache not warmed for %s: %s", key, exc)

    def read_result_key(self, rkey: str) -> dict[str, Any] | None:
        """Read a transcript by its full Redis key (``status.resultKey``); no stats."""
        if rkey.startswith(RESULT_PREFIX):
            return self.get_result(rkey[len(RESULT_PREFIX):], count=False)
        blob = self._call(self.client.get, rkey)
        return decode_result(blob) if blob is not None else None

    def release(self, key: str, uid: str) -> bool:
        """Drop request ``uid``'s reference to a result; the last one out deletes the result
        from the object store and the cache. Returns whether it was deleted.

        Lock-free and safe against a request that takes a reference meanwhile
        (:meth:`get_result` with an owner, :meth:`put_result`): that one writes its
        reference *before* it checks the object store, and this one looks for references
        again *after* it deleted, putting the result back if one appeared. Whichever order
        the calls interleave in, a request that holds a reference ends with its result
        stored. Without an object store there is nothing to release (results expire).
        """
        if self.objects is None:
            return False
        self.objects.drop_ref(key, uid)
        if self.objects.holders(key):
            return False
        d = self.objects.result_dir(key)
        kept = {k: self.objects.get(k) for k in self.objects.keys(d)}
        for rk in (result_key(key), ANALYSIS_PREFIX + key):
            try:
                self._call(self.client.delete, rk)
            except StoreError as exc:
                log.warning("cached copy %s not deleted: %s", rk, exc)
        self.objects.delete(kept)
        if self.objects.holders(key):
            for k, data in kept.items():
                self.objects.put(k, data)
            return False
        return bool(kept)

    def analysis(self, rkey: str, ttl: int = DEFAULT_ANALYSIS_TTL) -> tuple[dict[str, Any], bool] | None:
        """The analysis of the transcript at ``rkey`` and whether it came from the cache:
        computed once (:func:`kubescribe.analysis.analyze`) and kept ``ttl`` seconds.
        None when the transcript itself has expired."""
        from kubescribe.analysis import ANALYSIS_VERSION, analyze

        akey = analysis_key(rkey)
        blob = self._call(self.client.get, akey)
        if blob is not None:
            cached = json.loads(blob)
            if cached.get("version") == ANALYSIS_VERSION:
                return cached, True
        result = self.read_result_key(rkey)
        if result is None:
            return None
        doc = analyze(result)
        self._call(self.client.set, akey, json.dumps(doc, separators=(",", ":")).encode(), ex=ttl)
        return doc, False

    def record_lookup(self, hit: bool) -> None:
        """Count a lookup in the shared hash every process's hit rate is read from: one
        HINCRBY, and no metric. The caller counts its own metrics where it counts the
        request (the operator's applier, with the request's lock held: a gauge read here
        used to add two Redis round trips to that lock's hold).

        One lookup per request: a caller that looks again for the same request (the
        operator before it starts a Job) reads with ``count=False`` and records the
        request's lookup once, when its answer is known.
        """
        try:
            self._call(self.client.hincrby, STATS_KEY, "hits" if hit else "misses", 1)
        except StoreError:
            return  # stats are best effort; never fail a request over them

    def _counted_lookup(self, hit: bool) -> None:
        """A lookup counted by :meth:`get_result` itself (runners, the CLI): the shared
        hash, this store's metrics, and the hit-rate gauge for a process that has no
        scrape-time refresh of its own (the CLI's ``--metrics-port``)."""
        self._count("get", "hit" if hit else "miss")
        self.record_lookup(hit)
        if self.metrics is not None:
            try:
                self.metrics.cache_hit_rate.set(self.stats(count_keys=False).hit_rate)
            except StoreError:
                pass

    def _keys(self, pattern: str) -> list:
        """Every key matching ``pattern``; SCAN runs as the list is built, so a Redis error
        surfaces here as a StoreError, not later in the caller's loop."""
        return self._call(lambda: list(self.client.scan_iter(match=pattern, count=500)))

    def stats(self, count_keys: bool = True) -> CacheStats:
        raw = self._call(self.client.hgetall, STATS_KEY) or {}
        get = lambda k: int(raw.get(k.encode(), raw.get(k, 0)) or 0)  # noqa: E731
        clears = int(self._call(self.client.get, CLEARS_KEY) or 0)
        results = audio = 0
        if count_keys:
            results = len(self._keys(RESULT_PREFIX + "*"))
            audio = len(self._keys(AUDIO_PREFIX + "*"))
        return CacheStats(hits=get("hits"), misses=get("misses"), results=results, audio=audio, clears=clears)

    def clear(self, audio: bool = False) -> int:
        """Delete every cached result and analysis (and uploaded audio if asked) and reset
        the hit rate.

        The clear itself is counted in Redis, where the operator reads it for Prometheus:
        the CLI that clears is never scraped.
        """
        patterns = [RESULT_PREFIX + "*", ANALYSIS_PREFIX + "*"] + ([AUDIO_PREFIX + "*"] if audio else [])
        deleted = 0
        for pattern in patterns:
            keys = self._keys(pattern)
            for i in range(0, len(keys), 500):
                deleted += self._call(self.client.delete, *keys[i:i + 500])
        self._call(self.client.delete, STATS_KEY)
        self._call(self.client.incr, CLEARS_KEY)
        return deleted


class _MemoryBackend:
    """A thread-safe in-process stand-in for the Redis commands the store uses."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str):
        item = self._data.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and time.monotonic() >= deadline:
            del self._data[key]
            return None
        return value

    def get(self, key):
        with self._lock:
            v = self._live(key)
            return v if isinstance(v, bytes) or v is None else None

    def set(self, key, value, ex=None, nx=False):
        with self._lock:
            if nx and self._live(key) is not None:
                return None
            if isinstance(value, str):
                value = value.encode()
            self._data[key] = (value, time.monotonic() + ex if ex else None)
            return True

    def delete(self, *keys):
        with self._lock:
            n = 0
            for k in keys:
                k = k.decode() if isinstance(k, bytes) else k
                if self._live(k) is not None:
                    n += 1
                self._data.pop(k, None)
            return n

    def exists(self, *keys):
        with self._lock:
            return sum(1 for k in keys if self._live(k) is not None)

    def incr(self, key):
        with self._lock:
            n = int(self._live(key) or 0) + 1
            self._data[key] = (str(n).encode(), None)
            return n

    def hincrby(self, key, field, amount=1):
        with self._lock:
            h = self._live(key) or {}
            h[field.encode()] = str(int(h.get(field.encode(), b"0")) + amount).encode()
            self._data[key] = (h, None)
            return int(h[field.encode()])

    def hgetall(self, key):
        with self._lock:
            return dict(self._live(key) or {})

    def scan_iter(self, match=None, count=None):
        with self._lock:
            keys = [k for k in list(self._data) if self._live(k) is not None]
        for k in keys:
            if match is None or fnmatch.fnmatchcase(k, match):
                yield k.encode()

    def ping(self):
        return True


class MemoryStore(Store):
    """The store on an in-process dict: the embedded default of the local CLI."""

    def __init__(self, metrics: "Metrics | None" = None, codec: str = "gzip"):
        super().__init__(_MemoryBackend(), metrics=metrics, codec=codec)


def open_store(url: str | None, password: str | None = None, metrics: "Metrics | None" = None, *,
               objects: ObjectStore | None = None, **kw) -> Store:
    """A Store on Redis when a URL is given, else the in-process MemoryStore; ``objects``
    is the object store behind it, if the install has one."""
    if not url or url == "memory://":
        store: Store = MemoryStore(metrics=metrics)
        store.objects = objects
        return store
    return Store(connect(url, password, **kw), metrics=metrics, objects=objects)


def gone_message(name: str, store: Store) -> str:
    """Why a finished request's transcript cannot be read, in one line."""
    if store.objects is None:
        return (f"the result of {name} has expired from Redis (no object store is configured, so results "
                "last only as long as the cache keeps them: set KUBESCRIBE_S3_BUCKET)")
    return f"the result of {name} is missing from the object store and from Redis"


def store_from_settings(settings: Any, metrics: "Metrics | None" = None, *, url: str | None = None) -> Store:
    """The store an entry point opens from its settings: Redis from the ``redis_*`` fields,
    and the object store from the ``s3_*`` fields when a bucket is set. ``url`` overrides
    the Redis URL (the CLI's embedded ``memory://``)."""
    objects = ObjectStore.from_settings(settings) if getattr(settings, "s3_bucket", "") else None
    return open_store(settings.redis_url if url is None else url, settings.redis_password, metrics=metrics,
                      objects=objects, ca_file=settings.redis_ca_file,
                      sentinel_password=getattr(settings, "redis_sentinel_password", None))
