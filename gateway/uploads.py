"""Audio into the object store as it arrives: in parts, hashed on the way, memory bounded.

A large upload is never held whole. Its bytes go into a buffer of one part (8 MiB); a
full buffer is sent as one part of an S3 multipart upload while the next fills, so a
process holds about two parts whatever the recording's length, and the SHA-256 the spec
carries is computed from the same bytes on the way. Uploads at or below the streaming
threshold stay whole in memory and go to Redis as before: one round trip and no object
to clean up, for the short clips that are most calls.

Keys are ``<prefix>uploads/<upload id>`` in the install's bucket, where the id is 128
random bits in hex: unguessable, so it doubles as the capability a presigned upload
(``POST /v1/uploads``) hands out, and checked against :data:`UPLOAD_ID` before it
becomes part of a key, so no caller can name another key of the install.

Nothing here knows HTTP: the gateway feeds :class:`AudioStream` from a request body and
``kubescribe submit`` feeds :func:`upload_file` from a file. (This is shared object
store code; it sits in the gateway package because the CLI layer may import the
gateway's and the shared core is another team's file.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubescribe.objectstore import MULTIPART_BYTES, ObjectStore, classify

log = logging.getLogger("kubescribe.gateway.uploads")

#: What an upload id looks like (``secrets.token_hex(16)``).
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
#: S3 accepts at most this many parts in one multipart upload.
MAX_PARTS = 10_000
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
    """One object written part by part (S3 multipart upload). Synchronous, one call at a
    time; ``finish`` with no part sent is a single PUT, so a stream that turned out to fit
    one part costs one request.

    Part checksums follow s3transfer's (CRC32 when the client computes checksums, as
    boto3's ``upload_fileobj`` behind ``ObjectStore.upload`` does), so every server that
    takes the store's other uploads takes these.
    """

    def __init__(self, objects: ObjectStore, key: str, content_type: str = "application/octet-stream"):
        self.objects, self.key, self.content_type = objects, key, content_type
        self.bucket = objects.bucket
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.completed = False
        config = objects.client.meta.config
        self._checksum = "CRC32" if getattr(config, "request_checksum_calculation", "") == "when_supported" else None

    def _call(self, fn: Callable, **kwargs) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            raise classify(exc, f"PUT s3://{self.bucket}/{self.key}") from exc

    def put_part(self, data: bytes) -> None:
        client = self.objects.client
        extra = {"ChecksumAlgorithm": self._checksum} if self._checksum else {}
        if self.upload_id is None:
            self.upload_id = self._call(client.create_multipart_upload, ContentType=self.content_type,
                                        **extra)["UploadId"]
        number = len(self.parts) + 1
        resp = self._call(client.upload_part, UploadId=self.upload_id, PartNumber=number, Body=data, **extra)
        part = {"ETag": resp["ETag"], "PartNumber": number}
        if self._checksum and f"Checksum{self._checksum}" in resp:
            part[f"Checksum{self._checksum}"] = resp[f"Checksum{self._checksum}"]
        self.parts.append(part)

    def finish(self, last: bytes) -> None:
        client = self.objects.client
        if self.upload_id is None:
            self._call(client.put_object, Body=last, ContentType=self.content_type)
        else:
            if last:
                self.put_part(last)
            self._call(client.complete_multipart_upload, UploadId=self.upload_id,
                       MultipartUpload={"Parts": self.parts})
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


class TooLarge(Exception):
    """The upload passed its limit; nothing of it is kept."""


class AudioStream:
    """The bytes of one upload, fed as they arrive (async, for the gateway).

    Up to ``threshold`` bytes stay in memory; past it, with an object store, the buffer
    goes out as parts of ``part_size`` while the next one fills: at most one part is in
    flight (a thread), so memory is about two parts and a slow bucket slows the
    sender (the caller stops reading its body) instead of filling the gateway's memory.
    Without an object store everything stays in memory up to ``limit``, as before.

    Args:
        objects: the install's object store, or None.
        limit: largest upload in bytes; one more raises :class:`TooLarge`.
        threshold: uploads larger than this are streamed into the object store.
        content_type: stored with the object.
    """

    def __init__(self, objects: ObjectStore | None, *, limit: int, threshold: int,
                 content_type: str = "application/octet-stream"):
        self.objects, self.limit, self.threshold = objects, limit, threshold
        self.content_type = content_type
        self.part_size = part_size_for(limit)
        self.size = 0
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._writer: PartWriter | None = None
        self._pending: asyncio.Future | None = None

    @property
    def streaming(self) -> bool:
        return self._writer is not None

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge()
        self._hash.update(data)
        self._buf += data
        if (self.objects is not None and self.size > self.threshold and len(self._buf) >= self.part_size):
            part, self._buf = bytes(self._buf), bytearray()
            await self._settle()
            writer = self._start()
            self._pending = asyncio.ensure_future(asyncio.to_thread(writer.put_part, part))

    def _start(self) -> PartWriter:
        if self._writer is None:
            assert self.objects is not None
            self._writer = PartWriter(self.objects, upload_key(self.objects, new_upload_id()), self.content_type)
        return self._writer

    async def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def finish(self) -> Audio:
        """The upload as accepted: in memory when small (or no object store), else the
        object it was streamed into, complete."""
        await self._settle()
        sha = self._hash.hexdigest()
        if self._writer is None and (self.objects is None or self.size <= self.threshold):
            data, self._buf = bytes(self._buf), bytearray()
            return Audio(self.size, sha, data=data)
        writer = self._start()
        last, self._buf = bytes(self._buf), bytearray()
        await asyncio.to_thread(writer.finish, last)
        return Audio(self.size, sha, bucket=writer.bucket, key=writer.key)

    async def discard(self) -> None:
        """Leave nothing behind: wait for a part in flight, then abort the multipart
        upload or delete the object it became."""
        self._buf = bytearray()
        with contextlib.suppress(Exception):
            await self._settle()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.discard)


def upload_file(objects: ObjectStore, path: Path, *, max_bytes: int | None = None,
                content_type: str = "application/octet-stream") -> Audio:
    """Stream a file into ``<prefix>uploads/<id>`` (for ``kubescribe submit``): read in
    parts, hashed as read, one part in flight on a thread while the next is read, so
    memory is about two parts whatever the file's size. A failure leaves nothing behind.

    ``max_bytes`` only sizes the parts (a file that grows while it is read still fits
    S3's part count); the file's own size is used when not given.
    """
    size = path.stat().st_size
    part_size = part_size_for(max(size, max_bytes or 0))
    writer = PartWriter(objects, upload_key(objects, new_upload_id()), content_type)
    digest = hashlib.sha256()
    total = 0
    pending: Future | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="upload") as pool:
        try:
            with path.open("rb") as f:
                part = f.read(part_size)
                while True:
                    digest.update(part)
                    total += len(part)
                    following = f.read(part_size)
                    if not following:
                        break
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.put_part, part)
                    part = following
            if pending is not None:
                pending.result()
                pending = None
            writer.finish(part)
        except BaseException:
            if pending is not None:
                with contextlib.suppress(Exception):
                    pending.result()
            writer.discard()
            raise
    return Audio(total, digest.hexdigest(), bucket=writer.bucket, key=writer.key)
