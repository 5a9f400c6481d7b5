"""The gateway's one way to wait for a request: one watch per namespace, shared.

A watch per waiting call would open a TLS connection to the API server per call (the
stream is abandoned when the request ends, so the connection cannot be reused): tens of
milliseconds each, and hundreds of connections under a burst. Instead each namespace the
gateway waits in gets one long-lived watch (``kubeclient.watch_events``) on its
TranscriptionRequests, and a call that waits subscribes to its request's name *before*
it creates the request (the gateway picks the name) or reads it (the events stream), so
no change can pass unseen. Both the synchronous calls (:meth:`Subscription.terminal`)
and the events stream (:meth:`Subscription.next`) read the same watch.

The watch covers every request in the namespace, not only the gateway's own: the events
stream serves any request by name, as ``GET`` does. It resumes from its last
resourceVersion when the server ends it, and lists again after a 410 Gone or a broken
connection, handing every subscriber its request's current state (and a deletion to a
subscriber whose request it had seen and the list no longer has).

Usage::

    sub = await waiter.subscribe(ns, name)     # before the create or the read
    try:
        ...create or read...
        obj = await sub.terminal(deadline)      # or: obj = await sub.next(timeout)
    finally:
        sub.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kubescribe.models import TERMINAL_PHASES

from .kubeclient import KubeClient, KubeError

log = logging.getLogger("kubescribe.gateway.waiter")


def is_terminal(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in TERMINAL_PHASES


def newer(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether ``obj`` is a later version of the request than ``than``.

    A subscriber that read the request itself (the events stream's first state) may be
    handed, afterwards, a change the watch saw before that read: without this check the
    stream would step back. The API server's resourceVersions are etcd revisions; a
    version that is not a number counts as newer, so nothing is ever held back.
    """
    if than is None:
        return True
    a = (obj.get("metadata") or {}).get("resourceVersion") or ""
    b = (than.get("metadata") or {}).get("resourceVersion") or ""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class Subscription:
    """The changes of one request, latest first: a subscriber that falls behind gets the
    newest state, never a backlog (memory stays one object per subscriber)."""

    def __init__(self, owner: _NamespaceWatch, name: str):
        self._owner, self.name = owner, name
        self._latest: dict[str, Any] | None = None
        self._deleted = False
        self._changed = asyncio.Event()
        #: The watch has handed this subscriber its request at least once, so a list
        #: without it means the request was deleted (not: not created yet).
        self.seen = False

    def _push(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self._deleted = True
        else:
            self._latest, self.seen = obj, True
        self._changed.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The request's newest state since the last call, or None after ``timeout``
        seconds without a change. ``KubeError`` 404 once it is deleted."""
        if self._deleted:
            raise KubeError(404, f"{self.name} was deleted")
        if not self._changed.is_set():
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
            except asyncio.TimeoutError:
                return None
        self._changed.clear()
        if self._deleted:
            raise KubeError(404, f"{self.name} was deleted")
        obj, self._latest = self._latest, None
        return obj

    async def terminal(self, deadline: float) -> dict[str, Any] | None:
        """The request once terminal, or None at ``deadline`` (monotonic) if a fresh read
        then still finds it running. ``KubeError`` 404 if it is deleted meanwhile."""
        while True:
            try:
                obj = await self.next(deadline - time.monotonic())
            except KubeError:
                raise KubeError(404, f"{self.name} was deleted while the call waited") from None
            if obj is not None and is_terminal(obj):
                return obj
            if obj is None and time.monotonic() >= deadline:
                obj = await self._owner.kube.get_request(self._owner.namespace, self.name)
                return obj if is_terminal(obj) else None

    def close(self) -> None:
        self._owner.unsubscribe(self)


class _NamespaceWatch:
    def __init__(self, kube: KubeClient, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self.subscribers: dict[str, set[Subscription]] = {}
        self.ready = asyncio.Event()
        self.error = ""
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"watch-{namespace}")

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.name)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.name]

    def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        for sub in list(self.subscribers.get(name) or ()):
            sub._push(None if kind == "DELETED" else obj)

    def _relisted(self, items: list[dict[str, Any]]) -> None:
        listed = {(item.get("metadata") or {}).get("name") for item in items}
        for item in items:
            self._deliver("ADDED", item)
        for name, subs in list(self.subscribers.items()):
            if name not in listed:
                for sub in list(subs):
                    if sub.seen:  # deleted while the watch was away
                        sub._push(None)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                listing = await self.kube.list_requests(self.namespace)
                rv = listing["metadata"]["resourceVersion"]
                self._relisted(listing.get("items") or [])
                self.ready.set()
                relist = False
                while not relist:
                    async for kind, obj in self.kube.watch_events(self.namespace, rv):
                        if kind == "ERROR":
                            relist = True
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if kind != "BOOKMARK":
                            self._deliver(kind, obj)
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API server away, RBAC, a broken stream: list again
                self.error = str(exc)
                log.warning("watch of requests in %s: %s; listing again", self.namespace, exc)
                # A pause before reconnecting, growing to 5 s while the API server is away.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class Waiter:
    """One :class:`_NamespaceWatch` per namespace, started by its first subscriber."""

    def __init__(self, kube: KubeClient, ready_seconds: float = 15.0):
        self.kube = kube
        self.ready_seconds = ready_seconds
        self._watches: dict[str, _NamespaceWatch] = {}

    async def _watch(self, namespace: str) -> _NamespaceWatch:
        w = self._watches.get(namespace)
        if w is None or w.task.done():
            w = self._watches[namespace] = _NamespaceWatch(self.kube, namespace)
        try:
            await asyncio.wait_for(w.ready.wait(), self.ready_seconds)
        except asyncio.TimeoutError:
            raise KubeError(503, f"cannot watch requests in {namespace}: {w.error or 'no answer'}") from None
        return w

    async def subscribe(self, namespace: str, name: str) -> Subscription:
        """Every later change of ``name`` in ``namespace``; close it when done."""
        w = await self._watch(namespace)
        sub = Subscription(w, name)
        w.subscribers.setdefault(name, set()).add(sub)
        return sub

    async def close(self) -> None:
        for w in self._watches.values():
            w.task.cancel()
