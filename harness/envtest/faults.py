"""A fault-injecting reverse proxy in front of the test kube-apiserver.

Real API servers throttle (429 with Retry-After), lose optimistic-concurrency races
(409 Conflict) and fail during upgrades or etcd leader changes (503). The test API
server never does, so code that must survive those answers is run through this proxy:
it listens on plain HTTP on a loopback port (no authentication), forwards every
request to the real API server over HTTPS as the cluster admin, streams the answers
(watches are long-lived chunked responses and work through it), and answers some
requests itself with an error, chosen by rules::

    proxy = FaultProxy(cluster, rules=[
        Fault(method="PATCH", path_re=r"/status$", status=429, every=3, retry_after=1),
        Fault(method="PATCH", status=409, every=5),
        Fault(method="POST", path_re="/jobs", status=503, every=2),
    ]).start()
    kubeconfig = proxy.kubeconfig_path      # point the code under test here
    ...
    assert proxy.injected(status=429) > 0
    with proxy.injecting(Fault(status=429, retry_after=1)):   # a burst, switched at runtime
        time.sleep(5)
    proxy.stop()

Injected errors are Kubernetes ``Status`` documents (kind Status, code, reason), so
clients build the same exceptions they would from the real thing. Only the code given
the proxy's kubeconfig sees faults; fixtures, the fake kubelet and the controllers talk
to the API server directly. Not supported: protocol upgrades (exec, attach,
port-forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml
import yarl

from . import free_port

log = logging.getLogger(__name__)

#: Kubernetes ``Status.reason`` for the codes a fault usually carries.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

#: Headers that describe one hop, not the message (RFC 9110 7.6.1), plus those the proxy
#: sets itself. Accept-Encoding is dropped so the API server answers uncompressed and
#: the bytes pass through unchanged.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
})


@dataclass(eq=False)
class Fault:
    """One rule: which requests it matches, how often it fires, and what it answers.

    Args:
        method: HTTP method to match (``None``: any).
        path_re: regular expression searched in the path (without the query string).
        query_re: regular expression searched in the query string (``watch=true`` to hit
            only watches, for example).
        status: the HTTP status to answer with.
        every: fire on every n-th matching request (1: all of them).
        probability: instead of ``every``, fire with this probability (seeded by ``seed``).
        times: stop firing after this many injections (``None``: no limit).
        retry_after: seconds for the ``Retry-After`` header and ``details.retryAfterSeconds``.
        reason: the Status reason; by default the usual one for ``status``.
        message: the Status message.
        watches: whether long-lived watch requests may be hit (``?watch=true``).
        delay: seconds to hold a matching request before answering or forwarding
            (a slow API server); applies to every match, fired or not.
        skip: let the first ``skip`` matches through before the rule may fire.
        after_forward: forward the request and throw the real answer away before
            answering with the fault: the change happened, but the client never hears
            of it (a response lost to a timeout or a dropped connection).
    """

    method: Optional[str] = None
    path_re: Optional[str] = None
    query_re: Optional[str] = None
    status: int = 503
    every: int = 1
    probability: Optional[float] = None
    times: Optional[int] = None
    retry_after: Optional[int] = None
    reason: Optional[str] = None
    message: Optional[str] = None
    watches: bool = True
    delay: float = 0.0
    seed: int = 0
    skip: int = 0
    after_forward: bool = False
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("every must be >= 1")
        self._path = re.compile(self.path_re) if self.path_re else None
        self._query = re.compile(self.query_re) if self.query_re else None
        self._random = random.Random(self.seed)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self._path and not self._path.search(path):
            return False
        if self._query and not self._query.search(query):
            return False
        if not self.watches and _is_watch(query):
            return False
        return True

    def decide(self) -> bool:
        """Count a match; True when this one is to be answered with the fault."""
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability is not None:
            return self._random.random() < self.probability
        return (self.matched - self.skip) % self.every == 0

    def status_document(self, method: str, path: str) -> dict[str, Any]:
        reason = self.reason or REASONS.get(self.status, "InternalError")
        doc: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message or f"injected by the test fault proxy: {self.status} {reason} "
                                       f"for {method} {path}",
            "reason": reason,
            "code": self.status,
        }
        if self.retry_after is not None:
            doc["details"] = {"retryAfterSeconds": int(self.retry_after)}
        return doc

    def __repr__(self) -> str:
        what = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("method", "path_re", "query_re", "status", "every",
                                                                "probability", "times", "retry_after")
                         if getattr(self, k) not in (None, 1) or k == "status")
        return f"Fault({what}; matched={self.matched}, fired={self.fired})"


def _is_watch(query: str) -> bool:
    return bool(re.search(r"(^|&)watch=(true|1)(&|$)", query))


@dataclass(frozen=True)
class Injection:
    """One injected answer, for assertions and failure messages."""

    method: str
    path: str
    query: str
    status: int
    fault: Fault = field(compare=False, repr=False)


class FaultProxy:
    """The proxy. ``start()`` returns it; ``stop()`` ends every connection.

    Args:
        cluster: a started ``KubeCluster`` (its ``server_url``, CA and admin certificate).
        rules: the initial faults, tried in order; the first that fires answers.
        port: the loopback port to listen on (a free one by default).
        workdir: where ``kubeconfig_path`` is written (the cluster's workdir by default).
    """

    def __init__(self, cluster: Any, rules: Sequence[Fault] = (), *, port: Optional[int] = None,
                 workdir: Optional[Path | str] = None) -> None:
        self.cluster = cluster
        self.upstream = cluster.server_url.rstrip("/")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._rules: list[Fault] = list(rules)
        self._lock = threading.Lock()
        self.injections: list[Injection] = []
        self.requests: Counter[str] = Counter()  # "METHOD" -> forwarded or answered
        self.forwarded = 0
        self.errors: list[str] = []  # proxy-side failures (upstream unreachable...)
        self._workdir = Path(workdir) if workdir else Path(cluster.workdir)
        self._kubeconfig: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Any = None
        self._session: Any = None
        self._upstream_responses: set[Any] = set()
        self._streams: dict[Any, Any] = {}  # upstream response -> downstream request, while streaming
        self._ready = threading.Event()
        self._startup_error: Optional[BaseException] = None

    # ----------------------------------------------------------------- rules

    @property
    def rules(self) -> list[Fault]:
        with self._lock:
            return list(self._rules)

    def set_rules(self, rules: Sequence[Fault]) -> None:
        """Replace every rule at once (counters of the old rules stay in ``injections``)."""
        with self._lock:
            self._rules = list(rules)

    def add(self, fault: Fault) -> Fault:
        """Add a rule in front of the others; it takes effect for the next request."""
        with self._lock:
            self._rules.insert(0, fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not fault]

    def clear(self) -> None:
        self.set_rules([])

    @contextlib.contextmanager
    def injecting(self, *faults: Fault) -> Iterator[tuple[Fault, ...]]:
        """Add ``faults`` (in front) for the duration of the block: a burst."""
        with self._lock:
            self._rules[:0] = list(faults)
        try:
            yield faults
        finally:
            with self._lock:
                self._rules = [r for r in self._rules if not any(r is f for f in faults)]

    def injected(self, status: Optional[int] = None, method: Optional[str] = None,
                 path_re: Optional[str] = None) -> int:
        """How many answers were injected, optionally of one status, method or path."""
        pattern = re.compile(path_re) if path_re else None
        with self._lock:
            return sum(1 for i in self.injections
                       if (status is None or i.status == status)
                       and (method is None or i.method == method.upper())
                       and (pattern is None or pattern.search(i.path)))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            by = Counter(f"{i.status} {i.method}" for i in self.injections)
            return {"forwarded": self.forwarded, "requests": dict(self.requests), "injected": dict(by),
                    "errors": list(self.errors[-5:])}

    def _choose(self, method: str, path: str, query: str) -> tuple[Optional[Fault], float, Optional[Injection]]:
        with self._lock:
            self.requests[method] += 1
            chosen: Optional[Fault] = None
            delay = 0.0
            for rule in self._rules:
                if not rule.matches(method, path, query):
                    continue
                delay = max(delay, rule.delay)
                if rule.decide() and chosen is None:
                    chosen = rule
            injection = None
            if chosen is not None:
                chosen.fired += 1
                injection = Injection(method, path, query, chosen.status, chosen)
                self.injections.append(injection)
            else:
                self.forwarded += 1
            return chosen, delay, injection

    def _not_injected(self, injection: Injection) -> None:
        """An ``after_forward`` fault whose request failed upstream: the real answer went
        back, so it does not count as injected."""
        with self._lock:
            self.injections = [i for i in self.injections if i is not injection]
            injection.fault.fired -= 1
            self.forwarded += 1

    # ----------------------------------------------------------------- kubeconfig

    @property
    def kubeconfig_path(self) -> str:
        """A kubeconfig for ``http://127.0.0.1:PORT``: no TLS, no credentials (the proxy
        authenticates upstream as the cluster admin)."""
        if self._kubeconfig is None:
            path = self._workdir / f"fault-proxy-{self.port}.kubeconfig"
            doc = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fault-proxy", "cluster": {"server": self.url}}],
                "users": [{"name": "fault-proxy", "user": {}}],
                "contexts": [{"name": "fault-proxy", "context": {"cluster": "fault-proxy", "user": "fault-proxy"}}],
                "current-context": "fault-proxy",
                "preferences": {},
            }
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            path.chmod(0o600)
            self._kubeconfig = str(path)
        return self._kubeconfig

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "FaultProxy":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fault proxy did not start within 30 s")
        if self._startup_error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._startup_error!r}") from self._startup_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(timeout=15)
            except Exception as exc:  # pragma: no cover - best effort
                log.warning("fault proxy shutdown: %r", exc)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _startup(self) -> None:
        import aiohttp
        from aiohttp import web

        ctx = ssl.create_default_context(cafile=str(self.cluster.ca_path))
        ctx.load_cert_chain(str(self.cluster.admin_cert_path), str(self.cluster.admin_key_path))
        connector = aiohttp.TCPConnector(ssl=ctx, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up (an operator killed mid-watch)
        # ends its upstream watch at once instead of at the next event.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def _shutdown(self) -> None:
        for resp in list(self._upstream_responses):
            resp.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ----------------------------------------------------------------- requests

    async def _forward_whole(self, request: Any) -> Any:
        """Forward and read the whole answer; None when it was a success (to be lost)."""
        from aiohttp import web

        body = await request.read() if request.body_exists else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, headers=headers, data=body, allow_redirects=False,
                                         skip_auto_headers=("Content-Type", "User-Agent")) as upstream:
            data = await upstream.read()
            if upstream.status < 400:
                return None
            out = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
            return web.Response(status=upstream.status, reason=upstream.reason, body=data, headers=_multidict(out))

    def drop_streams(self) -> int:
        """End every response being streamed (watches), as an API server restart does;
        clients must notice and watch again. Returns how many were ended."""
        loop = self._loop
        if loop is None:
            return 0

        async def drop() -> int:
            streams = list(self._streams.items())
            for upstream, request in streams:
                upstream.close()
                if request.transport is not None:
                    request.transport.close()  # a reset, not a clean end of the stream
            return len(streams)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(10)

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        method, path, query = request.method, request.path, request.query_string
        fault, delay, injection = self._choose(method, path, query)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and fault.after_forward:
            real = await self._forward_whole(request)
            if real is not None:  # the API server itself refused: that answer stands
                self._not_injected(injection)
                return real
        if fault is not None:
            headers = {"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after))
            await request.read()  # drain the request body before answering
            return web.Response(status=fault.status, headers=headers,
                                body=json.dumps(fault.status_document(method, path)).encode())

        body = await request.read() if request.body_exists else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)  # path and query as sent
        try:
            # The kubernetes client (37.x) sends some bodies without a Content-Type, which
            # the API server reads as JSON; aiohttp would add application/octet-stream.
            upstream = await self._session.request(method, url, headers=headers, data=body,
                                                   allow_redirects=False,
                                                   skip_auto_headers=("Content-Type", "User-Agent"))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            with self._lock:
                self.errors.append(f"{method} {path}: {exc!r}")
            doc = Fault(status=503, message=f"fault proxy: API server unreachable: {exc}").status_document(method, path)
            return web.Response(status=503, body=json.dumps(doc).encode(),
                                headers={"Content-Type": "application/json"})
        self._upstream_responses.add(upstream)
        try:
            out_headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
            whole = (upstream.headers.get("Content-Length") is not None or method == "HEAD"
                     or upstream.status in (204, 304))
            if whole and not _is_watch(query):
                data = await upstream.read()
                return web.Response(status=upstream.status, reason=upstream.reason, body=data,
                                    headers=_multidict(out_headers))
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_multidict(out_headers))
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            self._streams[upstream] = request
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except asyncio.CancelledError:  # the client hung up, or the proxy is stopping
                upstream.close()
                raise
            except (ConnectionResetError, aiohttp.ClientError):
                upstream.close()  # either side went away: end this stream
            return resp
        finally:
            self._streams.pop(upstream, None)
            self._upstream_responses.discard(upstream)
            upstream.release()


def _multidict(pairs: list[tuple[str, str]]) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(pairs)


__all__ = ["Fault", "FaultProxy", "Injection", "REASONS"]
