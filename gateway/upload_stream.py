"""Audio into the object store as it arrives, for the gateway: the bytes of a request
body fed to an :class:`AudioStream`, which keeps uploads at or below the streaming
threshold whole in memory (for Redis: one round trip and no object to clean up, for the
short clips that are most calls) and sends larger ones up as they come, hashing on the
way: as one PUT when the file's length is known before its first byte (the form's last
part, with a Content-Length), else part by part (kubescribe.uploads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from kubescribe.objectstore import ObjectStore
from kubescribe.streamed_put import SINGLE_PUT_MAX, put_stream
from kubescribe.uploads import IN_FLIGHT, Audio, PartWriter, new_upload_id, part_size_for, trim_object, upload_key

__all__ = ["Audio", "AudioStream", "TooLarge", "new_upload_id", "upload_key"]


def _update(digest, pieces: list[bytes]) -> None:
    for piece in pieces:
        digest.update(piece)


class _Aborted(Exception):
    """Ends a streamed PUT's body early: the server keeps nothing of it."""


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class StreamedPut:
    """One PUT of ``length`` bytes fed from the event loop (:func:`put_stream` on a thread
    of its own, for as long as the upload lasts, so long uploads never hold the loop's
    shared executor). Pieces wait in a queue of at most ``bound`` bytes, so a slow bucket
    stops the caller reading its body; the sending thread hashes each piece into
    ``digest`` before sending it.

    ``length`` is a forecast (the form's Content-Length less what surrounds the file).
    A file that ends short is padded with zeros to it and a longer one's surplus kept in
    :attr:`extra`; :meth:`AudioStream.finish` then has the object trimmed.
    """

    def __init__(self, objects: ObjectStore, key: str, length: int, digest, *, bound: int,
                 content_type: str):
        self.key, self.length, self.digest, self.bound = key, length, digest, bound
        self.fed = 0
        self.extra: list[bytes] = []
        self._cond = threading.Condition()
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._ended = self._aborted = self._stopped = False
        self._room: asyncio.Future | None = None
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future = self._loop.create_future()
        threading.Thread(target=self._run, args=(objects, content_type), name="upload-put", daemon=True).start()

    def _run(self, objects: ObjectStore, content_type: str) -> None:
        error: BaseException | None = None
        try:
            put_stream(objects, self.key, self.length, self._body(), content_type)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            error = exc
        with self._cond:
            self._stopped = True
            room, self._room = self._room, None
        self._loop.call_soon_threadsafe(self._settle, error, room)

    def _settle(self, error: BaseException | None, room: asyncio.Future | None) -> None:
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
        if room is not None:
            _wake(room)

    def _body(self) -> Iterator[bytes]:
        sent = 0
        while True:
            with self._cond:
                while not (self._queue or self._ended or self._aborted):
                    self._cond.wait()
                if self._aborted:
                    raise _Aborted()
                if not self._queue:
                    break
                piece = self._queue.popleft()
                self._queued -= len(piece)
                if self._room is not None and self._queued <= self.bound // 2:
                    self._loop.call_soon_threadsafe(_wake, self._room)
                    self._room = None
            self.digest.update(piece)
            sent += len(piece)
            yield piece
        zeros = bytes(max(0, min(self.length - sent, 64 * 1024)))
        while sent < self.length:  # the file ended short of the forecast: trimmed later
            yield zeros[: self.length - sent]
            sent += len(zeros)

    async def feed(self, data: bytes) -> None:
        room = self.length - self.fed
        if len(data) > room:  # longer than forecast (the form ended without its final CRLF)
            self.extra.append(data[room:])
            data = data[:room]
        if not data:
            return
        self.fed += len(data)
        while True:
            with self._cond:
                if self._stopped:
                    break
                if self._queued < self.bound:
                    self._queue.append(data)
                    self._queued += len(data)
                    self._cond.notify()
                    return
                self._room = room_free = self._loop.create_future()
            await room_free
        await self.done  # the PUT ended before its body: its error
        raise RuntimeError(f"the PUT of {self.key} ended before its body")

    async def end(self) -> None:
        """No more pieces: wait for the server's answer (raises the PUT's error)."""
        with self._cond:
            self._ended = True
            self._cond.notify()
        await self.done

    async def abort(self) -> None:
        """Break the PUT off; the server keeps nothing."""
        with self._cond:
            self._aborted = True
            self._cond.notify()
        with contextlib.suppress(Exception):
            await self.done


class TooLarge(Exception):
    """The upload passed its limit; nothing of it is kept."""


class AudioStream:
    """The bytes of one upload, fed as they arrive (async, for the gateway).

    Up to ``threshold`` bytes stay in memory; past it, with an object store, the bytes go
    out as they come. When :meth:`expect` was told the upload's length (at most
    ``single_put``), as one streamed PUT (:class:`StreamedPut`); else as parts of
    ``part_size`` while the next one fills, at most :data:`IN_FLIGHT` being sent
    (threads). Either way memory is a few parts and a slow bucket slows the sender (the
    caller stops reading its body) instead of filling the gateway's memory. Without an
    object store everything stays in memory up to ``limit``, as before.

    Args:
        objects: the install's object store, or None.
        limit: largest upload in bytes; one more raises :class:`TooLarge`.
        threshold: uploads larger than this are streamed into the object store.
        single_put: largest upload sent as one PUT (0: always in parts).
        content_type: stored with the object.
    """

    def __init__(self, objects: ObjectStore | None, *, limit: int, threshold: int,
                 single_put: int = SINGLE_PUT_MAX, content_type: str = "application/octet-stream"):
        self.objects, self.limit, self.threshold = objects, limit, threshold
        self.content_type = content_type
        self.part_size = part_size_for(limit)
        self.single_put = min(single_put, SINGLE_PUT_MAX)
        self.expected: int | None = None
        self._put: StreamedPut | None = None
        self._trimmed: str | None = None
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

    def expect(self, size: int) -> None:
        """The upload's length, told before its first byte: one PUT will carry it when it
        is above both the threshold and a part, and at most ``single_put`` and ``limit``.
        It may still prove wrong (a forecast from the form's framing): see StreamedPut."""
        if (self.objects is not None and max(self.threshold, self.part_size) < size
                and size <= min(self.single_put, self.limit)):
            self.expected = size

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge()
        if self._put is not None:
            await self._put.feed(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self.expected is not None and self.size > self.threshold:
            assert self.objects is not None
            self._put = StreamedPut(self.objects, upload_key(self.objects, new_upload_id()), self.expected,
                                    self._hash, bound=IN_FLIGHT * self.part_size, content_type=self.content_type)
            for piece in self._take():
                await self._put.feed(piece)
            return
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
        if self._put is not None:
            return await self._finish_put(self._put)
        last = self._take()
        if self._writer is None and (self.objects is None or self.size <= self.threshold):
            data = b"".join(last)  # kept whole: at most the threshold, or no object store
            return Audio(self.size, hashlib.sha256(data).hexdigest(), data=data)
        await self._digest(last)
        await self._settle()
        writer = self._start()
        await asyncio.to_thread(writer.finish, last)
        return Audio(self.size, self._hash.hexdigest(), bucket=writer.bucket, key=writer.key)

    async def _finish_put(self, put: StreamedPut) -> Audio:
        """End the streamed PUT; when the forecast length missed, the object is trimmed
        to the bytes that came (a copy on the server: rare, see :meth:`expect`)."""
        assert self.objects is not None
        await put.end()
        extra = b"".join(put.extra)
        for piece in put.extra:
            self._hash.update(piece)
        key = put.key
        if put.fed != put.length or extra:
            key = self._trimmed = await asyncio.to_thread(trim_object, self.objects, put.key, put.fed, extra,
                                                          self.content_type)
        return Audio(self.size, self._hash.hexdigest(), bucket=self.objects.bucket, key=key)

    async def discard(self) -> None:
        """Leave nothing behind: break off the PUT or wait for the parts in flight, then
        abort the multipart upload or delete the object it became."""
        self._chunks, self._buffered = [], 0
        if self._put is not None:
            put, self._put = self._put, None
            await put.abort()
            assert self.objects is not None
            if put.done.done() and put.done.exception() is None:
                keys = [put.key] + ([self._trimmed] if self._trimmed else [])
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.objects.delete, keys)
            return
        with contextlib.suppress(Exception):
            await self._settle()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.discard)
