"""An object in a bucket read as a seekable file, so the decoder streams it.

The engine's decoder (:mod:`.audio`) reads any seekable binary file object; given this
one it holds what it decodes and one read's worth of bytes, never the object: a 2 GB
recording costs the runner no more memory than a 2 MB one. Reads go through one
streaming GET from the current position; a seek elsewhere (the decoder's probe of a
container's end, a resume's seek to its checkpoint) ends that GET and the next read
opens a ranged one there, or, a little way ahead, reads on and drops the bytes between.

Every GET after the first names the ETag the first one answered (``If-Match``), so the
bytes all come from one version of the object: a recording replaced while it is read
fails the read (a transient failure; a retry reads the new one) instead of splicing two
files. The object's size is the first GET's, checked against the runner's limit.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from kubescribe.models import S3Object
from kubescribe.objectstore import ObjectNotFound, ObjectStoreError, classify

log = logging.getLogger(__name__)

#: A seek at most this far ahead of the open GET reads on and drops the bytes between,
#: cheaper than a new request (a round trip) for the short hops a demuxer makes.
SKIP_BYTES = 256 * 1024


class TooLarge(Exception):
    """The object is over the runner's audio limit."""


class ObjectFile(io.RawIOBase):
    """A read-only, seekable file over one object, read by streaming GETs.

    Args:
        client: a boto3 S3 client (``ObjectStore.client``).
        obj: the bucket and key.
        size: the object's size from its HEAD; the first GET's answer replaces it.
        limit: the most bytes the object may have (:class:`TooLarge` beyond it, when
            the object is replaced after its HEAD by a larger one).
    """

    def __init__(self, client: Any, obj: S3Object, size: int, limit: int):
        super().__init__()
        self._client = client
        self.obj = obj
        self.size = size
        self.limit = limit
        self.requests = 0  # GETs opened so far: tests read it to see that a read streams
        self._etag: str | None = None
        self._pos = 0
        self._body: Any = None
        self._body_pos = 0  # where the open GET's next byte is

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves the position only; the bytes are asked for when next read."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self._pos)
        if want <= 0:
            return 0
        data = self._read(want)
        if not data:  # the open GET broke off: once more from here, in a GET of its own
            self._drop()
            data = self._read(want)
        if not data:
            self._drop()
            raise ObjectStoreError("ObjectStoreUnavailable", f"GET {self.obj}: the body ended at byte {self._pos} "
                                   f"of {self.size}")
        buffer[:len(data)] = data
        self._pos += len(data)
        self._body_pos = self._pos
        return len(data)

    def _read(self, want: int) -> bytes:
        """Up to ``want`` bytes at the position from the open GET (opened first where it is
        not there); empty when that GET broke off. A GET stays open while the model
        works on a piece, minutes for a large model, and a server or proxy may close an
        idle connection by then: that costs a new GET, not the task."""
        if self._body is None or not 0 <= self._pos - self._body_pos <= SKIP_BYTES:
            self._open(self._pos)
        try:
            while self._body_pos < self._pos:  # a short hop ahead: read on
                skipped = len(self._body.read(min(self._pos - self._body_pos, 1 << 16)))
                if not skipped:
                    return b""
                self._body_pos += skipped
            return self._body.read(want)
        except Exception as exc:  # a connection lost mid-body, a read timeout
            log.info("GET %s broke off at byte %d (%s: %s)", self.obj, self._pos, type(exc).__name__, exc)
            return b""

    def _open(self, start: int) -> None:
        self._drop()
        what = f"GET {self.obj}" + (f" from byte {start}" if start else "")
        kwargs: dict[str, Any] = {"Bucket": self.obj.bucket, "Key": self.obj.key}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        if self._etag is not None:
            kwargs["IfMatch"] = self._etag
        try:
            resp = self._client.get_object(**kwargs)
        except Exception as exc:
            code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
            if code == "PreconditionFailed":
                raise ObjectStoreError("ObjectStoreUnavailable", f"{what}: the object was replaced while it was "
                                       "read; a retry reads the new one") from None
            error = classify(exc, what)
            if isinstance(error, ObjectNotFound) and self._etag is not None:
                error = ObjectNotFound(f"{self.obj} was deleted while it was read")
            raise error from exc
        self.requests += 1
        if self._etag is None:
            self._etag = resp.get("ETag")
            total = _total(resp, start)
            if total > self.limit:
                resp["Body"].close()
                raise TooLarge(f"{self.obj} grew over the {self.limit}-byte limit while it was read "
                               "(KUBESCRIBE_MAX_AUDIO_BYTES)")
            self.size = total
        self._body, self._body_pos = resp["Body"], start

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()


def _total(resp: dict[str, Any], start: int) -> int:
    """The object's whole size from a GET's answer (``Content-Range: bytes a-b/total`` on a
    ranged one)."""
    content_range = resp.get("ContentRange") or ""
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    return start + int(resp["ContentLength"])
