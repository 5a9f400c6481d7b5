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
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger("kubescribe.operator")

Handler = Callable[[str | None, dict], None]  # (event type, object)


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
    """

    def __init__(self, workers: int, name: str = "events"):
        self._cv = threading.Condition()
        self._latest: dict[Hashable, tuple[Handler, str | None, dict]] = {}
        self._order: collections.deque[Hashable] = collections.deque()
        self._queued: set[Hashable] = set()
        self._busy: set[Hashable] = set()
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
            if key not in self._queued and key not in self._busy:
                self._queued.add(key)
                self._order.append(key)
                self._cv.notify()

    def depth(self) -> int:
        """Objects waiting to be handled."""
        with self._cv:
            return len(self._order)

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
            self._queued.discard(key)
            self._busy.add(key)
            return key, self._latest.pop(key)

    def _done(self, key: Hashable) -> None:
        with self._cv:
            self._busy.discard(key)
            if key in self._latest and key not in self._queued:  # an event came meanwhile
                self._queued.add(key)
                self._order.append(key)
                self._cv.notify()

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

