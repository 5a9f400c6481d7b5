"""Short requests packed into shared windows: one batched model call for several requests.

Whisper pads every window to 30 s, so a 3 s request alone costs a whole 30 s encoder
pass: on a CPU that pass, not the decoder, is most of a short request's time, and
batching separate windows saves nothing. Here the requests' speech is packed: their
audio is joined with half a second of silence between them (:class:`SharedAudio`), cut into
VAD speech regions, and regions are joined into shared windows of up to 30 s across
request boundaries (:func:`.vad.pack_clips`). The windows go through one batched
pipeline call with word timestamps, and every word goes back to the request whose speech
it overlaps, on that request's own timeline. Each request gets its own result document.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from kubescribe.models import TranscriptionSpec

from .audio import SAMPLE_RATE, AudioStream, Source, open_audio
from .documents import document, word_run
from .guards import GuardCounts, batched
from .vad import CLIP_SECONDS, Regions, pack_clips, speech_regions

#: (audio: bytes or 16 kHz samples, spec, audio SHA-256) of one packed request.
Item = tuple[bytes | np.ndarray, TranscriptionSpec, str | None]


def batch_key(spec: TranscriptionSpec) -> tuple | None:
    """What requests must share to be decoded in one batch (None: this one cannot be).

    One batch is one model call: same model and numerics, same task, beam and prompt,
    and a known language, because the batched pipeline detects the language once for the
    whole batch.
    """
    language = spec.language or ("en" if spec.model.endswith(".en") else "")
    if not language or spec.decoding == "sequential":
        return None
    return (spec.model, spec.device, spec.compute_type, spec.task, language, spec.beam_size,
            spec.word_timestamps, spec.initial_prompt, spec.batch_size)


def decode(data: bytes | BinaryIO) -> np.ndarray:
    """Decode any container/codec PyAV reads into 16 kHz mono float32, all at once.

    For short audio only (packing): it holds the whole recording.
    :meth:`.engine.Engine.transcribe` reads its audio piece by piece instead.
    """
    with open_audio(data) as stream:
        return _read(stream, math.inf)


def short_samples(file: BinaryIO, max_seconds: float) -> np.ndarray | None:
    """The whole decode of audio shorter than ``max_seconds``, to be packed; None for
    longer audio, which is transcribed alone, piece by piece. Audio whose container
    declares it longer is not decoded at all, and audio that declares nothing is decoded
    only until it turns out long, so a long recording is never held whole."""
    with AudioStream(file) as stream:
        declared = stream.total_seconds()
        if declared is not None and declared >= max_seconds:
            return None
        return _read(stream, max_seconds)


#: Samples :func:`_read` takes at a time: 30 s.
READ_SAMPLES = 30 * SAMPLE_RATE


def _read(stream: Source, max_seconds: float) -> np.ndarray | None:
    """What is left of ``stream``, or None once it reaches ``max_seconds``.

    The samples are faster-whisper's ``decode_audio``'s (the stream goes through the same
    resampler), without the full garbage collection that function ends with, which was
    most of its time on a short clip in a runner with a model loaded.
    """
    parts = []
    while not stream.ended:
        parts.append(stream.read(READ_SAMPLES))
        if stream.position >= max_seconds:
            return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


#: Silence between two requests in a shared window. Shorter decoded a little better: 20
#: espeak-ng sentences packed 4 to a window in 14 orders, mean WER 0.106 at 0.5 s against
#: 0.109 at 1 s and 0.112 at 1.5 s (0.105 at 0.3 s, with a wider spread of medians).
REQUEST_GAP_SECONDS = 0.5


class SharedAudio:
    """Several requests' audio end to end, :data:`REQUEST_GAP_SECONDS` of silence apart.

    ``offsets`` and ``durations`` say where each request is in the joined samples,
    ``regions`` where each one's speech is (joined time), for :meth:`split`.
    """

    def __init__(self, parts: list[np.ndarray], regions: list[Regions], gap_seconds: float = REQUEST_GAP_SECONDS):
        gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
        self.offsets: list[float] = []
        self.durations: list[float] = []
        self.regions: list[Regions] = []
        chunks: list[np.ndarray] = []
        t = 0.0
        for p, own in zip(parts, regions):
            self.offsets.append(t)
            self.durations.append(p.shape[0] / SAMPLE_RATE)
            self.regions.append([(a + t, b + t) for a, b in own])
            chunks += [p, gap]
            t += p.shape[0] / SAMPLE_RATE + gap_seconds
        self.samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def owner(self, start: float, end: float) -> int:
        """The request a stretch of joined time belongs to: the one whose speech it
        overlaps most; touching none, the one with the nearest speech. Word times from
        cross-attention often stretch a word into the silence before it, so the silence
        between two requests is not split by position alone."""
        best, best_key = 0, (-1.0, 0.0)
        for i, own in enumerate(self.regions):
            for a, b in own:
                overlap = min(end, b) - max(start, a)
                key = (overlap, 0.0) if overlap > 0 else (0.0, -max(a - end, start - b, 0.0))
                if key > best_key:
                    best, best_key = i, key
        return best

    def split(self, seg: Any) -> list[tuple[int, list[Any]]]:
        """A decoded segment of a shared window as (request, its words) runs, in order."""
        words = list(seg.words or [])
        if not words:  # no alignment (empty text): the segment goes whole to its owner
            return [(self.owner(seg.start, seg.end), [])] if seg.text.strip() else []
        runs: list[tuple[int, list[Any]]] = []
        for w in words:
            i = self.owner(w.start, w.end)
            if runs and runs[-1][0] == i:
                runs[-1][1].append(w)
            else:
                runs.append((i, [w]))
        return runs


def transcribe_packed(load_model: Callable[[TranscriptionSpec], Any], items: list[Item], clip_gap_seconds: float
                      ) -> list[dict[str, Any]]:
    """Several requests with the same :func:`batch_key`, decoded together; one result
    document each, in order. ``load_model`` gives the model for the first spec, and is
    called only once the audio has decoded (bad audio fails before a model loads). The
    caller keeps tenants apart (only requests of one namespace share windows: a window's
    words condition each other)."""
    if not items:
        return []
    keys = {batch_key(spec) for _, spec, _ in items}
    if None in keys or len(keys) != 1:
        raise ValueError("requests in one batch must share model, task, language, beam, prompt and batch size")
    first = items[0][1]
    # Whole-file decoding, not pieces: packed requests are short by design (the pool packs
    # only audio under batched_min_seconds; longer requests go through Engine.transcribe).
    parts = [decode(d) if isinstance(d, (bytes, bytearray)) else d for d, _, _ in items]
    shared = SharedAudio(parts, [speech_regions(p) for p in parts])
    clips = pack_clips(shared.regions, CLIP_SECONDS, clip_gap_seconds)
    model = load_model(first)
    language = first.language or "en"
    per: list[list[dict[str, Any]]] = [[] for _ in items]
    counts = GuardCounts()
    t0 = time.perf_counter()
    if clips:
        kwargs: dict[str, Any] = dict(language=language, task=first.task, beam_size=first.beam_size,
                                      word_timestamps=True, initial_prompt=first.initial_prompt or None)
        segments, _info = batched(model, shared.samples, clips, first.batch_size, kwargs, counts)
        for seg in segments:  # a generator: the decoding happens here
            for i, words in shared.split(seg):
                per[i].append(word_run(words, seg, len(per[i]) + 1, -shared.offsets[i], shared.durations[i],
                                       first.word_timestamps))
    elapsed = time.perf_counter() - t0
    total = sum(shared.durations) or 1.0
    return [document(per[i], spec, language=language, language_probability=1.0, duration=shared.durations[i],
                     after_vad=sum(b - a for a, b in shared.regions[i]),
                     elapsed=elapsed * shared.durations[i] / total,  # this request's share of the batch's time
                     mode="batched", audio_sha256=sha, shared_with=len(items) - 1, guards=counts)
            for i, (_, spec, sha) in enumerate(items)]
