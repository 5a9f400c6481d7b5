"""OpenAI's routes: ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` wait for
the request they create and answer in ``response_format``; ``/v1/models`` lists the
aliases. Unmodified OpenAI clients work against them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import openai
from .context import Timing, gateway_of
from .results import result_of
from .submit import submit


async def _sync_transcription(request: Request, task: str) -> Response:
    gw = gateway_of(request)
    timing = Timing()
    ident, ns = await gw.caller(request, "create")
    timing.mark("auth")
    with gw.slot(ident):
        obj, fmt, words = await submit(gw, request, ident, ns, task=task, priority_field=False, wait=True,
                                       timing=timing)
        result = await result_of(gw, obj)
    body, media = openai.response(result, fmt, task=task, words=words)
    timing.mark("result")
    return Response(body, media_type=media, headers={"X-Kubescribe-Request": obj["metadata"]["name"],
                                                     "X-Kubescribe-Cached": str(bool(obj["status"].get("cached"))).lower(),
                                                     "Server-Timing": timing.header()})


async def transcriptions(request: Request) -> Response:
    return await _sync_transcription(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _sync_transcription(request, "translate")


async def models(request: Request) -> Response:
    gw = gateway_of(request)
    await gw.auth.authenticate(request.headers.get("authorization"))
    names = sorted(set(gw.settings.gateway_model_aliases) | set(gw.settings.gateway_model_aliases.values()))
    return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "kubescribe"} for n in names]})
