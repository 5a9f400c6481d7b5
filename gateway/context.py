"""What every handler shares (:class:`Gateway`), who is calling, and where a call's time
went (:class:`Timing`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from kubescribe.gateway.http_metrics import GatewayMetrics
from kubescribe.modeldir import ModelInfo, available
from kubescribe.models import DEFAULT_MODEL
from kubescribe.settings import GatewaySettings
from kubescribe.store import Store

from .auth import ApiKeys, Authorizer, Identity, namespace_for, request_attributes
from .errors import HttpError
from .kubeclient import KubeClient
from .waiter import Waiter

NAMESPACE_HEADER = "x-kubescribe-namespace"


class Timing:
    """Where a call's time went, sent back in a ``Server-Timing`` header (W3C): browsers'
    and curl's users, and the benchmark, read it without access to the gateway's metrics."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, float]] = []
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, now - self._t))
        self._t = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={sec * 1000:.1f}" for name, sec in self.parts)


@dataclass
class Gateway:
    """What the handlers share: settings, the API server, Redis, auth, metrics, limits."""

    settings: GatewaySettings
    kube: KubeClient
    redis: Any  # redis.asyncio.Redis
    store: Store  # the synchronous store, for the admin and analysis calls (in a thread)
    metrics: GatewayMetrics
    auth: Authorizer = field(init=False)
    waiter: Waiter = field(init=False)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.auth = Authorizer(self.kube, ApiKeys(self.settings.gateway_api_keys_file),
                               self.settings.gateway_auth_cache_seconds)
        self.waiter = Waiter(self.kube)

    @contextlib.contextmanager
    def slot(self, ident: Identity) -> Iterator[None]:
        """One of the identity's concurrent calls, or 429."""
        n = self._in_flight.get(ident.user, 0)
        if n >= self.settings.gateway_max_concurrent_per_identity:
            raise HttpError(429, f"{ident.user} already has {n} calls in flight (the limit per identity): "
                                 "wait for one to finish", code="concurrency_limit")
        self._in_flight[ident.user] = n + 1
        try:
            yield
        finally:
            left = self._in_flight[ident.user] - 1
            if left:
                self._in_flight[ident.user] = left
            else:
                del self._in_flight[ident.user]

    def models(self) -> list[ModelInfo]:
        """What the runners can load: the bundled tiny.en, the declared models and those on
        the model volume if the gateway mounts it."""
        return available(self.settings.gateway_model_dir, [DEFAULT_MODEL, *self.settings.gateway_models])

    async def caller(self, request: Request, verb: str, name: str | None = None) -> tuple[Identity, str]:
        """Who calls, in which namespace, allowed to ``verb`` there (401/400/403 if not)."""
        ident = await self.auth.authenticate(request.headers.get("authorization"))
        ns = namespace_for(ident, request.headers.get(NAMESPACE_HEADER), self.settings.gateway_default_namespace,
                           self.settings.gateway_namespaces)
        await self.auth.require(ident, request_attributes(verb, ns, name))
        return ident, ns


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway
