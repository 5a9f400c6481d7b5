"""Audio into the object store as it arrives, for the gateway: the bytes of a request
body fed to an :class:`AudioStream`, which keeps uploads at or below the streaming
threshold whole in memory (for Redis: one round trip and no object to clean up, for the
short clips that are most calls) and sends larger ones up part by part
(kubescribe.uploads), hashing on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from kubescribe.objectstore import ObjectStore
from kubescribe.uploads import IN_FLIGHT, Audio, PartWriter, new_upload_id, part_size_for, upload_key

__all__ = ["Audio", "AudioStream", "TooLarge", "new_upload_id", "upload_key"]


def _update(digest, pieces: list[bytes]) -> None:
    for piece in pieces:
        digest.update(piece)


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
            part = self._take()  # the pieces as they came: hashed and sent without a join
            await self._digest(part)
            while len(self._pending) >= IN_FLIGHT:
                await self._pending.popleft()
            writer = self._start()
            if writer.upload_id is None:
                await asyncio.to_thread(writer.begin)
            self._sent += 1
            self._pending.append(asyncio.ensure_future(asyncio.to_thread(writer.put_part, self._sent, part)))

    def _take(self) -> list[bytes]:
        part, self._chunks, self._buffered = self._chunks, [], 0
        return part

    async def _digest(self, part: list[bytes]) -> None:
        """Hash ``part`` after the parts before it; at most one part waits to be hashed."""
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="upload-sha256")
        if self._hashing is not None:
            await self._hashing
        self._hashing = asyncio.get_running_loop().run_in_executor(self._hasher, _update, self._hash, part)

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
            data = b"".join(last)  # kept whole: at most the threshold, or no object store
            return Audio(self.size, hashlib.sha256(data).hexdigest(), data=data)
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
