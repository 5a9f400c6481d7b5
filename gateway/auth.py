"""Who is calling and what they may do, decided by Kubernetes.

- **Authentication**: ``Authorization: Bearer <token>``. A token listed in the API-key
  file (a Secret, keys stored as SHA-256) maps to the identity written there; any other
  token is sent to the API server in a TokenReview. No token, or a token neither accepts:
  401. There is no anonymous access.
- **Namespace**: the ``X-Kubescribe-Namespace`` header, else the API key's namespace, else
  a ServiceAccount's own namespace, else ``KUBESCRIBE_GATEWAY_DEFAULT_NAMESPACE``
  (:func:`namespace_for`, a pure function).
- **Authorization**: every action is a SubjectAccessReview for that identity: ``create
  transcriptionrequests`` to transcribe, ``get``/``delete`` to read or cancel, and for
  the admin endpoints a verb on the virtual resource ``cache`` of the ``kubescribe.io``
  group (:data:`ADMIN_STATS`, :data:`ADMIN_CLEAR`), which no built-in role grants.

Answers are reused for ``KUBESCRIBE_GATEWAY_AUTH_CACHE_SECONDS`` per token and action, the
10,000 most recently used of each kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from kubescribe import GROUP, PLURAL

from .kubeclient import KubeClient

#: The admin permission: a virtual resource of the kubescribe.io group. The Role to grant::
#:
#:   rules: [{apiGroups: [kubescribe.io], resources: [cache], verbs: [get, delete]}]
ADMIN_STATS = {"group": GROUP, "resource": "cache", "verb": "get"}
ADMIN_CLEAR = {"group": GROUP, "resource": "cache", "verb": "delete"}

_SA_USER = re.compile(r"^system:serviceaccount:([a-z0-9-]{1,63}):[a-z0-9.-]+$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class AuthError(Exception):
    """A refused call: ``status`` 401 or 403 (or 400 for a malformed namespace, 503 when
    the API server cannot be asked), and a message that says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    uid: str | None = None
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: The namespace an API key is bound to; None for tokens.
    namespace: str | None = None
    via: str = "token"

    @property
    def service_account_namespace(self) -> str | None:
        m = _SA_USER.match(self.user)
        return m.group(1) if m else None


def namespace_for(identity: Identity, requested: str | None, default: str, allowed: list[str]) -> str:
    """The namespace a call acts in.

    The header wins (an identity may be allowed in several namespaces); an API key is
    bound to its namespace and may not name another; a ServiceAccount defaults to its
    own; anyone else to the configured default. The gateway's own list of namespaces it
    serves (empty: any) is checked last. RBAC is still asked afterwards: being in the
    namespace is not the right to act in it.
    """
    requested = (requested or "").strip() or None
    if identity.namespace is not None:
        if requested and requested != identity.namespace:
            raise AuthError(403, f"this API key is bound to namespace {identity.namespace!r}, not {requested!r}")
        ns = identity.namespace
    else:
        ns = requested or identity.service_account_namespace or default
    if not ns:
        raise AuthError(400, "name a namespace with the X-Kubescribe-Namespace header")
    if not _NAMESPACE.match(ns):
        raise AuthError(400, f"{ns!r} is not a namespace name")
    if allowed and ns not in allowed:
        raise AuthError(403, f"this gateway does not serve namespace {ns!r} (it serves {', '.join(allowed)})")
    return ns


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError(401, "no credentials: send Authorization: Bearer <Kubernetes token or API key>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "send Authorization: Bearer <Kubernetes token or API key>")
    return token.strip()


@dataclass
class ApiKeys:
    """API keys from a JSON file mounted from a Secret, re-read when it changes.

    ``{"<name>": {"sha256": "<hex>", "namespace": "ns", "user": "...", "groups": [...]}}``;
    ``user`` defaults to ``kubescribe:apikey:<name>``. The key itself is never stored.
    """

    path: str | None
    _mtime: float = -1.0
    _by_hash: dict[str, Identity] = field(default_factory=dict)

    def _reload(self) -> None:
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            self._by_hash = {}
            return
        if mtime == self._mtime:
            return
        with open(self.path, encoding="utf-8") as f:
            doc = json.load(f)
        table = {}
        for name, entry in (doc or {}).items():
            digest = str(entry["sha256"]).lower()
            table[digest] = Identity(user=entry.get("user") or f"kubescribe:apikey:{name}",
                                     groups=tuple(entry.get("groups") or ("kubescribe:apikeys",)),
                                     namespace=entry["namespace"], via=f"apikey:{name}")
        self._by_hash, self._mtime = table, mtime

    def lookup(self, token: str) -> Identity | None:
        self._reload()
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, ident in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return ident
        return None


class _ReviewCache:
    """Review answers for ``ttl`` seconds, at most ``size`` of them: when full of live
    answers the least recently used one goes (cachetools' TTLCache), not all of them at
    once, which would send every caller's next call back to the API server together."""

    def __init__(self, ttl: float, size: int):
        self._cache: TTLCache | None = TTLCache(maxsize=size, ttl=ttl, timer=time.monotonic) if ttl > 0 else None

    def get(self, key: Any) -> Any:
        return None if self._cache is None else self._cache.get(key)

    def put(self, key: Any, value: Any) -> None:
        if self._cache is not None:
            self._cache[key] = value


class Authorizer:
    """TokenReview and SubjectAccessReview, with short-lived answers reused."""

    def __init__(self, kube: KubeClient, api_keys: ApiKeys, cache_seconds: float, cache_size: int = 10000):
        self.kube = kube
        self.api_keys = api_keys
        self._tokens = _ReviewCache(cache_seconds, cache_size)
        self._access = _ReviewCache(cache_seconds, cache_size)
        self._pending: dict[Any, asyncio.Future] = {}

    async def _once(self, key: Any, call):
        """One review in flight per token and action: a burst of calls with the same
        token waits for the first one's answer instead of sending the API server one
        review each (200 concurrent uploads: 2 reviews, not 400)."""
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            result = await call()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del self._pending[key]

    async def authenticate(self, header: str | None) -> Identity:
        token = bearer_token(header)
        ident = self.api_keys.lookup(token)
        if ident is not None:
            return ident
        key = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        return await self._once(("token", key), lambda: self._review_token(token, key))

    async def _review_token(self, token: str, key: bytes) -> Identity:
        from .kubeclient import KubeError

        try:
            status = await self.kube.token_review(token)
        except KubeError as exc:
            raise AuthError(503, f"cannot check the token with the API server ({exc.message}): retry") from None
        if not status.get("authenticated"):
            raise AuthError(401, "the token was not accepted by the cluster (expired, revoked or not a "
                                 "Kubernetes token): get a new one, e.g. kubectl create token")
        user = status.get("user") or {}
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
        ident = Identity(user=user.get("username", ""), groups=tuple(user.get("groups") or ()),
                         uid=user.get("uid"), extra=extra)
        self._tokens.put(key, ident)
        return ident

    async def allowed(self, ident: Identity, attributes: dict[str, Any]) -> bool:
        key = (ident, tuple(sorted(attributes.items())))
        cached = self._access.get(key)
        if cached is not None:
            return cached
        return await self._once(("access", key), lambda: self._review_access(ident, attributes, key))

    async def _review_access(self, ident: Identity, attributes: dict[str, Any], key: Any) -> bool:
        from .kubeclient import KubeError

        try:
            status = await self.kube.access_review(ident.user, list(ident.groups), ident.uid,
                                                   {k: list(v) for k, v in ident.extra}, attributes)
        except KubeError as exc:
            raise AuthError(503, f"cannot check permissions with the API server ({exc.message}): retry") from None
        ok = bool(status.get("allowed")) and not status.get("denied")
        self._access.put(key, ok)
        return ok

    async def require(self, ident: Identity, attributes: dict[str, Any]) -> None:
        if not await self.allowed(ident, attributes):
            what = f"{attributes['verb']} {attributes['resource']}.{attributes['group']}"
            where = f" in namespace {attributes['namespace']}" if attributes.get("namespace") else ""
            raise AuthError(403, f"{ident.user} may not {what}{where}: ask for a RoleBinding that grants it")


def request_attributes(verb: str, namespace: str, name: str | None = None) -> dict[str, Any]:
    attrs = {"group": GROUP, "resource": PLURAL, "verb": verb, "namespace": namespace}
    if name:
        attrs["name"] = name
    return attrs
