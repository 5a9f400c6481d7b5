"""Large audio into the object store in parts, hashed on the way, memory bounded.

An upload is never held whole: it goes up as parts of an S3 multipart upload (8 MiB, two
in flight), so a process holds a few parts whatever the recording's length, and the
SHA-256 the spec carries is computed from the same bytes on the way.

Keys are ``<prefix>uploads/<upload id>`` in the install's bucket, where the id is 128
random bits in hex: unguessable, so it doubles as the capability a presigned upload
(``POST /v1/uploads``) hands out, and checked against :data:`UPLOAD_ID` before it
becomes part of a key, so no caller can name another key of the install. An upload is
deleted with the request that names it (kubescribe.operator.retention).

:class:`PartWriter` writes one object part by part; :func:`upload_file` feeds it from a
file (``kubescribe submit``), and the gateway's ``AudioStream`` from a request body.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubescribe.objectstore import MULTIPART_BYTES, ObjectStore, classify
from kubescribe.streamed_put import PUT_ATTEMPTS, PUT_URL_SECONDS, SINGLE_PUT_MAX, put_file, s3_error

log = logging.getLogger("kubescribe.uploads")

#: What an upload id looks like (``secrets.token_hex(16)``).
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
#: S3 accepts at most this many parts in one multipart upload.
MAX_PARTS = 10_000
#: Parts being sent at once per upload: two keep the bucket busy while the next part's
#: request is signed and sent, and bound memory at about three parts (two sending, one
#: filling; the gateway sends a part as the pieces it arrived in, never joined). Three
#: in flight moved a 1 GiB upload through the gateway no faster (BENCHMARKS.md).
IN_FLIGHT = 2
_MIB = 1024 * 1024


def new_upload_id() -> str:
    return secrets.token_hex(16)


def upload_key(objects: ObjectStore, upload_id: str) -> str:
    """The key of an upload; ValueError for an id that :func:`new_upload_id` cannot have made."""
    if not UPLOAD_ID.match(upload_id):
        raise ValueError(f"{upload_id[:80]!r} is not an upload id (32 hex digits, from POST /v1/uploads)")
    return f"{objects.prefix}uploads/{upload_id}"


def part_size_for(max_bytes: int) -> int:
    """8 MiB parts (the object store's own multipart size), larger in whole MiB when the
    largest accepted upload would need more than S3's 10,000 parts (above ~78 GiB)."""
    need = -(-max_bytes // MAX_PARTS)
    return max(MULTIPART_BYTES, -(-need // _MIB) * _MIB)


@dataclass(frozen=True)
class Audio:
    """An accepted upload: its bytes (for Redis), or where it was streamed to."""

    size: int
    sha256: str
    data: bytes | None = None
    bucket: str | None = None
    key: str | None = None

    @property
    def stored(self) -> bool:
        return self.key is not None


class PartWriter:
    """One object written in parts (S3 multipart upload). ``put_part`` may run on several
    threads at once (after ``begin``); ``finish`` with no part sent is a single PUT, so a
    stream that turned out to fit one part costs one request.

    Parts go up as PUTs to presigned UploadPart URLs, through the client's own HTTP
    session (its CA bundle, proxies and timeouts): the payload is not hashed for a
    signature. botocore hashes every part to sign it when the endpoint is plain HTTP,
    adds a CRC32, and the server hashes the part again to check the signature; on
    loopback that halved the parts' throughput (512 MiB: 216 MiB/s through
    ``upload_part``, 329 MiB/s as presigned PUTs, 308 MiB/s for one direct PUT). The
    bytes are still checked end to end: the runner compares the whole object with the
    SHA-256 the request carries (``spec.audio.sha256``), computed here on the way.
    """

    def __init__(self, objects: ObjectStore, key: str, content_type: str = "application/octet-stream"):
        self.objects, self.key, self.content_type = objects, key, content_type
        self.bucket = objects.bucket
        self.upload_id: str | None = None
        self.parts: dict[int, dict[str, Any]] = {}
        self.completed = False

    def _call(self, fn: Callable, **kwargs) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            raise classify(exc, f"PUT s3://{self.bucket}/{self.key}") from exc

    def begin(self) -> None:
        """Start the multipart upload (once)."""
        if self.upload_id is None:
            self.upload_id = self._call(self.objects.client.create_multipart_upload,
                                        ContentType=self.content_type)["UploadId"]

    def put_part(self, number: int, data: bytes | list[bytes]) -> None:
        """Send part ``number`` (from 1, in the object's order); ``begin`` first. ``data``
        may be the part's pieces as they arrived: they are sent one after another, never
        joined (an 8 MiB copy per part was a third of the gateway's time per upload)."""
        assert self.upload_id is not None
        self.parts[number] = {"ETag": self._send_part(number, data), "PartNumber": number}

    def _send_part(self, number: int, data: bytes | list[bytes]) -> str:
        """PUT one part to its presigned URL; a 5xx answer or a broken connection is tried
        again (:data:`PUT_ATTEMPTS` in all, backing off), as botocore's standard retries
        would. Returns the part's ETag."""
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ClientError

        client = self.objects.client
        what = f"PUT s3://{self.bucket}/{self.key} (part {number})"
        try:  # signed here, with no request: only missing credentials fail
            url = client.generate_presigned_url("upload_part", ExpiresIn=PUT_URL_SECONDS, Params={
                "Bucket": self.bucket, "Key": self.key, "UploadId": self.upload_id, "PartNumber": number})
        except Exception as exc:
            raise classify(exc, what) from exc
        session = client._endpoint.http_session  # the client's own: CA bundle, proxies, timeouts
        size = len(data) if isinstance(data, bytes) else sum(map(len, data))
        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:  # a list body is sent piece by piece (urllib3), and again from its start on a retry
                resp = session.send(AWSRequest("PUT", url, data=data or b"",
                                               headers={"Content-Length": str(size)}).prepare())
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: try again
                if attempt == PUT_ATTEMPTS:
                    raise classify(exc, what) from exc
            else:
                if resp.status_code < 300 and resp.headers.get("ETag"):
                    return resp.headers["ETag"]
                error = ClientError(s3_error(resp.status_code, resp.content), "UploadPart")
                if resp.status_code < 500 or attempt == PUT_ATTEMPTS:
                    raise classify(error, what) from error
            time.sleep(0.2 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def finish(self, last: bytes | list[bytes]) -> None:
        """Send ``last`` (possibly short or empty) and complete the object."""
        client = self.objects.client
        if self.upload_id is None:
            body = last if isinstance(last, bytes) else b"".join(last)
            self._call(client.put_object, Body=body, ContentType=self.content_type)
        else:
            if last:
                self.put_part(len(self.parts) + 1, last)
            parts = [self.parts[n] for n in sorted(self.parts)]
            self._call(client.complete_multipart_upload, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        self.completed = True

    def discard(self) -> None:
        """Abort the upload (its parts are freed) or delete the finished object; best
        effort: a failure is logged, the caller's own error is the one to report."""
        try:
            if self.completed:
                self.objects.delete([self.key])
            elif self.upload_id is not None:
                self._call(self.objects.client.abort_multipart_upload, UploadId=self.upload_id)
        except Exception as exc:  # noqa: BLE001 - cleanup after another failure
            log.warning("could not discard s3://%s/%s: %s (a lifecycle rule on uploads/ removes it)",
                        self.bucket, self.key, exc)


def trim_object(objects: ObjectStore, key: str, length: int, extra: bytes = b"",
                content_type: str = "application/octet-stream") -> str:
    """A new upload object of the first ``length`` bytes of ``key`` (copied by the server,
    at most :data:`SINGLE_PUT_MAX`), then ``extra``; ``key`` is deleted. Returns the new key.

    For a streamed PUT whose length was a forecast that missed (:func:`put_stream` needs
    it before the first byte): the object was padded to it, or ``extra`` came after it.
    """
    writer = PartWriter(objects, upload_key(objects, new_upload_id()), content_type)
    writer.begin()
    try:
        copied = writer._call(objects.client.upload_part_copy, UploadId=writer.upload_id, PartNumber=1,
                              CopySource={"Bucket": objects.bucket, "Key": key},
                              CopySourceRange=f"bytes=0-{length - 1}")
        writer.parts[1] = {"ETag": copied["CopyPartResult"]["ETag"], "PartNumber": 1}
        writer.finish(extra)
    except BaseException:
        writer.discard()
        raise
    objects.delete([key])
    return writer.key


def upload_file(objects: ObjectStore, path: Path, *, max_bytes: int | None = None,
                content_type: str = "application/octet-stream") -> Audio:
    """Stream a file into ``<prefix>uploads/<id>`` (for ``kubescribe submit``), hashed as
    read: as one PUT up to :data:`SINGLE_PUT_MAX` (:func:`.streamed_put.put_file`), else in parts,
    :data:`IN_FLIGHT` sent on threads while the next is read; memory is a few parts
    whatever the file's size. A failure leaves nothing behind.

    ``max_bytes`` only sizes the parts (a file that grows while it is read still fits
    S3's part count); the file's own size is used when not given.
    """
    size = path.stat().st_size
    part_size = part_size_for(max(size, max_bytes or 0))
    if part_size < size <= SINGLE_PUT_MAX:
        key = upload_key(objects, new_upload_id())
        return Audio(size, put_file(objects, key, path, size, content_type), bucket=objects.bucket, key=key)
    writer = PartWriter(objects, upload_key(objects, new_upload_id()), content_type)
    digest = hashlib.sha256()
    total = sent = 0
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="upload") as pool:
        try:
            with path.open("rb") as f:
                part = f.read(part_size)
                while True:
                    digest.update(part)
                    total += len(part)
                    following = f.read(part_size)
                    if not following:
                        break
                    while len(pending) >= IN_FLIGHT:
                        pending.popleft().result()
                    writer.begin()
                    sent += 1
                    pending.append(pool.submit(writer.put_part, sent, part))
                    part = following
            while pending:
                pending.popleft().result()
            writer.finish(part)
        except BaseException:
            for future in pending:
                with contextlib.suppress(Exception):
                    future.result()
            writer.discard()
            raise
    return Audio(total, digest.hexdigest(), bucket=writer.bucket, key=writer.key)
