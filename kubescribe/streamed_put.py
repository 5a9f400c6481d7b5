"""One PUT of an object whose length is known before its first byte, its bytes sent as
they come: the gateway's uploads when the form gives the file's length
(gateway.upload_stream) and ``kubescribe submit``'s files (kubescribe.uploads). The
server assembles no parts, which on versitygw costs 1.5x the CPU per byte of one PUT.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import struct
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kubescribe.objectstore import ObjectStore, ObjectStoreError, classify

log = logging.getLogger("kubescribe.uploads")

_MIB = 1024 * 1024
#: Tries of one PUT (a part, or a file's from its start), and how long its presigned URL
#: lasts (a part takes seconds).
PUT_ATTEMPTS = 3
PUT_URL_SECONDS = 900


def s3_error(status: int, body: bytes) -> dict[str, Any]:
    """An S3 error document (``<Error><Code>..``) as botocore's error response."""
    import xml.etree.ElementTree as ET

    code, message = str(status), ""
    try:
        root = ET.fromstring(body or b"<Error/>")
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    except ET.ParseError:
        message = body[:200].decode(errors="replace")
    return {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


#: S3's largest single PUT: a longer object must be sent in parts.
SINGLE_PUT_MAX = 5 * 1024 ** 3


_put_sessions: weakref.WeakKeyDictionary[ObjectStore, Any] = weakref.WeakKeyDictionary()


def put_session(objects: ObjectStore) -> Any:
    """An HTTP session like the store's client's own (CA bundle, proxies, timeouts, client
    certificate) whose connections are reset when closed (SO_LINGER 0), for PUTs fed as
    their bytes arrive (:func:`put_stream`). Such a PUT, broken off, must not end in an
    orderly close: versitygw 1.8.0 takes that as the body's end and stores the object cut
    short (answering 200; AWS answers IncompleteBody); a reset it drops. One per store."""
    session = _put_sessions.get(objects)
    if session is None:
        from botocore.httpsession import URLLib3Session

        config, own = objects.client.meta.config, objects.client._endpoint.http_session
        session = _put_sessions[objects] = URLLib3Session(
            verify=own._verify, proxies=config.proxies, timeout=(config.connect_timeout, config.read_timeout),
            max_pool_connections=config.max_pool_connections, client_cert=config.client_cert,
            proxies_config=config.proxies_config,
            socket_options=[*own._socket_options, (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))])
    return session


def put_stream(objects: ObjectStore, key: str, length: int, body: Iterable[bytes],
               content_type: str = "application/octet-stream") -> None:
    """One PUT of exactly ``length`` bytes, taken from ``body`` as they come, to a
    presigned URL, through :func:`put_session` (the client's CA bundle,
    proxies and timeouts; a broken-off body resets the connection).

    The server stores the object whole or not at all. Not retried: the bytes are not kept
    here to be sent again (a caller that needs retries sends parts). One PUT costs the
    server no assembly of parts: on versitygw a multipart upload cost 1.5x the CPU per
    byte of one PUT (BENCHMARKS.md, gateway_upload_throughput).
    """
    from botocore.awsrequest import AWSRequest
    from botocore.exceptions import ClientError

    client, what = objects.client, f"PUT s3://{objects.bucket}/{key}"
    try:
        url = client.generate_presigned_url("put_object", ExpiresIn=PUT_URL_SECONDS, Params={
            "Bucket": objects.bucket, "Key": key, "ContentType": content_type})
        resp = put_session(objects).send(AWSRequest("PUT", url, data=body, headers={
            "Content-Length": str(length), "Content-Type": content_type}).prepare())
    except Exception as exc:
        raise classify(exc, what) from exc
    if resp.status_code >= 300:
        error = ClientError(s3_error(resp.status_code, resp.content), "PutObject")
        raise classify(error, what) from error


class _Changed(Exception):
    """The file is not the length it had when its PUT began."""


def put_file(objects: ObjectStore, key: str, path: Path, size: int, content_type: str) -> str:
    """A file of known ``size`` as one PUT (no parts for the server to assemble), hashed
    as it is read; a failure the server may not repeat (a 5xx answer, a broken
    connection) is tried again from the file's start, :data:`PUT_ATTEMPTS` in all. A
    file that changes length while it is read is refused: nothing is kept. Returns the
    file's SHA-256 (hex)."""
    for attempt in range(1, PUT_ATTEMPTS + 1):
        digest = hashlib.sha256()
        changed = False

        def body() -> Iterator[bytes]:
            nonlocal changed
            left = size
            with path.open("rb") as f:
                while left:
                    chunk = f.read(min(left, _MIB))
                    left -= len(chunk)
                    if not chunk or (not left and f.read(1)):  # shorter or longer than it was:
                        changed = True  # broken off before the body's last byte, so nothing is kept
                        raise _Changed()
                    digest.update(chunk)
                    yield chunk

        try:
            put_stream(objects, key, size, body(), content_type)
            return digest.hexdigest()
        except ObjectStoreError as exc:
            if changed:
                raise ObjectStoreError("ObjectStoreUnavailable", f"{path} changed while it was read: send it "
                                       "again once it is written") from None
            if exc.reason != "ObjectStoreUnavailable" or attempt == PUT_ATTEMPTS:
                raise
            log.warning("PUT s3://%s/%s failed (%s); trying again", objects.bucket, key, exc)
            time.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
