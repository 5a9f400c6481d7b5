"""The inherited admin routes (cache statistics and clearing, behind verbs on the
virtual resource ``cache.kubescribe.io``) and the health probes."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kubescribe import __version__

from .auth import ADMIN_CLEAR, ADMIN_STATS
from .context import gateway_of

log = logging.getLogger("kubescribe.gateway")


async def admin_stats(request: Request) -> Response:
    """The shared cache's counts (:meth:`CacheStats.document`, the shape ``kubescribe
    cache stats`` prints too)."""
    gw = gateway_of(request)
    ident = await gw.auth.authenticate(request.headers.get("authorization"))
    await gw.auth.require(ident, ADMIN_STATS)
    s = await asyncio.to_thread(gw.store.stats)
    return JSONResponse(s.document())


async def admin_clear(request: Request) -> Response:
    gw = gateway_of(request)
    ident = await gw.auth.authenticate(request.headers.get("authorization"))
    await gw.auth.require(ident, ADMIN_CLEAR)
    audio = request.query_params.get("audio", "false").lower() in ("1", "true", "yes")
    deleted = await asyncio.to_thread(gw.store.clear, audio)
    log.info("cache cleared by %s: %d keys (audio=%s)", ident.user, deleted, audio)
    return JSONResponse({"deleted": deleted, "audio": audio})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def readyz(request: Request) -> Response:
    gw = gateway_of(request)
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(gw.redis.ping(), 5)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"{type(exc).__name__}: {exc}"
    try:
        await asyncio.wait_for(gw.kube.ready(), 5)
        checks["apiserver"] = "ok"
    except Exception as exc:
        checks["apiserver"] = f"{getattr(exc, 'message', None) or type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)
