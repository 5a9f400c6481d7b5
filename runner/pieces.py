"""Where a long recording is cut into the pieces the engine transcribes one at a time.

A piece that is not the recording's last ends in a pause the VAD found near its end
(:func:`cut_point`; for batched decoding, before its last clip: :func:`clip_cut`), so no
word is split at a seam; the audio after the cut is carried into the next piece.
:func:`pieces` is the plain cut, every ``piece_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .audio import SAMPLE_RATE, AudioStream

#: Seconds of audio the engine transcribes at a time (``EngineOptions.piece_seconds``).
#: Five minutes are 19 MB of samples; the Silero VAD over them briefly needs ~150 MB more
#: (faster-whisper runs it on up to 320 s at once, so a longer piece would not cost more
#: there) and took 2.6 s on a busy CPU core. A piece this long still gives the batched
#: pipeline ten 30 s clips to fill its batch of 8 on a GPU; a shorter one would save some
#: of the VAD's memory but adds seams, each a VAD pass over the tail carried on (see
#: :func:`cut_point`).
PIECE_SECONDS = 300.0
#: A piece that is not the recording's last is never cut in its last seconds: speech the
#: VAD sees starting there may go on past the piece, and the VAD's view of a region that
#: touches the end of its input is the least certain.
SEAM_TAIL_SECONDS = 2.0
#: Nor in its first second, so that every piece moves the transcription on.
SEAM_ADVANCE_SECONDS = 1.0
#: A cut inside a pause keeps this far from the speech on either side (less in a
#: shorter pause: then the pause's middle).
SEAM_MARGIN_SECONDS = 1.0
#: The shortest piece :func:`cut_point` can always cut in a pause or a VAD split
#: (``EngineOptions.piece_seconds`` is at least this).
MIN_PIECE_SECONDS = 35.0


@dataclass(frozen=True)
class Piece:
    """Samples of a recording, from ``start`` seconds into it."""

    start: float
    samples: np.ndarray

    @property
    def end(self) -> float:
        return self.start + self.samples.shape[0] / SAMPLE_RATE


def pieces(file: BinaryIO, piece_seconds: float = PIECE_SECONDS, start: float = 0.0) -> Iterator[Piece]:
    """A recording as consecutive pieces of ``piece_seconds`` (the last one shorter),
    from ``start`` seconds on; joined, they are the whole decode from there."""
    n = max(1, int(round(piece_seconds * SAMPLE_RATE)))
    with AudioStream(file, start) as stream:
        while not stream.ended:
            at = stream.position
            samples = stream.read(n)
            if samples.size:
                yield Piece(at, samples)


def clip_cut(clips: list[list[tuple[float, float]]], advance: float = SEAM_ADVANCE_SECONDS,
             margin: float = SEAM_MARGIN_SECONDS) -> float | None:
    """For batched decoding, where to end a piece that is not the recording's last, given
    its speech joined into ``clips`` (:func:`~.vad.join_speech`): in the pause before the
    last clip, ``margin`` from its speech (less in a shorter pause: its middle), so that
    clip, which may go on past the piece, is carried into the next piece whole and a
    seam costs no extra 30 s window. None when there are fewer than two clips or the
    cut would fall in the first ``advance`` seconds: then :func:`cut_point`."""
    if len(clips) < 2:
        return None
    pause_start, pause_end = clips[-2][-1][1], clips[-1][0][0]
    cut = pause_end - min((pause_end - pause_start) / 2, margin)
    return cut if cut >= advance else None


def seam(regions: list[tuple[float, float]], length: float, clips: list[list[tuple[float, float]]] | None
         ) -> float:
    """Where to end a piece of ``length`` seconds that is not the recording's last: before
    its last clip when it is decoded in ``clips`` (:func:`clip_cut`), else in a pause near
    its end (:func:`cut_point`)."""
    return (clip_cut(clips) if clips else None) or cut_point(regions, length)


def cut_point(regions: list[tuple[float, float]], length: float, tail: float = SEAM_TAIL_SECONDS,
              advance: float = SEAM_ADVANCE_SECONDS, margin: float = SEAM_MARGIN_SECONDS) -> float:
    """Where to end a piece of ``length`` seconds that is not the recording's last, given
    the VAD's speech ``regions`` in it: in the last pause that starts before its final
    ``tail`` seconds and ends after its first ``advance`` second, ``margin`` away from the
    speech on both sides where the pause is long enough (else at its middle), as late as
    that allows. The audio after the cut is carried into the next piece.

    The VAD (:func:`~.vad.speech_regions`) cuts speech longer than 30 s at its
    quietest point, so a piece longer than ``30 + tail + advance`` seconds always has a
    pause or such a split; without either (a shorter piece of unbroken sound) the cut
    falls at ``length - tail``.
    """
    lo, hi = advance, length - tail
    if hi <= lo:
        return length
    edges = [0.0] + [x for region in regions for x in region] + [length]
    gaps = list(zip(edges[::2], edges[1::2]))  # silence before, between and after the regions
    for gap_start, gap_end in reversed(gaps):
        if gap_start < hi and gap_end > lo and gap_end >= gap_start:
            m = min((gap_end - gap_start) / 2, margin)
            return min(max(gap_start + m, min(hi, gap_end - m), lo), hi)
    return hi


def resume_offset(done: list[dict[str, Any]], duration: float) -> float:
    """Where a resumed run starts decoding: the end of the last checkpointed segment.

    Every checkpointed segment is kept and decoding restarts after it, so the seam has no
    duplicated and no missing segment. Clamped to the audio (a checkpoint of other audio
    cannot push it past the end).
    """
    if not done:
        return 0.0
    return max(0.0, min(float(done[-1]["end"]), duration))
