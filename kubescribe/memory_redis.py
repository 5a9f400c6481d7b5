"""The few Redis commands the store uses, on an in-process dict: what lets
``kubescribe transcribe`` (:class:`kubescribe.store.MemoryStore`) run with no server."""

from __future__ import annotations

import fnmatch
import threading
import time
from typing import Any


class MemoryRedis:
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
