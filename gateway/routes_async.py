"""The async API: create a request and return at once (``202``), then read its state,
its events, its result and its analysis, or delete it; presigned upload URLs."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from kubescribe.cache_layout import analysis_key
from kubescribe.sinks import caller_key
from kubescribe.store import gone_message

from . import events, openai
from .context import Gateway, gateway_of
from .errors import HttpError
from .results import result_of, state_of
from .submit import submit
from .upload_stream import new_upload_id, upload_key

#: How long an events stream may stay open at least: the stream ends at this or the
#: synchronous wait (KUBESCRIBE_GATEWAY_WAIT_SECONDS), whichever is longer.
EVENTS_SECONDS = 3600.0


async def create_async(request: Request) -> Response:
    gw = gateway_of(request)
    ident, ns = await gw.caller(request, "create")
    task = "transcribe"
    with gw.slot(ident):
        if request.query_params.get("task") == "translate":
            task = "translate"
        obj, _, _ = await submit(gw, request, ident, ns, task=task, priority_field=True, callbacks=True)
    name = obj["metadata"]["name"]
    base = f"/v1/transcriptions/{name}"
    return JSONResponse({**state_of(obj), "status_url": base, "result_url": f"{base}/result",
                         "events_url": f"{base}/events"}, status_code=202, headers={"Location": base})


async def notification_key(request: Request) -> Response:
    """The caller's own key for verifying its callbacks (``callback_url``): derived from
    the install's key and the caller's identity, so it verifies this caller's callbacks
    only. The same right as creating a transcription."""
    gw = gateway_of(request)
    ident, _ = await gw.caller(request, "create")
    if not gw.settings.notify_signing_key:
        raise HttpError(501, "callbacks are off: the gateway has no install signing key (chart value "
                             "notifications.signingSecret)", code="callbacks_not_configured")
    return JSONResponse({"key": caller_key(gw.settings.notify_signing_key, ident.user),
                         "scheme": "Standard Webhooks v1 (HMAC-SHA256)", "caller": ident.user})


async def create_upload(request: Request) -> Response:
    """A presigned PUT URL for one new upload: the client sends the bytes straight to the
    bucket (no size limit of the gateway's process, no proxy timeouts in between), then
    creates the request with ``upload_id``. The same right as creating a transcription."""
    gw = gateway_of(request)
    await gw.caller(request, "create")
    objects = gw.store.objects
    if objects is None:
        raise HttpError(501, "object storage is not configured on this gateway (KUBESCRIBE_S3_BUCKET), and "
                             "presigned uploads need it: send the audio as `file` to /v1/transcriptions",
                        code="object_storage_not_configured")
    upload_id = new_upload_id()
    seconds = gw.settings.gateway_upload_url_seconds
    url = await asyncio.to_thread(objects.presign_put, upload_key(objects, upload_id), seconds)
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=seconds)
    return JSONResponse({"upload_id": upload_id, "upload_url": url, "method": "PUT",
                         "expires_at": expires.isoformat().replace("+00:00", "Z"),
                         "max_bytes": gw.settings.gateway_max_upload_bytes})


async def _read(request: Request, verb: str) -> tuple[Gateway, str, dict[str, Any]]:
    gw = gateway_of(request)
    name = request.path_params["name"]
    _, ns = await gw.caller(request, verb, name)
    return gw, ns, await gw.kube.get_request(ns, name)


async def get_async(request: Request) -> Response:
    _, _, obj = await _read(request, "get")
    return JSONResponse(state_of(obj))


async def delete_async(request: Request) -> Response:
    gw = gateway_of(request)
    name = request.path_params["name"]
    _, ns = await gw.caller(request, "delete", name)
    await gw.kube.delete_request(ns, name)
    return Response(status_code=204)


async def result_async(request: Request) -> Response:
    gw, _, obj = await _read(request, "get")
    fmt = request.query_params.get("format") or request.query_params.get("response_format") or "json"
    if fmt not in openai.RESPONSE_FORMATS:
        raise HttpError(400, f"format must be one of {', '.join(openai.RESPONSE_FORMATS)}", param="format")
    result = await result_of(gw, obj)
    words = bool((obj.get("spec") or {}).get("wordTimestamps"))
    body, media = openai.response(result, fmt, task=(obj.get("spec") or {}).get("task", "transcribe"), words=words)
    return Response(body, media_type=media)


async def events_async(request: Request) -> Response:
    """Server-Sent Events (:mod:`.events`) from the namespace's shared watch. The
    subscription comes before the read, so no change falls between them."""
    gw = gateway_of(request)
    name = request.path_params["name"]
    _, ns = await gw.caller(request, "get", name)
    sub = await gw.waiter.subscribe(ns, name)
    try:
        obj = await gw.kube.get_request(ns, name)
    except BaseException:
        sub.close()
        raise
    deadline = time.monotonic() + max(gw.settings.gateway_wait_seconds, EVENTS_SECONDS)
    body = events.stream(sub, obj, keepalive=gw.settings.gateway_sse_keepalive_seconds, deadline=deadline)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def analysis_async(request: Request) -> Response:
    gw, _, obj = await _read(request, "get")
    await result_of(gw, obj)  # refuses unfinished, failed and expired requests the same way
    rkey = obj["status"]["resultKey"]
    got = await asyncio.to_thread(gw.store.analysis, rkey, gw.settings.gateway_analysis_ttl_seconds)
    if got is None:
        raise HttpError(410, gone_message(obj["metadata"]["name"], gw.store), code="result_expired")
    doc, cached = got
    return JSONResponse({"name": obj["metadata"]["name"], **doc, "cached": cached},
                        headers={"X-Kubescribe-Analysis-Key": analysis_key(rkey)})
