"""Where a long recording is cut into the pieces the engine transcribes one at a time.

A piece that is not the recording's last ends in a pause the VAD found near its end
(:func:`cut_point`), so no word is split at a seam; the audio after the cut is carried
into the next piece. :func:`pieces` is the plain cut, every ``piece_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

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
