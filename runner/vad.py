"""Where the speech is, and how it is joined into the clips that batched decoding reads.

Whisper pads every window to 30 s, so a clip costs the same whether it holds 2 s of
speech or 30 s: speech regions are joined into clips of up to :data:`CLIP_SECONDS`, and a
pause longer than ``max_gap`` ends a clip so that a segment never stretches over a long
silence (its times stay on the speech). One request's speech and several requests'
speech packed into shared windows (:mod:`.packing`) are joined by the same rule. The
speech itself is found by the Silero VAD, a long piece in parts at once, one per CPU
(:func:`speech_regions`).
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE
from .resources import malloc_trim, usable_cpus

#: Whisper's window: batched decoding joins speech into clips of at most this length.
CLIP_SECONDS = 30.0

Regions = list[tuple[float, float]]  # seconds
Spans = list[tuple[int, int]]  # samples


#: Audio at least this long is searched for speech in parts, one per usable CPU, at
#: once (:func:`speech_regions`). The Silero VAD runs on one thread, and the pipeline
#: waits for it: on two cores, 300 s took 0.6 s in one part and 0.3 s in two.
PARALLEL_MIN_SECONDS = 60.0
#: Where two parts meet: in the middle of the quietest stretch of this many samples
#: (about a second: the middle of a pause long enough that the VAD's padding of 0.4 s on
#: either side of speech fits in it)...
QUIET_SAMPLES = 32 * 512
#: ...within this many seconds of the even split.
QUIET_SEARCH_SECONDS = 15.0
_VAD_WINDOW = 512

_pool: tuple[ThreadPoolExecutor, int] | None = None  # the VAD's threads, and how many
_pool_lock = threading.Lock()


def _regions(samples: np.ndarray) -> Spans:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(samples, VadOptions(max_speech_duration_s=CLIP_SECONDS,
                                                      min_silence_duration_ms=160))
    return [(r["start"], r["end"]) for r in found]


def split_points(samples: np.ndarray, parts: int) -> list[int]:
    """Sample offsets that cut ``samples`` into ``parts`` parts for the VAD, start and
    end included: each cut in the quietest :data:`QUIET_SAMPLES` within
    :data:`QUIET_SEARCH_SECONDS` of an even split (a pause, in speech), so that no
    speech is likely to be cut and the VAD, whose state starts afresh in each part,
    starts it in silence, as a whole run's state would be there."""
    n = samples.shape[0]
    if parts < 2 or n < PARALLEL_MIN_SECONDS * SAMPLE_RATE:
        return [0, n]
    reach = int(QUIET_SEARCH_SECONDS * SAMPLE_RATE) // _VAD_WINDOW * _VAD_WINDOW
    width = QUIET_SAMPLES // _VAD_WINDOW
    cuts = [0]
    for k in range(1, parts):
        even = n * k // parts // _VAD_WINDOW * _VAD_WINDOW
        lo = max(even - reach, cuts[-1] + QUIET_SAMPLES)
        windows = (min(even + reach, n - QUIET_SAMPLES) - lo) // _VAD_WINDOW
        if windows < width:
            continue
        # each window's energy, summed over every run of `width` windows (cumulative sums)
        energy = np.square(samples[lo:lo + windows * _VAD_WINDOW]).reshape(windows, _VAD_WINDOW).sum(axis=1)
        runs = np.cumsum(np.concatenate([[0.0], energy]))
        quietest = int(np.argmin(runs[width:] - runs[:-width]))
        # on a window boundary, so the windows after it line up with a whole run's
        cuts.append(lo + (quietest + width // 2) * _VAD_WINDOW)
    return cuts + [n]


def joined_at(found: list[Spans], cuts: list[int]) -> Regions:
    """The regions of each part (``found``, in samples from the part's start) on the
    whole audio's time, in seconds. Speech that runs into the end of a part and on from
    the start of the next is one region again, unless it would then pass
    :data:`CLIP_SECONDS`."""
    out: Spans = []
    for k, spans in enumerate(found):
        start = cuts[k]
        for i, (a, b) in enumerate(spans):
            a, b = a + start, b + start
            if i == 0 and out and a <= start <= out[-1][1] and b - out[-1][0] <= CLIP_SECONDS * SAMPLE_RATE:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in out]


def speech_regions(samples: np.ndarray, parts: int | None = None) -> Regions:
    """Where the Silero VAD hears speech, in seconds (regions of at most 30 s).

    Audio of :data:`PARALLEL_MIN_SECONDS` or more is cut in pauses (:func:`split_points`)
    into ``parts`` (default: the CPUs this process may use) searched at once on a thread
    each (the first on the calling thread): the VAD's model runs outside the GIL, on
    one thread per call. The regions are a whole run's, their edges within 0.1 s
    (tests/test_pieces.py): each part's VAD starts afresh, in a pause."""
    global _pool
    cuts = split_points(samples, usable_cpus() if parts is None else parts)
    if len(cuts) == 2:
        found = [_regions(samples)]
    else:
        with _pool_lock:
            if _pool is None or _pool[1] < len(cuts) - 2:
                _pool = (ThreadPoolExecutor(len(cuts) - 2, thread_name_prefix="vad"), len(cuts) - 2)
            pool = _pool[0]
        rest = [pool.submit(_regions, samples[cuts[k]:cuts[k + 1]]) for k in range(1, len(cuts) - 1)]
        found = [_regions(samples[:cuts[1]])] + [f.result() for f in rest]
    if samples.shape[0] >= PARALLEL_MIN_SECONDS * SAMPLE_RATE:
        # The VAD's buffers (~150 MB for 300 s) go back to the malloc arena of the
        # thread that ran it, which keeps them for later: `kubescribe transcribe` of 10
        # and 30 min peaked at 657 and 773 MiB with two parts at once, against 534 and
        # 535 MiB in one; handed back here, 483-500 and 502-518 MiB.
        malloc_trim()
    return joined_at(found, cuts)


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


def join_speech(regions: Regions, max_seconds: float, max_gap: float) -> list[Regions]:
    """One request's speech regions, in order, grouped into clips of at most
    ``max_seconds`` *of speech*: a clip is decoded as its regions joined end to end, the
    pauses between them left out (faster-whisper's own batched pipeline does so:
    ``collect_chunks``), so a window carries speech, not silence, and fewer windows
    cover a recording. A pause longer than ``max_gap`` still ends a clip, so that a
    segment's times never span a long silence."""
    clips: list[Regions] = []
    speech = 0.0
    for start, end in regions:
        if clips and speech + (end - start) <= max_seconds and start - clips[-1][-1][1] <= max_gap:
            clips[-1].append((start, end))
            speech += end - start
        else:
            clips.append([(start, end)])
            speech = end - start
    return clips



def in_samples(clips: list[Regions], offset: int = 0) -> list[Spans]:
    """Clips of regions in seconds as sample spans, ``offset`` samples on."""
    return [[(offset + int(round(a * SAMPLE_RATE)), offset + int(round(b * SAMPLE_RATE))) for a, b in clip]
            for clip in clips]


class JoinedSpeech:
    """Clips of speech regions (:func:`join_speech`, as sample spans: :func:`in_samples`)
    as one array of their regions end to end, and the way back: a time in that array to
    the recording's own.

    A segment decoded from a clip stays on that clip's regions (found by its middle); its
    start goes with the region it opens and its end with the region it closes, so a
    boundary between two regions never maps into the pause between them. A word goes
    with the region its middle is in, as faster-whisper's ``restore_speech_timestamps``
    does, and stays inside it; a segment with words starts and ends with them.
    """

    def __init__(self, clips: list[Spans]):
        self.spans: Spans = [span for clip in clips for span in clip]  # in the recording
        self.bounds: list[tuple[float, float]] = []  # each clip in the joined array, seconds
        self._firsts: list[int] = []  # each clip's first region
        self._ends: list[int] = []  # each region's end in the joined array, samples
        at = 0
        for clip in clips:
            self._firsts.append(len(self._ends))
            first = at
            for a, b in clip:
                at += b - a
                self._ends.append(at)
            self.bounds.append((first / SAMPLE_RATE, at / SAMPLE_RATE))
        self._clip_ends = [int(round(b * SAMPLE_RATE)) for _, b in self.bounds]

    def audio(self, samples: np.ndarray) -> np.ndarray:
        """The regions of ``samples`` (the recording, or what of it the spans count from)
        joined."""
        return np.concatenate([samples[a:b] for a, b in self.spans]) if self.spans else samples[:0]

    def _region(self, t: float, lo: int, hi: int, closing: bool) -> int:
        x = int(round(t * SAMPLE_RATE))
        k = (bisect.bisect_left if closing else bisect.bisect_right)(self._ends, x, lo, hi)
        return min(k, hi - 1)

    def _at(self, t: float, k: int) -> float:
        a, b = self.spans[k]
        start = self._ends[k] - (b - a)
        x = min(max(int(round(t * SAMPLE_RATE)) - start, 0), b - a)
        return round((a + x) / SAMPLE_RATE, 3)

    def restore(self, seg: Any) -> Any:
        """``seg`` (a faster-whisper segment in the joined array's time) in the
        recording's time."""
        c = min(bisect.bisect_right(self._clip_ends, int(round((seg.start + seg.end) / 2 * SAMPLE_RATE))),
                len(self.bounds) - 1)
        lo = self._firsts[c]
        hi = self._firsts[c + 1] if c + 1 < len(self._firsts) else len(self.spans)
        if seg.words:
            words = []
            for w in seg.words:
                k = self._region((w.start + w.end) / 2, lo, hi, closing=False)
                words.append(dataclasses.replace(w, start=self._at(w.start, k), end=self._at(w.end, k)))
            return dataclasses.replace(seg, start=words[0].start, end=words[-1].end, words=words)
        return dataclasses.replace(seg, start=self._at(seg.start, self._region(seg.start, lo, hi, closing=False)),
                                   end=self._at(seg.end, self._region(seg.end, lo, hi, closing=True)))


class SpeechQueue:
    """Clips of a long recording waiting to fill a batch, across its pieces: a piece's
    clips are added with their samples (copied, so the piece itself can go), and whole
    batches are taken. A piece of nine clips would otherwise decode a batch of eight and
    a batch of one, which costs about what a second full batch does: on a 10-minute
    recording 18 clips in batches of 9 and 9 took 0.8 s more than 8, 8 and 2."""

    def __init__(self) -> None:
        self._clips: list[Spans] = []
        self._audio: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._clips)

    @property
    def start(self) -> float | None:
        """Where the first waiting clip starts in the recording, in seconds."""
        return self._clips[0][0][0] / SAMPLE_RATE if self._clips else None

    def add(self, clips: list[Regions], samples: np.ndarray, offset: int) -> None:
        """``clips`` of ``samples``, which start ``offset`` samples into the recording."""
        for clip in in_samples(clips):
            self._clips.append([(a + offset, b + offset) for a, b in clip])
            self._audio.append(np.concatenate([samples[a:b] for a, b in clip]))

    def take(self, n: int) -> tuple[JoinedSpeech, np.ndarray]:
        """The first ``n`` clips joined, and their audio."""
        clips, self._clips = self._clips[:n], self._clips[n:]
        audio, self._audio = self._audio[:n], self._audio[n:]
        return JoinedSpeech(clips), (np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32))
