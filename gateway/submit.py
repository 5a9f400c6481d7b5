"""A call that creates work: the upload checked, the audio kept, the request created,
every refusal before anything is kept.

Order of checks (README, "HTTP gateway"): authenticate (401) -> namespace (400/403) ->
SubjectAccessReview (403) -> per-identity concurrency (429) -> upload size (413, counted
as the body streams in) -> content sniffing on the file's first bytes (400) -> fields
(400) -> spec validation (400) -> audio to Redis -> TranscriptionRequest. The first four
are the routes' (:meth:`.context.Gateway.caller`, :meth:`.context.Gateway.slot`); the
rest are here. An upload above KUBESCRIBE_GATEWAY_STREAM_UPLOAD_BYTES, with an object
store, is written to the bucket while it arrives (:mod:`.form`, :mod:`.uploads`), so the
field and spec checks come after it: a refused call deletes that object. Either way a
refused call has kept nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from typing import Any

from starlette.requests import Request

from kubescribe.models import InvalidSpec, parse_spec
from kubescribe.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError, classify
from kubescribe.cache_layout import audio_key

from . import form, openai
from .auth import Identity
from .context import Gateway, Timing
from .errors import HttpError
from .kubeclient import KubeError
from .sniff import HEAD_BYTES, sniff_audio
from .upload_stream import Audio, AudioStream, upload_key
from .waiter import Subscription

log = logging.getLogger("kubescribe.gateway")

CREATED_BY = {"app.kubernetes.io/created-by": "kubescribe-gateway"}
REQUESTED_BY = "kubescribe.io/requested-by"


async def read_upload(gw: Gateway, request: Request) -> tuple[dict[str, Any], Audio | None]:
    """The form's fields and the audio, refused early when too large or not audio
    (:mod:`.form`): small uploads in memory for Redis, larger ones, with an object store,
    already streamed into it (:mod:`.uploads`). None: the form names a presigned
    ``upload_id`` instead."""
    conf = gw.settings
    sink = AudioStream(gw.store.objects, limit=conf.gateway_max_upload_bytes, threshold=conf.gateway_stream_upload_bytes,
                       single_put=conf.gateway_single_put_bytes)
    return await form.read_upload(request, sink, conf.gateway_max_upload_bytes)


async def presigned_audio(gw: Gateway, upload_id: str) -> Audio:
    """The object a client PUT to a presigned URL, checked like a form upload: it exists
    (400), fits the limit (413), is not empty and is audio (400). Its SHA-256 is not known
    without reading it all: the runner computes it."""
    objects = gw.store.objects
    if objects is None:
        raise HttpError(400, "upload_id needs object storage, which this gateway does not have: send "
                             "the audio as `file`", param="upload_id")
    try:
        key = upload_key(objects, upload_id)
    except ValueError as exc:
        raise HttpError(400, str(exc), param="upload_id") from None
    limit = gw.settings.gateway_max_upload_bytes
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


def _first_bytes(objects: ObjectStore, key: str, n: int) -> bytes:
    """The first ``n`` bytes of an object (a ranged GET), for sniffing."""
    try:
        resp = objects.client.get_object(Bucket=objects.bucket, Key=key, Range=f"bytes=0-{n - 1}")
        return resp["Body"].read(n)
    except Exception as exc:
        raise classify(exc, f"GET s3://{objects.bucket}/{key}") from exc


async def discard(gw: Gateway, audio: Audio) -> None:
    """Delete an object this call streamed (a refused create keeps nothing)."""
    assert gw.store.objects is not None and audio.key
    try:
        await asyncio.to_thread(gw.store.objects.delete, [audio.key])
    except ObjectStoreError as exc:
        log.warning("could not delete s3://%s/%s after a refused call: %s", audio.bucket, audio.key, exc)


async def store_audio(gw: Gateway, data: bytes) -> tuple[str, str, bool]:
    """(key, sha256, newly written): content-addressed, so a second upload of the same
    audio only refreshes the TTL and a refused create deletes only what it wrote."""
    sha = hashlib.sha256(data).hexdigest()
    key = audio_key(sha)
    ttl = gw.settings.gateway_audio_ttl_seconds
    created = await gw.redis.set(key, data, ex=ttl, nx=True)
    if not created:
        await gw.redis.expire(key, ttl)
    return key, sha, bool(created)


def _priority(fields: dict[str, Any], allowed: bool) -> int:
    if not allowed or fields.get("priority") in (None, ""):
        return 0
    try:
        return int(fields["priority"])
    except ValueError:
        raise HttpError(400, "priority must be an integer", param="priority") from None


#: The async create's form field for a completion callback (spec.notify, signed with the
#: caller's key: kubescribe.sinks).
CALLBACK_FIELD = "callback_url"


def _spec(gw: Gateway, fields: dict[str, Any], audio: Audio, task: str, priority: int,
          caller: str | None = None) -> tuple[dict[str, Any], str]:
    """The request's spec and the response format, checked as the API server will (400).
    With ``caller``, a ``callback_url`` field becomes a sink signed with that caller's key."""
    if audio.stored:
        source: dict[str, Any] = {"s3": {"bucket": audio.bucket, "key": audio.key}}
        if audio.sha256:
            source["sha256"] = audio.sha256
    else:
        source = {"redisKey": audio_key(audio.sha256), "sha256": audio.sha256}
    try:
        spec, fmt = openai.build_spec(fields, task=task, aliases=gw.settings.gateway_model_aliases,
                                      audio=source, priority=priority, models=gw.models())
        callback = str(fields.get(CALLBACK_FIELD) or "") if caller is not None else ""
        if callback:
            if not gw.settings.notify_signing_key:
                raise HttpError(400, "callback_url needs the install's signing key, which this gateway lacks "
                                     "(chart value notifications.signingSecret)", param=CALLBACK_FIELD)
            spec["notify"] = [{"url": callback, "caller": caller}]
        parse_spec(spec)
    except openai.BadField as exc:
        raise HttpError(400, str(exc), param=exc.param) from None
    except InvalidSpec as exc:
        raise HttpError(400, str(exc), code="invalid_spec") from None
    return spec, fmt


async def submit(gw: Gateway, request: Request, ident: Identity, ns: str, *, task: str, priority_field: bool,
                 wait: bool = False, timing: Timing | None = None,
                 callbacks: bool = False) -> tuple[dict[str, Any], str, bool]:
    """Check the upload, store it and create the request: (object, format, words).

    With ``wait``, return the request once it is terminal (504 at the deadline). With
    ``callbacks``, a ``callback_url`` field is delivered the finished request's event.
    """
    timing = timing or Timing()
    fields, audio = await read_upload(gw, request)
    # An object this call streamed is its to delete when the call is refused; one a
    # client PUT to a presigned URL stays, so the client can retry with other fields.
    streamed = audio if audio is not None and audio.stored else None
    sub: Subscription | None = None
    try:
        if audio is None:
            audio = await presigned_audio(gw, str(fields[form.UPLOAD_FIELD]))
        timing.mark("upload")
        spec, fmt = _spec(gw, fields, audio, task, _priority(fields, priority_field),
                          caller=ident.user if callbacks else None)
        # The gateway names the request (rather than generateName) so that a waiting call
        # subscribes to the namespace's watch before the request exists. A presigned
        # upload names it after its id: the operator deletes an upload with the request
        # that names it, so a second request from the same upload (a retry after a
        # timeout) must be refused, and the API server refuses a name twice.
        name = f"gateway-{fields[form.UPLOAD_FIELD]}" if streamed is None and audio.stored \
            else f"gateway-{secrets.token_hex(6)}"
        metadata = {"name": name, "labels": dict(CREATED_BY), "annotations": {REQUESTED_BY: ident.user[:253]}}
        deadline = time.monotonic() + gw.settings.gateway_wait_seconds
        sub = await gw.waiter.subscribe(ns, name) if wait else None
        if audio.data is None:  # already in the object store
            try:
                obj = await gw.kube.create_request(ns, metadata, spec)
            except KubeError as exc:
                if streamed is None and exc.status == 409:
                    raise HttpError(409, f"upload {fields[form.UPLOAD_FIELD]} is already the audio of {name}: "
                                         f"GET /v1/transcriptions/{name}, or upload again for another request",
                                    param="upload_id", code="upload_used") from None
                raise
            timing.mark("create")
        else:
            obj = await _store_and_create(gw, audio.data, ns, metadata, spec)
            timing.mark("store+create")
    except BaseException:
        if sub is not None:
            sub.close()
        if streamed is not None:
            await discard(gw, streamed)
        raise
    gw.metrics.upload_bytes.observe(audio.size)
    if sub is not None:
        try:
            final = await sub.terminal(deadline)
        finally:
            sub.close()
        timing.mark("wait")
        if final is None:
            raise HttpError(504, f"{name} did not finish within {gw.settings.gateway_wait_seconds:.0f}s; it "
                                 f"keeps running: GET /v1/transcriptions/{name}", code="timeout")
        obj = final
    return obj, fmt, spec["wordTimestamps"]


async def _store_and_create(gw: Gateway, data: bytes, ns: str, metadata: dict[str, Any],
                            spec: dict[str, Any]) -> dict[str, Any]:
    """Audio to Redis and the request, together: the operator needs only the hash (in the
    spec) to answer from the cache, and a runner reads the audio seconds later, long after
    the write. A refused create still deletes what this call wrote."""
    stored, created = await asyncio.gather(store_audio(gw, data), gw.kube.create_request(ns, metadata, spec),
                                           return_exceptions=True)
    if isinstance(created, BaseException) or isinstance(stored, BaseException):
        if not isinstance(stored, BaseException) and stored[2]:
            await gw.redis.delete(stored[0])
        if not isinstance(created, BaseException):  # Redis failed: take the request back
            with contextlib.suppress(KubeError):
                await gw.kube.delete_request(ns, metadata["name"])
            raise stored
        raise created
    return created
