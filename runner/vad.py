"""Where the speech is, and how it is joined into the clips that batched decoding reads.

Whisper pads every window to 30 s, so a clip costs the same whether it holds 2 s of
speech or 30 s: speech regions are joined into clips of up to :data:`CLIP_SECONDS`, and a
pause longer than ``max_gap`` ends a clip so that a segment never stretches over a long
silence (its times stay on the speech). One request's speech and several requests'
speech packed into shared windows (:mod:`.packing`) are joined by the same rule.
"""

from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE

#: Whisper's window: batched decoding joins speech into clips of at most this length.
CLIP_SECONDS = 30.0

Regions = list[tuple[float, float]]


def speech_regions(samples: np.ndarray) -> Regions:
    """Where the Silero VAD hears speech, in seconds (regions of at most 30 s)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(samples, VadOptions(max_speech_duration_s=CLIP_SECONDS,
                                                      min_silence_duration_ms=160))
    return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in found]


def pack_clips(regions: list[Regions], max_seconds: float, max_gap: float) -> Regions:
    """Speech regions, request by request (one request: ``[regions]``), joined into clips
    for batched decoding, in order.

    A clip grows while it spans at most ``max_seconds``. Inside one request a pause
    longer than ``max_gap`` ends it; across a request boundary it goes on whatever the
    pause, because the silence there is the joining's own (:class:`.packing.SharedAudio`
    puts it there), not the speaker's.
    """
    clips: Regions = []
    last_owner = -1
    for i, own in enumerate(regions):
        for start, end in own:
            if clips and end - clips[-1][0] <= max_seconds and (i != last_owner or start - clips[-1][1] <= max_gap):
                clips[-1] = (clips[-1][0], end)
            else:
                clips.append((start, end))
            last_owner = i
    return clips
