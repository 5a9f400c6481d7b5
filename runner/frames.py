"""The decoding pipeline under :class:`.audio.AudioStream`: PyAV demuxes and decodes a
container packet by packet (:func:`decoded_frames`), and the frames become 16 kHz mono
float32 chunks through the resampler faster-whisper's ``decode_audio`` uses
(:func:`resampled`), so the samples are the ones it makes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)

#: The rate every sample in the runner is at: Whisper's.
SAMPLE_RATE = 16000


def metadata_seconds(container, stream) -> float | None:
    """The length the container declares (header, index or bitrate estimate), if any."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def seek(container, seconds: float) -> None:
    import av

    container.seek(int(seconds * av.time_base))


def decoded_frames(container, stream) -> Iterator:
    """Decoded frames; a damaged packet is skipped (as faster-whisper skips an invalid
    frame), damage the demuxer cannot read past ends the stream like a truncation."""
    import av

    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            log.warning("audio stream damaged, read up to it: %s", exc)
            return
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


#: Source samples grouped before they go through the resampler, as ``decode_audio`` groups
#: them: one call per frame of a WAV (2,048 samples) cost twice the time of the decode.
GROUP_SAMPLES = 500_000


def resampled(frames: Iterator) -> Iterator[np.ndarray]:
    """Frames as 16 kHz mono float32 chunks, through the resampler ``decode_audio``
    uses (16-bit, then / 32768), grouped into ``GROUP_SAMPLES`` first as it groups them
    (same samples, fewer calls), flushed at the end. A stream whose format changes
    midway (MP3s joined end to end) flushes the resampler there and goes on with a new
    one, where a single resampler refuses the frame."""
    import av

    resampler = fifo = kind = None

    def out(frame) -> Iterator[np.ndarray]:
        for o in resampler.resample(frame):
            yield o.to_ndarray().reshape(-1).astype(np.float32) / 32768.0

    for frame in frames:
        frame.pts = None  # the resampler and the group check timestamps for continuity; seeks break it
        this = (frame.format.name, frame.layout.name, frame.sample_rate)
        if this != kind:
            if fifo is not None:
                if fifo.samples:
                    yield from out(fifo.read())
                yield from out(None)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            fifo, kind = av.AudioFifo(), this
        fifo.write(frame)
        if fifo.samples >= GROUP_SAMPLES:
            yield from out(fifo.read())
    if fifo is not None:
        if fifo.samples:
            yield from out(fifo.read())
        yield from out(None)
