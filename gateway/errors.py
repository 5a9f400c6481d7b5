"""Errors to answers: the one error type a handler raises for the client to read
(:class:`HttpError`), and what every other failure becomes (:func:`exception_handlers`),
always in OpenAI's error shape."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from kubescribe.objectstore import ObjectStoreError

from . import openai
from .auth import AuthError
from .kubeclient import KubeError

log = logging.getLogger("kubescribe.gateway")


class HttpError(Exception):
    """A refusal or failure the client reads: HTTP status, message, OpenAI code/param."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    kind = openai.ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(openai.error_body(message, kind, code, param), status_code=status, headers=headers)


async def on_http_error(request: Request, exc: HttpError) -> Response:
    response = error_response(exc.status, exc.message, exc.code, exc.param)
    if exc.status == 413:
        # Close rather than read the rest of a body that is refused: uvicorn would
        # otherwise drain it, however many gigabytes the client still has to send.
        response.headers["Connection"] = "close"
    return response


async def on_auth_error(request: Request, exc: AuthError) -> Response:
    return error_response(exc.status, exc.message, {401: "invalid_api_key", 403: "forbidden"}.get(exc.status))


async def on_kube_error(request: Request, exc: KubeError) -> Response:
    if exc.status == 404:
        return error_response(404, f"no such transcription: {exc.message}", "not_found")
    if exc.status in (400, 409, 422):
        return error_response(400, f"the API server refused the request: {exc.message}", "invalid_spec")
    if exc.status == 403 and "exceeded quota" in exc.message:
        return error_response(403, f"the namespace's ResourceQuota allows no more transcription requests "
                                   f"({exc.message})", "quota_exceeded")
    if exc.status == 403:
        return error_response(503, f"the gateway's own RBAC does not allow this ({exc.message}): check the "
                                   "chart's Role", "gateway_rbac")
    return error_response(503, f"the API server is not answering ({exc.message}): retry", "apiserver_unavailable")


async def on_redis_error(request: Request, exc: Exception) -> Response:
    return error_response(503, f"Redis is not answering ({type(exc).__name__}): retry", "redis_unavailable")


async def on_object_store_error(request: Request, exc: Exception) -> Response:
    final = isinstance(exc, ObjectStoreError) and exc.reason != "ObjectStoreUnavailable"
    return error_response(500 if final else 503, f"the object store refused a read: {exc}" if final
                          else f"the object store is not answering ({exc}): retry", "storage_unavailable")


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The caller went away before its body was read: nothing of it was kept (the upload
    was discarded); one line, counted as 499 (nginx's code for it); no one reads the answer."""
    log.info("%s %s: the client closed the connection before sending its whole body; nothing was kept",
             request.method, request.url.path)
    return error_response(499, "the client closed the connection before sending its whole body",
                          "client_closed_request")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"unexpected error ({type(exc).__name__}); the gateway log has the details",
                          "internal")


def exception_handlers() -> dict[Any, Any]:
    """Starlette's exception handlers, most specific first."""
    import redis.exceptions

    return {HttpError: on_http_error, AuthError: on_auth_error, KubeError: on_kube_error,
            redis.exceptions.RedisError: on_redis_error, ObjectStoreError: on_object_store_error,
            ClientDisconnect: on_client_disconnect, Exception: on_unexpected}
