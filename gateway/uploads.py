"""Audio into the object store as it arrives: in parts, hashed on the way, memory bounded.

A large upload is never held whole. Its bytes go into a buffer of one part (8 MiB); a
full buffer is sent as one part of an S3 multipart upload while the next fills (two
parts in flight at most), so a process holds about four parts whatever the recording's
length, and the SHA-256 the spec carries is computed from the same bytes on the way. Uploads at or below the streaming
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
from collections import deque
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
#: Parts being sent at once per upload: two keep the bucket busy while the next part's
#: request is signed and sent, and bound memory at about four parts (two sending, one
#: filling, one being copied out).
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

    Part checksums follow s3transfer's (CRC32 when the client computes checksums, as
    boto3's ``upload_fileobj`` behind ``ObjectStore.upload`` does), so every server that
    takes the store's other uploads takes these.
    """

    def __init__(self, objects: ObjectStore, key: str, content_type: str = "application/octet-stream"):
        self.objects, self.key, self.content_type = objects, key, content_type
        self.bucket = objects.bucket
        self.upload_id: str | None = None
        self.parts: dict[int, dict[str, Any]] = {}
        self.completed = False
        config = objects.client.meta.config
        self._checksum = "CRC32" if getattr(config, "request_checksum_calculation", "") == "when_supported" else None

    def _call(self, fn: Callable, **kwargs) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            raise classify(exc, f"PUT s3://{self.bucket}/{self.key}") from exc

    def _extra(self) -> dict[str, str]:
        return {"ChecksumAlgorithm": self._checksum} if self._checksum else {}

    def begin(self) -> None:
        """Start the multipart upload (once)."""
        if self.upload_id is None:
            self.upload_id = self._call(self.objects.client.create_multipart_upload, ContentType=self.content_type,
                                        **self._extra())["UploadId"]

    def put_part(self, number: int, data: bytes) -> None:
        """Send part ``number`` (from 1, in the object's order); ``begin`` first."""
        assert self.upload_id is not None
        resp = self._call(self.objects.client.upload_part, UploadId=self.upload_id, PartNumber=number, Body=data,
                          **self._extra())
        part = {"ETag": resp["ETag"], "PartNumber": number}
        if self._checksum and f"Checksum{self._checksum}" in resp:
            part[f"Checksum{self._checksum}"] = resp[f"Checksum{self._checksum}"]
        self.parts[number] = part

    def finish(self, last: bytes) -> None:
        """Send ``last`` (possibly short or empty) and complete the object."""
        client = self.objects.client
        if self.upload_id is None:
            self._call(client.put_object, Body=last, ContentType=self.content_type)
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


class TooLarge(Exception):
    """The upload passed its limit; nothing of it is kept."""


class AudioStream:
    """The bytes of one upload, fed as they arrive (async, for the gateway).

    Up to ``threshold`` bytes stay in memory; past it, with an object store, the buffer
    goes out as parts of ``part_size`` while the next one fills: at most
    :data:`IN_FLIGHT` parts are being sent (threads), so memory is a few parts and a slow
    bucket slows the sender (the caller stops reading its body) instead of filling the
    gateway's memory. Without an object store everything stays in memory up to
    ``limit``, as before.

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
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._writer: PartWriter | None = None
        self._sent = 0
        self._pending: deque[asyncio.Future] = deque()
        # SHA-256 runs at a few hundred MiB/s: on the event loop it would be most of the
        # gateway's time per byte. Parts are hashed on one thread of their own, in order
        # (one worker), while the loop reads the next.
        self._hasher: ThreadPoolExecutor | None = None
        self._hashing: asyncio.Future | None = None

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge()
        self._chunks.append(data)
        self._buffered += len(data)
        if self.objects is not None and self.size > self.threshold and self._buffered >= self.part_size:
            part = self._take()
            await self._digest(part)
            while len(self._pending) >= IN_FLIGHT:
                await self._pending.popleft()
            writer = self._start()
            if writer.upload_id is None:
                await asyncio.to_thread(writer.begin)
            self._sent += 1
            self._pending.append(asyncio.ensure_future(asyncio.to_thread(writer.put_part, self._sent, part)))

    def _take(self) -> bytes:
        part = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return part

    async def _digest(self, part: bytes) -> None:
        """Hash ``part`` after the parts before it; at most one part waits to be hashed."""
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="upload-sha256")
        if self._hashing is not None:
            await self._hashing
        self._hashing = asyncio.get_running_loop().run_in_executor(self._hasher, self._hash.update, part)

    def _start(self) -> PartWriter:
        if self._writer is None:
            assert self.objects is not None
            self._writer = PartWriter(self.objects, upload_key(self.objects, new_upload_id()), self.content_type)
        return self._writer

    async def _settle(self) -> None:
        """Wait for every part in flight and the hashing; the first failure is raised
        once all are done."""
        pending, self._pending = list(self._pending), deque()
        if self._hashing is not None:
            pending.append(self._hashing)
            self._hashing = None
        results = await asyncio.gather(*pending, return_exceptions=True)
        if self._hasher is not None:
            self._hasher.shutdown(wait=False)
            self._hasher = None
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def finish(self) -> Audio:
        """The upload as accepted: in memory when small (or no object store), else the
        object it was streamed into, complete."""
        last = self._take()
        if self._writer is None and (self.objects is None or self.size <= self.threshold):
            return Audio(self.size, hashlib.sha256(last).hexdigest(), data=last)
        await self._digest(last)
        await self._settle()
        writer = self._start()
        await asyncio.to_thread(writer.finish, last)
        return Audio(self.size, self._hash.hexdigest(), bucket=writer.bucket, key=writer.key)

    async def discard(self) -> None:
        """Leave nothing behind: wait for the parts in flight, then abort the multipart
        upload or delete the object it became."""
        self._chunks, self._buffered = [], 0
        with contextlib.suppress(Exception):
            await self._settle()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.discard)


def upload_file(objects: ObjectStore, path: Path, *, max_bytes: int | None = None,
                content_type: str = "application/octet-stream") -> Audio:
    """Stream a file into ``<prefix>uploads/<id>`` (for ``kubescribe submit``): read in
    parts, hashed as read, :data:`IN_FLIGHT` parts sent on threads while the next is read,
    so memory is a few parts whatever the file's size. A failure leaves nothing behind.

    ``max_bytes`` only sizes the parts (a file that grows while it is read still fits
    S3's part count); the file's own size is used when not given.
    """
    size = path.stat().st_size
    part_size = part_size_for(max(size, max_bytes or 0))
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
