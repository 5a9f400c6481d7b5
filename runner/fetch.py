"""A request's audio fetched from where its spec says: Redis, a URL or a bucket.

Audio in Redis and at a URL is held in memory (Redis holds only small uploads: larger
ones go to the object store; a URL is read within the size limit). Audio in a bucket is
never held: it is read twice as a stream, once here for its SHA-256 (the cache key, and
``spec.audio.sha256``'s check), then by the decoder (:class:`~.objectfile.ObjectFile`),
so the runner's memory does not grow with the recording. The price is a second download
of the object; a spool file would cost the pod's ephemeral storage instead (its root
filesystem is read-only; only /tmp, an emptyDir, is writable).
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
from dataclasses import dataclass
from typing import BinaryIO

from kubescribe.models import TranscriptionSpec
from kubescribe.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError
from kubescribe.settings import AudioInputSettings
from kubescribe.store import AudioNotFound, Store
from kubescribe.url_guard import TooManyRedirects, URLRefused, UrlGuard, open_url

from . import buckets
from .failures import TaskError

#: Read size of a streamed object or download: memory beyond the audio stays at one chunk.
CHUNK_BYTES = 1 << 20


@dataclass
class Audio:
    """A request's audio: a seekable file to decode, its size and SHA-256.

    ``file`` is the bytes in memory (``io.BytesIO``) or an object read as a stream;
    :meth:`close` ends the stream's connection (the size and hash stay).
    """

    file: BinaryIO
    size: int
    sha256: str

    @classmethod
    def of_bytes(cls, data: bytes) -> "Audio":
        return cls(io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def of_path(cls, path: str | os.PathLike) -> "Audio":
        """A local file (the CLI's), hashed as it is read and then decoded from the file
        itself: never held whole. Raises ``OSError`` when it cannot be read."""
        file = open(path, "rb")
        try:
            digest, size = hashlib.sha256(), 0
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
            file.seek(0)
        except BaseException:
            file.close()
            raise
        return cls(file, size, digest.hexdigest())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Audio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _download(url: str, limit: int, guard: UrlGuard) -> bytes:
    """GET ``url`` from a destination the guard allows (see kubescribe.url_guard)."""
    try:
        with open_url(url, guard, timeout=60, headers={"User-Agent": "kubescribe-runner"}) as resp:
            chunks, total = [], 0
            while chunk := resp.read(CHUNK_BYTES):
                total += len(chunk)
                if total > limit:
                    raise TaskError("AudioTooLarge", f"audio at {url} is larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TaskError:
        raise
    except URLRefused as exc:
        via = f" (redirected to {exc.url})" if exc.url and exc.url != url else ""
        raise TaskError("AudioURLForbidden", f"GET {url}{via}: {exc.message}") from None
    except TooManyRedirects as exc:
        raise TaskError("AudioDownloadFailed", f"GET {url}: {exc}") from None
    except urllib.error.HTTPError as exc:
        final = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise TaskError("AudioDownloadFailed" if final else "AudioServerUnavailable",
                        f"GET {url}: HTTP {exc.code}") from None
    except OSError as exc:
        raise TaskError("AudioServerUnavailable", f"GET {url}: {exc}") from None


def _read_object(objects: ObjectStore, spec: TranscriptionSpec, limit: int) -> Audio:
    """The object as a streamed file, hashed by reading it through once."""
    obj = spec.audio.s3_object()
    assert obj is not None
    field = "spec.audio.s3.key" if spec.audio.s3 is not None else "spec.audio.url"
    try:
        file = buckets.stream_audio(objects, obj, limit)
        try:
            digest = hashlib.sha256()
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
            file.seek(0)
            return Audio(file, file.size, digest.hexdigest())
        except BaseException:
            file.close()
            raise
    except ObjectNotFound:
        raise TaskError("AudioNotFound", f"{obj} does not exist: upload it or fix {field}") from None
    except buckets.TooLarge as exc:
        raise TaskError("AudioTooLarge", str(exc)) from None
    except ObjectStoreError as exc:
        hint = (" (without s3:ListBucket on the bucket, S3 answers a missing key with 403 too)"
                if exc.reason == "ObjectStoreAccessDenied" else "")
        raise TaskError(exc.reason, exc.message + hint) from None


def fetch_audio(store: Store, spec: TranscriptionSpec, settings: AudioInputSettings | None = None, *,
                objects: ObjectStore | None = None) -> Audio:
    """The request's audio from Redis, its URL or a bucket, checked against the size
    limit and ``spec.audio.sha256``. ``settings`` default to the environment; ``objects``
    (for ``spec.audio.s3`` or an s3:// URL) to :func:`buckets.client`. The caller closes it."""
    settings = settings or AudioInputSettings()
    limit = settings.max_audio_bytes
    if spec.audio.redis_key:
        try:
            audio = Audio.of_bytes(store.get_audio(spec.audio.redis_key))
        except AudioNotFound as exc:
            raise TaskError("AudioNotFound", str(exc)) from None
    elif spec.audio.s3_object() is not None:
        audio = _read_object(objects or buckets.client(store.objects), spec, limit)
    else:
        audio = Audio.of_bytes(_download(spec.audio.url, limit, UrlGuard.from_settings(settings)))
    try:
        if audio.size > limit:
            raise TaskError("AudioTooLarge", f"audio is {audio.size} bytes, over the {limit}-byte limit "
                            "(KUBESCRIBE_MAX_AUDIO_BYTES)")
        if not audio.size:
            raise TaskError("BadAudio", "audio is empty (0 bytes)")
        if spec.audio.sha256 and audio.sha256 != spec.audio.sha256:
            raise TaskError("AudioChecksumMismatch", "the audio does not match spec.audio.sha256")
    except TaskError:
        audio.close()
        raise
    return audio
