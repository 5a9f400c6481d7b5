"""Buckets that requests name: audio read from ``spec.audio.s3`` (or an ``s3://`` audio
URL, the same thing: ``AudioSource.s3_object``) and transcript files written to
``spec.output.s3``.

The runner reaches them with its own object store client and credentials: the install's
store when it keeps results in a bucket, else a client with no bucket of its own on the
same endpoint (``ObjectStore.for_requests``), because reading a user's bucket needs a
client even when results live in Redis only. So a named bucket must be on the runner's
endpoint (KUBESCRIBE_S3_ENDPOINT, or AWS S3), and the runner's credentials need
s3:GetObject on the audio and s3:PutObject under the output prefix.
"""

from __future__ import annotations

import threading

from kubescribe.models import S3Object, TranscriptionSpec
from kubescribe.objectstore import CONTENT_TYPES, ObjectStore
from kubescribe.render import render
from kubescribe.settings import ObjectStoreSettings

from .objectfile import ObjectFile, TooLarge

__all__ = ["ObjectFile", "TooLarge", "client", "stream_audio", "write_outputs"]

_clients: dict[str, ObjectStore] = {}
_clients_lock = threading.Lock()


def client(install: ObjectStore | None, settings: ObjectStoreSettings | None = None) -> ObjectStore:
    """The install's object store, or a client for requests' buckets made from
    ``settings`` (the environment by default) once per process and kept: a pooled runner
    serves many requests, and a boto3 client costs tens of milliseconds to make."""
    if install is not None:
        return install
    settings = settings or ObjectStoreSettings()
    ident = settings.model_dump_json()
    with _clients_lock:
        if ident not in _clients:
            _clients[ident] = ObjectStore.for_requests(settings)
        return _clients[ident]


def stream_audio(objects: ObjectStore, obj: S3Object, limit: int) -> ObjectFile:
    """The object as a file the decoder streams, at most ``limit`` bytes long.

    HEAD first, so an object over the limit is refused before a byte is downloaded; the
    first read checks the size again (the object may be replaced in between) and pins
    the version it reads (:class:`~.objectfile.ObjectFile`). Raises ObjectNotFound,
    ObjectStoreError or :class:`TooLarge`.
    """
    size = objects.size(obj.key, bucket=obj.bucket)
    if size > limit:
        raise TooLarge(f"{obj} is {size} bytes, over the {limit}-byte limit (KUBESCRIBE_MAX_AUDIO_BYTES)")
    return ObjectFile(objects.client, obj, size, limit)


def write_outputs(objects: ObjectStore, spec: TranscriptionSpec, namespace: str, name: str,
                  result: dict) -> list[str]:
    """Write json and every format of ``spec.formats`` to ``spec.output.s3`` (names from
    ``OutputSpec.keys``); returns their s3:// URLs, json first. Raises ObjectStoreError.

    Rewriting is harmless: the names are fixed by the request, so a retried runner or a
    cache hit after a failed attempt overwrites the same objects with the same bytes.
    """
    assert spec.output is not None
    bucket = spec.output.s3.bucket
    urls = []
    for fmt, key in spec.output.keys(namespace, name, list(spec.formats)).items():
        objects.put(key, render(result, fmt).encode(), content_type=CONTENT_TYPES[fmt], bucket=bucket)
        urls.append(str(S3Object(bucket=bucket, key=key)))
    return urls
