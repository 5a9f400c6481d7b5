"""OpenAI's routes: ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` wait for
the request they create and answer in ``response_format``; ``/v1/models`` lists the
models the runners can load and the aliases. Unmodified OpenAI clients work against them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kubescribe.modeldir import choose

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
    """OpenAI's model list: every model the runners can load (``kubescribe.source``: bundled,
    volume, declared or how it was pulled) and every alias, with what it becomes for a
    transcription and for a translation."""
    gw = gateway_of(request)
    await gw.auth.authenticate(request.headers.get("authorization"))
    have = gw.models()
    data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "kubescribe",
             "kubescribe": {"source": m.source, "multilingual": m.multilingual}} for m in have]
    for alias, value in sorted(gw.settings.gateway_model_aliases.items()):
        names = [n.strip() for n in value.split(",") if n.strip()]
        becomes = {task: choose(names, have, task, "") for task in ("transcribe", "translate")}
        data.append({"id": alias, "object": "model", "created": 0, "owned_by": "kubescribe",
                     "kubescribe": {"alias": becomes}})
    return JSONResponse({"object": "list", "data": data})
