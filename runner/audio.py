"""Audio decoded as it is read, so that memory follows what is read and not the
recording (:mod:`.pieces` says where the engine cuts it).

faster-whisper's ``decode_audio`` collects a whole file before returning it: 16 kHz
float32 is 230 MB an hour, and its 16-bit buffer is still held when the float copy is
made (345 MB an hour; a runner given a 2-hour FLAC peaked at 1.17 GiB). Here PyAV
demuxes and decodes packet by packet, and the resampler takes the frames in groups as
``decode_audio``'s does (:mod:`.frames`), so a reader holds one piece (a few minutes) and
a group in flight. The samples are the
ones ``decode_audio`` makes (the same resampler: 16-bit mono at 16 kHz, then divided by
32768), so short and long audio, and a result made before this module, decode alike.

The source is any seekable binary file object: the bytes of a request held in Redis, a
file, or a ranged reader over an object in a bucket. Resuming seeks the container to the
offset where it supports that and decodes from the start otherwise (:class:`AudioStream`).
"""

from __future__ import annotations

import io
import itertools
import logging
from typing import BinaryIO, Protocol

import numpy as np

from . import frames as frames_mod
from .frames import SAMPLE_RATE

log = logging.getLogger(__name__)

__all__ = ["SAMPLE_RATE", "AudioStream", "BadAudio", "SampleStream", "Source", "open_audio"]


class BadAudio(ValueError):
    """The bytes are not decodable audio, or contain no samples. Final: do not retry."""


class Source(Protocol):
    """What the engine reads audio from: :class:`AudioStream` or :class:`SampleStream`."""

    start: float

    def read(self, n: int) -> np.ndarray: ...

    @property
    def position(self) -> float: ...

    @property
    def ended(self) -> bool: ...

    def total_seconds(self) -> float | None: ...

    def close(self) -> None: ...


def _size(file: BinaryIO) -> int | None:
    try:
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
        return end
    except (OSError, AttributeError, ValueError):
        return None


class AudioStream:
    """A recording decoded to 16 kHz mono float32 as it is read.

    Opening reads the container's header and, for ``start > 0``, goes to ``start``: with
    ``container.seek`` where the container can seek (WAV, FLAC, Ogg, MP3, MP4, ...), then
    decoding from the frame before the offset and dropping the samples before it; where
    it cannot, or the seek lands after the offset or without timestamps, by decoding from
    the beginning and dropping everything before the offset. After a seek the samples
    start on the input's own frame boundary, so they may sit a fraction of a 16 kHz
    sample off those of a decode from the start (inaudible; the length agrees within a
    sample). A ``start`` past the end leaves the stream at the end.

    Args:
        file: a seekable binary file object (``io.BytesIO``, an open file, a ranged
            reader); read from its beginning whatever its position, never closed here.
        start: seconds into the recording where reading starts.

    Raises:
        BadAudio: the file is empty, not a container PyAV reads, has no audio stream,
            or holds no audio samples.
    """

    def __init__(self, file: BinaryIO, start: float = 0.0):
        self._file = file
        self._size = _size(file)
        if self._size == 0:
            raise BadAudio("audio is empty (0 bytes)")
        self._container = None
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._exhausted = False
        self._decoded = 0  # samples decoded so far, counted from self._origin
        want = max(0, int(round(max(0.0, start) * SAMPLE_RATE)))
        try:
            if not (want > 0 and self._begin_at(want)):
                self._begin_at(want, seek=False)
        except BaseException:
            self.close()
            raise
        self.start = self._first / SAMPLE_RATE

    # -- opening ----------------------------------------------------------------------
    def _open(self):
        import av

        self.close()
        self._file.seek(0)
        try:
            container = av.open(self._file, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:  # InvalidDataError and friends; the file's own errors pass
            raise BadAudio(f"not a readable audio file ({type(exc).__name__}: {exc})") from None
        self._container = container
        if not container.streams.audio:
            raise BadAudio("the file holds no audio stream (not audio, or a video without sound)")
        self._stream = container.streams.audio[0]
        self._metadata = frames_mod.metadata_seconds(container, self._stream)
        offset = self._stream.start_time
        self._stream_start = float(offset * self._stream.time_base) if offset is not None else 0.0
        return container

    def _begin_at(self, want: int, seek: bool = True) -> bool:
        """Position the decoder so the next sample read is sample ``want`` (or the end).

        With ``seek`` a failed or unusable seek returns False (the caller decodes from
        the start instead); without, decoding starts at the beginning and cannot fail
        that way."""
        import av

        container = self._open()
        self._buffer, self._buffered, self._exhausted, self._decoded = [], 0, False, 0
        frames, origin = frames_mod.decoded_frames(container, self._stream), 0
        if seek:
            try:
                frames_mod.seek(container, want / SAMPLE_RATE)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                log.info("seek to %.3fs failed (%s): decoding from the start", want / SAMPLE_RATE, exc)
                return False
            frames = frames_mod.decoded_frames(container, self._stream)
            first = next(frames, None)
            at = None if first is None or first.time is None else first.time - self._stream_start
            if at is None or at * SAMPLE_RATE > want + 1:
                log.info("seek to %.3fs landed at %s: decoding from the start", want / SAMPLE_RATE, at)
                return False
            origin = int(round(at * SAMPLE_RATE))
            frames = itertools.chain([first], frames)
        self._origin = origin
        self._chunks = frames_mod.resampled(frames)
        skip = want - origin
        while skip > 0 and self._pull():  # drop what comes before the offset, a chunk at a time
            drop = min(skip, self._buffered)
            if drop:
                self._take(drop)
                skip -= drop
        if self._buffered == 0:
            self._pull()  # so that `ended` is known, and an empty file is caught here
        self._first = self._origin + self._decoded - self._buffered
        if self._first == 0 and self._exhausted and self._buffered == 0:
            raise BadAudio("the file holds no audio samples (truncated or not audio)")
        return True

    # -- reading ------------------------------------------------------------------------
    def _pull(self) -> bool:
        """Decode one more chunk into the buffer; False at the end of the stream."""
        import av

        if self._exhausted:
            return False
        try:
            chunk = next(self._chunks, None)
        except av.error.FFmpegError as exc:  # a codec PyAV has no decoder for, and the like
            raise BadAudio(f"not a readable audio file ({type(exc).__name__}: {exc})") from None
        if chunk is None:
            self._exhausted = True
            return False
        if chunk.size:
            self._buffer.append(chunk)
            self._buffered += chunk.size
            self._decoded += chunk.size
        return True

    def _take(self, n: int) -> np.ndarray:
        joined = self._buffer[0] if len(self._buffer) == 1 else np.concatenate(self._buffer)
        out, rest = joined[:n], joined[n:]
        self._buffer = [rest.copy()] if rest.size else []  # a copy: the joined piece is freed
        self._buffered = rest.size
        return out

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples (fewer only at the end; none once :attr:`ended`)."""
        while self._buffered < n and self._pull():
            pass
        if self._buffered == 0:
            return np.zeros(0, dtype=np.float32)
        out = self._take(min(n, self._buffered))
        if self._buffered == 0:
            self._pull()  # look ahead one chunk, so that `ended` is exact
        return out

    @property
    def position(self) -> float:
        """Seconds into the recording of the next sample :meth:`read` returns."""
        return (self._origin + self._decoded - self._buffered) / SAMPLE_RATE

    @property
    def ended(self) -> bool:
        return self._exhausted and self._buffered == 0

    def total_seconds(self) -> float | None:
        """The recording's length: exact once :attr:`ended`; before that the container's
        duration metadata, or else an estimate from the share of the file read so far
        (None before any was); never less than what has been decoded."""
        decoded = (self._origin + self._decoded) / SAMPLE_RATE
        if self._exhausted:
            return decoded
        if self._metadata:
            return max(self._metadata, decoded)
        tell = self._tell()  # where the demuxer has read to, a little ahead of the samples
        if self._size and tell and self._decoded:
            return max(decoded, decoded * self._size / tell)
        return None

    def _tell(self) -> int | None:
        try:
            return self._file.tell()
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SampleStream:
    """Samples already decoded, read like an :class:`AudioStream` (no copy)."""

    def __init__(self, samples: np.ndarray, start: float = 0.0):
        self._samples = samples
        self._at = min(samples.shape[0], max(0, int(round(max(0.0, start) * SAMPLE_RATE))))
        self.start = self._at / SAMPLE_RATE

    def read(self, n: int) -> np.ndarray:
        out = self._samples[self._at:self._at + n]
        self._at += out.shape[0]
        return out

    @property
    def position(self) -> float:
        return self._at / SAMPLE_RATE

    @property
    def ended(self) -> bool:
        return self._at >= self._samples.shape[0]

    def total_seconds(self) -> float | None:
        return self._samples.shape[0] / SAMPLE_RATE

    def close(self) -> None:
        pass

    def __enter__(self) -> "SampleStream":
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_audio(data: bytes | bytearray | np.ndarray | BinaryIO, start: float = 0.0) -> AudioStream | SampleStream:
    """A :class:`Source` for the engine: bytes and file objects are decoded as read,
    an array of 16 kHz samples is read as it is."""
    if isinstance(data, np.ndarray):
        return SampleStream(data, start)
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not len(data):
            raise BadAudio("audio is empty (0 bytes)")
        data = io.BytesIO(data)  # shares the bytes until written to: no copy
    return AudioStream(data, start)
