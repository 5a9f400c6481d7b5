"""Watch events, the latest per object, handled by a fixed pool of threads.

kopf hands every watch event to a handler. A synchronous handler runs in kopf's thread
pool, and while every thread is busy kopf keeps each waiting event, the whole object
with it, in a worker task per object: in a burst of thousands of requests and Jobs that
backlog, not the operator's own state, was most of its memory, and it held many stale
versions of objects that had moved on. The kopf handlers now only record the event here
and return.

Like client-go's workqueue: an object waiting to be handled is queued once, whatever the
number of its events meanwhile, and is handled with its latest event (the handlers are
level-triggered: they look at the object as it is now, so a skipped intermediate version
loses nothing); objects are handled in the order they first became due; one object is
never handled by two threads at once, and an event that arrives while its object is being
handled queues it again. The bodies kept are trimmed of what no handler reads
(managedFields; a Job's pod template, which holds the request spec in its environment).

An observer, if given, hears of every event, every object queued, and how long each waited
and was handled: the operator exports them as client-go's workqueue metrics
(``kubescribe_workqueue_*``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Protocol

log = logging.getLogger("kubescribe.operator")

Handler = Callable[[str | None, dict], None]  # (event type, object)


class Observer(Protocol):
    """What the queue reports as it works (each call made outside the queue's lock)."""

    def event(self, kind: str) -> None:
        """An event of an object of ``kind`` was recorded."""

    def added(self) -> None:
        """An object was queued (its events meanwhile are coalesced into one handling)."""

    def started(self, waited: float) -> None:
        """An object's handling began, ``waited`` seconds after it was queued."""

    def finished(self, seconds: float) -> None:
        """An object's handling ended after ``seconds``."""


def trimmed(body: dict) -> dict:
    """``body`` without the parts no handler reads; the rest shared, not copied."""
    meta = body.get("metadata") or {}
    out = dict(body)
    if "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    spec = body.get("spec")
    if body.get("kind") == "Job" and isinstance(spec, dict) and "template" in spec:
        out["spec"] = {k: v for k, v in spec.items() if k != "template"}
    return out


class EventQueue:
    """Events of many objects, coalesced per object, handled by ``workers`` threads.

    Args:
        workers: handler threads.
        name: thread name prefix.
        observer: told of events, queued objects, waits and handling times.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, workers: int, name: str = "events", observer: Observer | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._cv = threading.Condition()
        self._latest: dict[Hashable, tuple[Handler, str | None, dict]] = {}
        self._order: collections.deque[Hashable] = collections.deque()
        self._queued: dict[Hashable, float] = {}  # key -> when it was queued
        self._busy: dict[Hashable, float] = {}  # key -> when its handling began
        self._observer = observer
        self._clock = clock
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, workers))]

    def start(self) -> EventQueue:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    def put(self, key: Hashable, handler: Handler, event_type: str | None, body: dict) -> None:
        """Record an event of the object ``key``; it replaces one not yet handled."""
        with self._cv:
            self._latest[key] = (handler, event_type, trimmed(body))
            added = key not in self._queued and key not in self._busy
            if added:
                self._enqueue(key)
        if self._observer:
            self._observer.event(str(body.get("kind") or ""))
            if added:
                self._observer.added()

    def _enqueue(self, key: Hashable) -> None:  # under the lock
        self._queued[key] = self._clock()
        self._order.append(key)
        self._cv.notify()

    def depth(self) -> int:
        """Objects waiting to be handled."""
        with self._cv:
            return len(self._order)

    def longest_running(self) -> float:
        """Seconds the longest handling still under way has run (0 when none is)."""
        with self._cv:
            began = min(self._busy.values(), default=None)
        return 0.0 if began is None else max(0.0, self._clock() - began)

    def idle(self) -> bool:
        """Nothing waiting and nothing being handled."""
        with self._cv:
            return not self._order and not self._busy

    def _take(self) -> tuple[Hashable, tuple[Handler, str | None, dict]] | None:
        with self._cv:
            while not self._order and not self._stopped:
                self._cv.wait()
            if self._stopped:
                return None
            key = self._order.popleft()
            now = self._clock()
            waited = now - self._queued.pop(key)
            self._busy[key] = now
            got = key, self._latest.pop(key)
        if self._observer:
            self._observer.started(waited)
        return got

    def _done(self, key: Hashable) -> None:
        with self._cv:
            seconds = self._clock() - self._busy.pop(key)
            requeued = key in self._latest and key not in self._queued  # an event came meanwhile
            if requeued:
                self._enqueue(key)
        if self._observer:
            self._observer.finished(seconds)
            if requeued:
                self._observer.added()

    def _run(self) -> None:
        while True:
            got = self._take()
            if got is None:
                return
            key, (handler, event_type, body) = got
            try:
                handler(event_type, body)
            except Exception as exc:  # one object's failure must not stop the others
                log.exception("handling %s of %s failed: %s", event_type, key, exc)
            finally:
                self._done(key)

