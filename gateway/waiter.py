"""Waiting for the gateway's requests to finish: one watch per namespace, shared.

A watch per waiting call would open a TLS connection to the API server per call (the
stream is abandoned when the request ends, so the connection cannot be reused): tens of
milliseconds each, and hundreds of connections under a burst. Instead each namespace the
gateway serves gets one long-lived watch on the requests it created (label
``app.kubernetes.io/created-by=kubescribe-gateway``), and waiting calls register for
their request's name *before* creating it (the gateway picks the name), so no event can
pass unseen. The watch resumes from its last resourceVersion when the server ends it, and
lists again after a 410 Gone or a broken connection, handing every waiter its request's
current state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kubescribe.models import TERMINAL_PHASES

from .kubeclient import KubeClient, KubeError

log = logging.getLogger("kubescribe.gateway.waiter")

LABEL_SELECTOR = "app.kubernetes.io/created-by=kubescribe-gateway"


class _NamespaceWatch:
    def __init__(self, kube: KubeClient, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self.waiters: dict[str, asyncio.Future] = {}
        self.ready = asyncio.Event()
        self.error = ""
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"watch-{namespace}")

    def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        fut = self.waiters.get(name) if name else None
        if fut is None or fut.done():
            return
        if kind == "DELETED":
            fut.set_exception(KubeError(404, f"{name} was deleted while the call waited"))
        elif (obj.get("status") or {}).get("phase") in TERMINAL_PHASES:
            fut.set_result(obj)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                listing = await self.kube.list_requests(self.namespace, LABEL_SELECTOR)
                rv = listing["metadata"]["resourceVersion"]
                for item in listing.get("items") or []:
                    self._deliver("ADDED", item)
                self.ready.set()
                relist = False
                while not relist:
                    async for kind, obj in self.kube.watch_events(self.namespace, LABEL_SELECTOR, rv):
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
    """``async with waiter.expect(ns, name) as done: create...; obj = await done(deadline)``."""

    def __init__(self, kube: KubeClient):
        self.kube = kube
        self._watches: dict[str, _NamespaceWatch] = {}

    async def _watch(self, namespace: str) -> _NamespaceWatch:
        w = self._watches.get(namespace)
        if w is None or w.task.done():
            w = self._watches[namespace] = _NamespaceWatch(self.kube, namespace)
        try:
            await asyncio.wait_for(w.ready.wait(), 15)
        except asyncio.TimeoutError:
            raise KubeError(503, f"cannot watch requests in {namespace}: {w.error or 'no answer'}") from None
        return w

    async def register(self, namespace: str, name: str) -> asyncio.Future:
        w = await self._watch(namespace)
        fut = asyncio.get_running_loop().create_future()
        w.waiters[name] = fut
        return fut

    def forget(self, namespace: str, name: str) -> None:
        w = self._watches.get(namespace)
        if w is not None:
            w.waiters.pop(name, None)

    async def wait(self, namespace: str, name: str, fut: asyncio.Future, deadline: float) -> dict[str, Any] | None:
        """The terminal request, or None at the deadline (then a fresh read decides)."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            obj = await self.kube.get_request(namespace, name)
            return obj if (obj.get("status") or {}).get("phase") in TERMINAL_PHASES else None
        finally:
            self.forget(namespace, name)

    async def close(self) -> None:
        for w in self._watches.values():
            w.task.cancel()
