"""The API server calls the gateway makes, on one pooled httpx client.

Why httpx and not kubernetes_asyncio: the gateway makes six calls (TokenReview,
SubjectAccessReview, create/get/delete/list/watch of TranscriptionRequests), and httpx is a
small, maintained async client that streams a watch natively; the generated async client
would add a large dependency for them. Credentials come from :mod:`kubescribe.kubeconfig`
(one precedence for the CLI, the operator and the gateway) through the official client's
config loader, which the operator image already carries, so every kubeconfig form
(client certificates, tokens, exec plugins) works as in kubectl, and a token that expires
(a rotated ServiceAccount token, an exec plugin's) is renewed by that loader.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from kubescribe import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubescribe import kubeconfig as kubeconfig_loader

#: How often a call asks the credentials' loader for the token again (it decides whether
#: that means a new one).
TOKEN_CHECK_SECONDS = 30.0


class KubeError(Exception):
    """The API server refused or failed a call: ``status`` is its HTTP code (0 when it
    could not be reached) and ``message`` its one-line explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclass
class Credentials:
    host: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    verify: bool = True
    #: The loaded ``kubernetes.client.Configuration``: its token is asked for again
    #: (:func:`kubescribe.kubeconfig.bearer_token`), so a rotated ServiceAccount token or
    #: an exec plugin's expired one is renewed, not kept.
    configuration: Any = None


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """The gateway's own credentials, found in the order every kubescribe process uses
    (:mod:`kubescribe.kubeconfig`). Raises :class:`~kubescribe.kubeconfig.NoCredentials`
    with one line when there are none."""
    cfg = kubeconfig_loader.load(kubeconfig=kubeconfig)
    return Credentials(host=cfg.host, ca_file=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file,
                       token=kubeconfig_loader.bearer_token(cfg), verify=cfg.verify_ssl, configuration=cfg)


def _tr_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


class KubeClient:
    """Async calls to the API server as the gateway's ServiceAccount."""

    def __init__(self, creds: Credentials, timeout: float = 30.0):
        if creds.verify:
            ctx = ssl.create_default_context(cafile=creds.ca_file) if creds.ca_file else ssl.create_default_context()
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if creds.cert_file and creds.key_file:
            ctx.load_cert_chain(creds.cert_file, creds.key_file)
        self.creds = creds
        self._token_read_at = time.monotonic()
        self._token = creds.token
        # Waiting calls share one watch per namespace (.waiter), but every call in flight
        # may hold a connection (reviews, create, get): the pool is sized for bursts.
        self.http = httpx.AsyncClient(
            base_url=creds.host, verify=ctx, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=100),
        )

    def _headers(self) -> dict[str, str]:
        if self.creds.configuration is not None and time.monotonic() - self._token_read_at > TOKEN_CHECK_SECONDS:
            # The loader's own check: a ServiceAccount token file read again each minute,
            # an exec plugin run again once its token has expired.
            self._token = kubeconfig_loader.bearer_token(self.creds.configuration)
            self._token_read_at = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = await self.http.request(method, path, headers=self._headers(), **kw)
        except httpx.HTTPError as exc:
            raise KubeError(0, f"API server unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message") or resp.reason_phrase
            except ValueError:
                message = resp.text[:200] or resp.reason_phrase
            raise KubeError(resp.status_code, message)
        if not resp.content or not resp.headers.get("content-type", "").startswith("application/json"):
            return {}
        return resp.json()

    # -- authentication and authorization ----------------------------------------------
    async def token_review(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        return (await self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=body)).get("status") or {}

    async def access_review(self, user: str, groups: list[str], uid: str | None, extra: dict[str, list[str]],
                            attributes: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {"user": user, "groups": groups, "resourceAttributes": attributes}
        if uid:
            spec["uid"] = uid
        if extra:
            spec["extra"] = extra
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return (await self._call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", json=body)).get("status") or {}

    # -- TranscriptionRequests ----------------------------------------------------------
    async def create_request(self, namespace: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
        return await self._call("POST", _tr_path(namespace), json=body)

    async def get_request(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call("GET", _tr_path(namespace, name))

    async def delete_request(self, namespace: str, name: str) -> None:
        await self._call("DELETE", _tr_path(namespace, name), json={"propagationPolicy": "Background"})

    async def list_requests(self, namespace: str) -> dict[str, Any]:
        return await self._call("GET", _tr_path(namespace))

    async def watch_events(self, namespace: str, resource_version: str,
                           timeout_seconds: int = 240) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) of every change of the namespace's requests from
        ``resource_version`` until the server ends the watch; an ``ERROR`` event (410 Gone:
        the version is too old) is yielded too, and the caller lists again. The gateway's
        one watch (:mod:`.waiter`)."""
        params = {"watch": "1", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        try:
            async with self.http.stream("GET", _tr_path(namespace), params=params, headers=self._headers(),
                                        timeout=httpx.Timeout(timeout_seconds + 30, connect=10.0)) as resp:
                if resp.status_code >= 400:
                    raise KubeError(resp.status_code, (await resp.aread()).decode(errors="replace")[:200])
                async for line in resp.aiter_lines():
                    if line:
                        event = json.loads(line)
                        yield event.get("type", ""), event.get("object") or {}
        except httpx.HTTPError as exc:
            raise KubeError(0, f"watch broken: {type(exc).__name__}: {exc}") from None

    async def ready(self) -> None:
        await self._call("GET", "/readyz")
