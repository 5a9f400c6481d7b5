"""The Redis store: audio by SHA-256, transcripts in a gzip result cache, shared stats.

The keys, TTLs, result codec and value types are in :mod:`kubescribe.cache_layout`; this
module does the I/O.

With an object store (kubescribe.objectstore) the store is a read-through cache in front
of it: every result is written there first, a read that misses Redis reads it there and
warms Redis, and losing Redis (a key, or all of it) costs speed, never a transcript.

Redis is reached through a URL (``redis://``, ``rediss://`` for TLS, ``redis+sentinel://``
for a primary that can fail over; kubescribe.redisconn) and a password that comes from a
Secret via the environment, never from a custom resource. ``MemoryStore``
is the same store on an in-process dict (:mod:`kubescribe.memory_redis`), so
``kubescribe transcribe`` needs no server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from kubescribe.cache_layout import (
    ANALYSIS_PREFIX, AUDIO_PREFIX, CLEARS_KEY, DEFAULT_ANALYSIS_TTL, DEFAULT_AUDIO_TTL, DEFAULT_RESULT_TTL,
    RESULT_PREFIX, STATS_KEY, CacheStats, Owner, analysis_key, audio_key, decode_result, encode_result,
    result_key, sha256_hex,
)
from kubescribe.memory_redis import MemoryRedis
from kubescribe.objectstore import ObjectStore
# Every process opens Redis through redisconn (URL forms, timeouts, failover retries);
# re-exported here, where callers have always found it.
from kubescribe.redisconn import connect  # noqa: F401

if TYPE_CHECKING:
    from kubescribe.metrics import Metrics

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """Redis could not be reached or answered wrongly: transient, worth a retry."""


class AudioNotFound(LookupError):
    """The audio key is missing or expired: final, the client must upload again."""


class _Backend(Protocol):
    """The few Redis commands the store uses; redis.Redis and MemoryRedis both fit."""

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


class MemoryStore(Store):
    """The store on an in-process dict: the embedded default of the local CLI."""

    def __init__(self, metrics: "Metrics | None" = None, codec: str = "gzip"):
        super().__init__(MemoryRedis(), metrics=metrics, codec=codec)


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
