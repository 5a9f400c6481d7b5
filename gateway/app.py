"""The gateway's routes: one handler per endpoint, every refusal before anything is kept.

Order of checks on a call that creates work (README, "HTTP gateway"): authenticate (401)
-> namespace (400/403) -> SubjectAccessReview (403) -> per-identity concurrency (429)
-> upload size (413, counted as the body streams in) -> content sniffing on the file's
first bytes (400) -> fields (400) -> spec validation (400) -> audio to Redis ->
TranscriptionRequest. An upload above KUBESCRIBE_GATEWAY_STREAM_UPLOAD_BYTES, with an
object store, is written to the bucket while it arrives (:mod:`.form`, :mod:`.uploads`),
so the field and spec checks come after it: a refused call deletes that object. Either
way a refused call has kept nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route

from kubescribe import __version__
from kubescribe.metrics import GatewayMetrics
from kubescribe.models import TERMINAL_PHASES, InvalidSpec, parse_spec
from kubescribe.outcomes import reason as reason_of
from kubescribe.settings import GatewaySettings
from kubescribe.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError, classify
from kubescribe.store import Store, analysis_key, audio_key, decode_result, gone_message

from . import form, openai
from .auth import ADMIN_CLEAR, ADMIN_STATS, ApiKeys, AuthError, Authorizer, Identity, namespace_for, request_attributes
from .errors import HttpError
from .kubeclient import KubeClient, KubeError
from .sniff import HEAD_BYTES, sniff_audio
from .uploads import Audio, AudioStream, new_upload_id, upload_key
from .waiter import Waiter

log = logging.getLogger("kubescribe.gateway")

NAMESPACE_HEADER = "x-kubescribe-namespace"
CREATED_BY = {"app.kubernetes.io/created-by": "kubescribe-gateway"}
REQUESTED_BY = "kubescribe.io/requested-by"


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
    def slot(self, ident: Identity):
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

    # -- the caller ---------------------------------------------------------------------
    async def caller(self, request: Request, verb: str, name: str | None = None) -> tuple[Identity, str]:
        ident = await self.auth.authenticate(request.headers.get("authorization"))
        ns = namespace_for(ident, request.headers.get(NAMESPACE_HEADER), self.settings.gateway_default_namespace,
                           self.settings.gateway_namespaces)
        await self.auth.require(ident, request_attributes(verb, ns, name))
        return ident, ns

    # -- uploads ------------------------------------------------------------------------
    async def read_upload(self, request: Request) -> tuple[dict[str, Any], Audio | None]:
        """The form's fields and the audio, refused early when too large or not audio
        (:mod:`.form`): small uploads in memory for Redis, larger ones, with an object
        store, already streamed into it (:mod:`.uploads`). None: the form names a
        presigned ``upload_id`` instead."""
        conf = self.settings
        sink = AudioStream(self.store.objects, limit=conf.gateway_max_upload_bytes,
                           threshold=conf.gateway_stream_upload_bytes)
        return await form.read_upload(request, sink, conf.gateway_max_upload_bytes)

    async def presigned_audio(self, upload_id: str) -> Audio:
        """The object a client PUT to a presigned URL, checked like a form upload: it
        exists (400), fits the limit (413), is not empty and is audio (400). Its SHA-256
        is not known without reading it all: the runner computes it."""
        objects = self.store.objects
        if objects is None:
            raise HttpError(400, "upload_id needs object storage, which this gateway does not have: send "
                                 "the audio as `file`", param="upload_id")
        try:
            key = upload_key(objects, upload_id)
        except ValueError as exc:
            raise HttpError(400, str(exc), param="upload_id") from None
        limit = self.settings.gateway_max_upload_bytes
        try:
            size = await asyncio.to_thread(objects.size, key)
            if size > limit:
                raise form.too_large(limit)
            if size == 0:
                raise HttpError(400, "the uploaded file is empty", param="upload_id", code="empty_file")
            head = await asyncio.to_thread(_first_bytes, objects, key, HEAD_BYTES)
        except ObjectNotFound:
            raise HttpError(400, f"upload {upload_id} not found: PUT the file to upload_url first",
                            param="upload_id", code="upload_not_found") from None
        if sniff_audio(head) is None:
            raise HttpError(400, f"upload {upload_id} is not audio (no known audio or video container: wav, mp3, "
                                 "flac, ogg/opus, m4a/mp4, webm, ...)", param="upload_id", code="invalid_file_format")
        return Audio(size, "", bucket=objects.bucket, key=key)

    async def discard(self, audio: Audio) -> None:
        """Delete an object this call streamed (a refused create keeps nothing)."""
        assert self.store.objects is not None and audio.key
        try:
            await asyncio.to_thread(self.store.objects.delete, [audio.key])
        except ObjectStoreError as exc:
            log.warning("could not delete s3://%s/%s after a refused call: %s", audio.bucket, audio.key, exc)

    async def store_audio(self, data: bytes) -> tuple[str, str, bool]:
        """(key, sha256, newly written): content-addressed, so a second upload of the same
        audio only refreshes the TTL and a refused create deletes only what it wrote."""
        sha = hashlib.sha256(data).hexdigest()
        key = audio_key(sha)
        ttl = self.settings.gateway_audio_ttl_seconds
        created = await self.redis.set(key, data, ex=ttl, nx=True)
        if not created:
            await self.redis.expire(key, ttl)
        return key, sha, bool(created)

    async def submit(self, request: Request, ident: Identity, ns: str, *, task: str, priority_field: bool,
                     wait: bool = False, timing: Timing | None = None) -> tuple[dict[str, Any], str, bool]:
        """Check the upload, store it and create the request: (object, format, words).

        With ``wait``, return the request once it is terminal (504 at the deadline).
        """
        timing = timing or Timing()
        fields, audio = await self.read_upload(request)
        # An object this call streamed is its to delete when the call is refused; one a
        # client PUT to a presigned URL stays, so the client can retry with other fields.
        streamed = audio if audio is not None and audio.stored else None
        try:
            if audio is None:
                audio = await self.presigned_audio(str(fields[form.UPLOAD_FIELD]))
            timing.mark("upload")
            priority = 0
            if priority_field and fields.get("priority") not in (None, ""):
                try:
                    priority = int(fields["priority"])
                except ValueError:
                    raise HttpError(400, "priority must be an integer", param="priority") from None
            if audio.stored:
                source: dict[str, Any] = {"s3": {"bucket": audio.bucket, "key": audio.key}}
                if audio.sha256:
                    source["sha256"] = audio.sha256
            else:
                source = {"redisKey": audio_key(audio.sha256), "sha256": audio.sha256}
            try:
                spec, fmt = openai.build_spec(fields, task=task, aliases=self.settings.gateway_model_aliases,
                                              audio=source, priority=priority)
                parse_spec(spec)
            except openai.BadField as exc:
                raise HttpError(400, str(exc), param=exc.param) from None
            except InvalidSpec as exc:
                raise HttpError(400, str(exc), code="invalid_spec") from None
            # The gateway names the request (rather than generateName) so that a waiting call
            # is registered with the namespace's watch before the request exists. A presigned
            # upload names it after its id: the operator deletes an upload with the request
            # that names it, so a second request from the same upload (a retry after a
            # timeout) must be refused, and the API server refuses a name twice.
            name = f"gateway-{fields[form.UPLOAD_FIELD]}" if streamed is None and audio.stored \
                else f"gateway-{secrets.token_hex(6)}"
            metadata = {"name": name, "labels": dict(CREATED_BY), "annotations": {REQUESTED_BY: ident.user[:253]}}
            deadline = time.monotonic() + self.settings.gateway_wait_seconds
            done = await self.waiter.register(ns, name) if wait else None
            if audio.data is None:  # already in the object store
                try:
                    created_obj = await self.kube.create_request(ns, metadata, spec)
                except BaseException as exc:
                    if done is not None:
                        self.waiter.forget(ns, name)
                    if streamed is None and isinstance(exc, KubeError) and exc.status == 409:
                        raise HttpError(409, f"upload {fields[form.UPLOAD_FIELD]} is already the audio of {name}: "
                                             f"GET /v1/transcriptions/{name}, or upload again for another request",
                                        param="upload_id", code="upload_used") from None
                    raise
                timing.mark("create")
            else:
                created_obj = await self._store_and_create(audio.data, ns, metadata, spec, name, done)
                timing.mark("store+create")
        except BaseException:
            if streamed is not None:
                await self.discard(streamed)
            raise
        obj = created_obj
        self.metrics.upload_bytes.observe(audio.size)
        if done is not None:
            final = await self.waiter.wait(ns, name, done, deadline)
            timing.mark("wait")
            if final is None:
                raise HttpError(504, f"{name} did not finish within {self.settings.gateway_wait_seconds:.0f}s; it "
                                     f"keeps running: GET /v1/transcriptions/{name}", code="timeout")
            obj = final
        return obj, fmt, spec["wordTimestamps"]

    async def _store_and_create(self, data: bytes, ns: str, metadata: dict[str, Any], spec: dict[str, Any],
                                name: str, done: Any) -> dict[str, Any]:
        """Audio to Redis and the request, together: the operator needs only the hash (in
        the spec) to answer from the cache, and a runner reads the audio seconds later,
        long after the write. A refused create still deletes what this call wrote."""
        stored, created_obj = await asyncio.gather(self.store_audio(data), self.kube.create_request(ns, metadata, spec),
                                                   return_exceptions=True)
        if isinstance(created_obj, BaseException) or isinstance(stored, BaseException):
            if done is not None:
                self.waiter.forget(ns, name)
            if not isinstance(stored, BaseException) and stored[2]:
                await self.redis.delete(stored[0])
            if not isinstance(created_obj, BaseException):  # Redis failed: take the request back
                with contextlib.suppress(KubeError):
                    await self.kube.delete_request(ns, name)
                raise stored
            raise created_obj
        return created_obj

    async def result_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The transcript of a finished request, or the HttpError its failure maps to."""
        status = obj.get("status") or {}
        name = obj["metadata"]["name"]
        phase = status.get("phase") or "Pending"
        if phase == "Failed":
            why = status.get("reason") or "Failed"
            final = reason_of(why).final if why else True
            raise HttpError(400 if final else 503, f"{name} failed: {why}: {status.get('message') or ''}".rstrip(": "),
                            code=why)
        if phase != "Succeeded":
            raise HttpError(409, f"{name} is not finished (phase {phase})", code="not_finished")
        blob = await self.redis.get(status["resultKey"])
        if blob is not None:
            return decode_result(blob)
        if self.store.objects is not None:  # the system of record: read it there, warm the cache
            result = await asyncio.to_thread(self.store.read_result_key, status["resultKey"])
            if result is not None:
                return result
        raise HttpError(410, gone_message(name, self.store), code="result_expired")


def _first_bytes(objects: ObjectStore, key: str, n: int) -> bytes:
    """The first ``n`` bytes of an object (a ranged GET), for sniffing."""
    try:
        resp = objects.client.get_object(Bucket=objects.bucket, Key=key, Range=f"bytes=0-{n - 1}")
        return resp["Body"].read(n)
    except Exception as exc:
        raise classify(exc, f"GET s3://{objects.bucket}/{key}") from exc


def state_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The public state of a request (GET /v1/transcriptions/{name}, SSE events)."""
    status = obj.get("status") or {}
    meta = obj["metadata"]
    out: dict[str, Any] = {
        "name": meta["name"], "namespace": meta.get("namespace"), "phase": status.get("phase") or "Pending",
        "reason": status.get("reason"), "message": status.get("message"),
        "queue_position": status.get("queuePosition"), "cached": status.get("cached"),
        "language": status.get("language"), "audio_duration_seconds": status.get("audioDurationSeconds"),
        "created_at": meta.get("creationTimestamp"), "completed_at": status.get("completedAt"),
    }
    if status.get("progress") is not None:  # written by the runner when it reports progress
        out["progress"] = status["progress"]
    return {k: v for k, v in out.items() if v is not None}


def _gw(request: Request) -> Gateway:
    return request.app.state.gateway


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    kind = openai.ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(openai.error_body(message, kind, code, param), status_code=status, headers=headers)


# -- OpenAI-compatible ---------------------------------------------------------------------
async def _sync_transcription(request: Request, task: str) -> Response:
    gw = _gw(request)
    timing = Timing()
    ident, ns = await gw.caller(request, "create")
    timing.mark("auth")
    with gw.slot(ident):
        obj, fmt, words = await gw.submit(request, ident, ns, task=task, priority_field=False, wait=True,
                                          timing=timing)
        result = await gw.result_of(obj)
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
    gw = _gw(request)
    await gw.auth.authenticate(request.headers.get("authorization"))
    names = sorted(set(gw.settings.gateway_model_aliases) | set(gw.settings.gateway_model_aliases.values()))
    return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "kubescribe"} for n in names]})


# -- async API ------------------------------------------------------------------------------
async def create_async(request: Request) -> Response:
    gw = _gw(request)
    ident, ns = await gw.caller(request, "create")
    task = "transcribe"
    with gw.slot(ident):
        if request.query_params.get("task") == "translate":
            task = "translate"
        obj, _, _ = await gw.submit(request, ident, ns, task=task, priority_field=True)
    name = obj["metadata"]["name"]
    base = f"/v1/transcriptions/{name}"
    return JSONResponse({**state_of(obj), "status_url": base, "result_url": f"{base}/result",
                         "events_url": f"{base}/events"}, status_code=202, headers={"Location": base})


async def create_upload(request: Request) -> Response:
    """A presigned PUT URL for one new upload: the client sends the bytes straight to the
    bucket (no size limit of the gateway's process, no proxy timeouts in between), then
    creates the request with ``upload_id``. The same right as creating a transcription."""
    gw = _gw(request)
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
    gw = _gw(request)
    name = request.path_params["name"]
    _, ns = await gw.caller(request, verb, name)
    return gw, ns, await gw.kube.get_request(ns, name)


async def get_async(request: Request) -> Response:
    _, _, obj = await _read(request, "get")
    return JSONResponse(state_of(obj))


async def delete_async(request: Request) -> Response:
    gw = _gw(request)
    name = request.path_params["name"]
    _, ns = await gw.caller(request, "delete", name)
    await gw.kube.delete_request(ns, name)
    return Response(status_code=204)


async def result_async(request: Request) -> Response:
    gw, _, obj = await _read(request, "get")
    fmt = request.query_params.get("format") or request.query_params.get("response_format") or "json"
    if fmt not in openai.RESPONSE_FORMATS:
        raise HttpError(400, f"format must be one of {', '.join(openai.RESPONSE_FORMATS)}", param="format")
    result = await gw.result_of(obj)
    words = bool((obj.get("spec") or {}).get("wordTimestamps"))
    body, media = openai.response(result, fmt, task=(obj.get("spec") or {}).get("task", "transcribe"), words=words)
    return Response(body, media_type=media)


async def events_async(request: Request) -> Response:
    gw, ns, obj = await _read(request, "get")

    async def stream() -> AsyncIterator[bytes]:
        last = None
        deadline = time.monotonic() + max(gw.settings.gateway_wait_seconds, 3600)
        try:
            async for current in gw.kube.watch_request(ns, obj["metadata"]["name"], obj, deadline):
                state = state_of(current)
                terminal = state["phase"] in TERMINAL_PHASES
                if state == last and not terminal:
                    continue
                last = state
                kind = "done" if terminal else "status"
                yield f"event: {kind}\ndata: {json.dumps(state)}\n\n".encode()
                if terminal:
                    return
        except KubeError as exc:
            body = openai.error_body(exc.message, "not_found_error" if exc.status == 404 else "server_error")
            yield f"event: error\ndata: {json.dumps(body)}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def analysis_async(request: Request) -> Response:
    gw, _, obj = await _read(request, "get")
    await gw.result_of(obj)  # refuses unfinished, failed and expired requests the same way
    rkey = obj["status"]["resultKey"]
    got = await asyncio.to_thread(gw.store.analysis, rkey, gw.settings.gateway_analysis_ttl_seconds)
    if got is None:
        raise HttpError(410, gone_message(obj["metadata"]["name"], gw.store), code="result_expired")
    doc, cached = got
    return JSONResponse({"name": obj["metadata"]["name"], **doc, "cached": cached},
                        headers={"X-Kubescribe-Analysis-Key": analysis_key(rkey)})


# -- inherited admin and health ---------------------------------------------------------------
async def admin_stats(request: Request) -> Response:
    gw = _gw(request)
    ident = await gw.auth.authenticate(request.headers.get("authorization"))
    await gw.auth.require(ident, ADMIN_STATS)
    s = await asyncio.to_thread(gw.store.stats)
    return JSONResponse({"hits": s.hits, "misses": s.misses, "hit_rate": round(s.hit_rate, 4), "results": s.results,
                         "audio": s.audio, "clears": s.clears})


async def admin_clear(request: Request) -> Response:
    gw = _gw(request)
    ident = await gw.auth.authenticate(request.headers.get("authorization"))
    await gw.auth.require(ident, ADMIN_CLEAR)
    audio = request.query_params.get("audio", "false").lower() in ("1", "true", "yes")
    deleted = await asyncio.to_thread(gw.store.clear, audio)
    log.info("cache cleared by %s: %d keys (audio=%s)", ident.user, deleted, audio)
    return JSONResponse({"deleted": deleted, "audio": audio})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def readyz(request: Request) -> Response:
    gw = _gw(request)
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


# -- errors and metrics --------------------------------------------------------------------
async def _on_http_error(request: Request, exc: HttpError) -> Response:
    response = _error(exc.status, exc.message, exc.code, exc.param)
    if exc.status == 413:
        # Close rather than read the rest of a body that is refused: uvicorn would
        # otherwise drain it, however many gigabytes the client still has to send.
        response.headers["Connection"] = "close"
    return response


async def _on_auth_error(request: Request, exc: AuthError) -> Response:
    return _error(exc.status, exc.message, {401: "invalid_api_key", 403: "forbidden"}.get(exc.status))


async def _on_kube_error(request: Request, exc: KubeError) -> Response:
    if exc.status == 404:
        return _error(404, f"no such transcription: {exc.message}", "not_found")
    if exc.status in (400, 409, 422):
        return _error(400, f"the API server refused the request: {exc.message}", "invalid_spec")
    if exc.status == 403 and "exceeded quota" in exc.message:
        return _error(403, f"the namespace's ResourceQuota allows no more transcription requests ({exc.message})",
                      "quota_exceeded")
    if exc.status == 403:
        return _error(503, f"the gateway's own RBAC does not allow this ({exc.message}): check the chart's Role",
                      "gateway_rbac")
    return _error(503, f"the API server is not answering ({exc.message}): retry", "apiserver_unavailable")


async def _on_redis_error(request: Request, exc: Exception) -> Response:
    return _error(503, f"Redis is not answering ({type(exc).__name__}): retry", "redis_unavailable")


async def _on_object_store_error(request: Request, exc: Exception) -> Response:
    final = isinstance(exc, ObjectStoreError) and exc.reason != "ObjectStoreUnavailable"
    return _error(500 if final else 503, f"the object store refused a read: {exc}" if final
                  else f"the object store is not answering ({exc}): retry", "storage_unavailable")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, f"unexpected error ({type(exc).__name__}); the gateway log has the details", "internal")


class MetricsMiddleware:
    """Counts every call by route template (not raw path: names would explode the label
    set) and code, and times it; an SSE call is timed to the end of its stream."""

    def __init__(self, app, metrics: GatewayMetrics, routes: list[Route]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self._route(scope)
        code = 500
        t0 = time.perf_counter()

        async def send_wrapper(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests_total.labels(route=route, method=scope["method"], code=str(code)).inc()
            self.metrics.request_duration_seconds.labels(route=route).observe(time.perf_counter() - t0)


ROUTES = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/transcriptions", create_async, methods=["POST"]),
    Route("/v1/uploads", create_upload, methods=["POST"]),
    Route("/v1/transcriptions/{name}", get_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}", delete_async, methods=["DELETE"]),
    Route("/v1/transcriptions/{name}/result", result_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}/events", events_async, methods=["GET"]),
    Route("/v1/transcriptions/{name}/analysis", analysis_async, methods=["GET"]),
    Route("/api/admin/cache/stats", admin_stats, methods=["GET"]),
    Route("/api/admin/cache/clear", admin_clear, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]


def build_app(gateway: Gateway) -> Starlette:
    import redis.exceptions

    handlers: dict[Any, Any] = {
        HttpError: _on_http_error, AuthError: _on_auth_error, KubeError: _on_kube_error,
        redis.exceptions.RedisError: _on_redis_error, ObjectStoreError: _on_object_store_error,
        Exception: _on_unexpected,
    }
    app = Starlette(routes=ROUTES, exception_handlers=handlers)
    app.state.gateway = gateway
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics, routes=ROUTES)
    return app


