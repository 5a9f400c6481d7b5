"""Sequential decoding's hallucination guards, held on the batched path too.

faster-whisper's sequential ``transcribe`` judges every 30 s window it decodes by three
thresholds: a text whose gzip compression ratio is above 2.4 (a loop: "going to be going
to be ...") or whose average log-probability is below -1 is decoded again at rising
temperatures, and a window whose no-speech probability is above 0.6 while its
log-probability is below -1 is skipped as silence. Its ``BatchedInferencePipeline``
decodes each clip once, at temperature 0, and yields whatever came out: on four voices
talking at once (``harness.speech.crosstalk``) tiny.en gave a 30 s clip as "going to be"
said over and over, where the sequential path skipped the window.

:func:`guarded` holds the same thresholds on the batched segments. A silent one is
dropped. A doubtful one has its clip decoded once more as sequential decoding decodes a
window first (beam search with timestamps, temperature 0: timestamps alone often end a
loop on real speech), and of that, what is silent, or still loops over what the model
takes for no speech (compression ratio above 2.4 and no-speech probability above 0.6),
is dropped; the rest is kept, as sequential decoding keeps its best try. Sequential
decoding would go on sampling at temperatures 0.2 to 1.0 (five samples each): on the
voices at once that took 50 s per 30 s clip on two cores and came back with text nobody
said (log-probability -2.5) before its skip dropped it; on three sentences said twice in
one clip, real speech whose text compresses 2.42, it came back to the same words. The
one extra decode gets both answers at a fifth of the cost. On clean speech that is not
repeated no segment trips the thresholds, so batching keeps its speed.
``decoding.dropped_segments`` and ``redecoded_segments`` in the result say what the
guards did.

Every batched decode goes through here, so this is also where a piece of a recording is
decoded (:func:`decode_piece`): batched, as clips of speech joined without their pauses
(:func:`batched_speech`), through the guards; sequential, as faster-whisper does it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import SAMPLE_RATE

if TYPE_CHECKING:
    from kubescribe.models import TranscriptionSpec

    from .vad import JoinedSpeech, SpeechQueue

log = logging.getLogger(__name__)

#: faster-whisper's defaults for sequential decoding (``WhisperModel.transcribe``).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6


def silent(seg: Any) -> bool:
    """Sequential decoding's skip: likely no speech, and not said with confidence."""
    return seg.no_speech_prob > NO_SPEECH_THRESHOLD and seg.avg_logprob <= LOG_PROB_THRESHOLD


def doubtful(seg: Any) -> bool:
    """Sequential decoding's reason to decode a window again: a loop, or low confidence."""
    return seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD or seg.avg_logprob < LOG_PROB_THRESHOLD


def unheard(seg: Any) -> bool:
    """After the second decode: silent, or a loop over what the model takes for no speech."""
    return silent(seg) or (seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                           and seg.no_speech_prob > NO_SPEECH_THRESHOLD)


@dataclasses.dataclass
class GuardCounts:
    """What the guards did to one transcription's batched segments."""

    dropped: int = 0
    redecoded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"dropped_segments": self.dropped, "redecoded_segments": self.redecoded}


def shifted(seg: Any, offset: float, until: float) -> Any:
    """A segment decoded from a clip, moved to the clip's place (``offset`` seconds in) and
    kept before ``until``, the clip's end: the last timestamp of a window can point past
    the audio it was given."""

    def at(t: float) -> float:
        return round(min(t + offset, until), 3)

    words = [dataclasses.replace(w, start=at(w.start), end=at(w.end)) for w in seg.words] if seg.words else seg.words
    return dataclasses.replace(seg, start=at(seg.start), end=at(seg.end), words=words)


def redecode(model: Any, samples: np.ndarray, seg: Any, kwargs: dict[str, Any], counts: GuardCounts
             ) -> Iterator[Any]:
    """The clip under ``seg`` (its start to its end in ``samples``' timeline) decoded once
    more by the sequential decoder (beam search with timestamps, temperature 0, its own
    silence skip), without what :func:`unheard` drops."""
    a, b = seg.start, seg.end
    clip = samples[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)]
    if clip.shape[0] < SAMPLE_RATE // 10:
        return
    again, _info = model.transcribe(clip, vad_filter=False, condition_on_previous_text=False, temperature=0.0,
                                    **kwargs)
    for s in again:
        if s.start + a >= b:
            break
        if unheard(s):
            counts.dropped += 1
            continue
        yield shifted(s, a, b)


def guarded(segments: Iterable[Any], model: Any, samples: np.ndarray, kwargs: dict[str, Any],
            counts: GuardCounts) -> Iterator[Any]:
    """The batched ``segments`` of ``samples`` with the sequential thresholds held:
    silent ones dropped, doubtful ones decoded again (``kwargs``: language, task, beam,
    word timestamps, prompt, as the batched call had them). Lazy, like the segments."""
    for seg in segments:
        if silent(seg):
            counts.dropped += 1
            log.info("dropped a batched segment at %.1f-%.1f s as silence (no-speech %.2f, log-prob %.2f)",
                     seg.start, seg.end, seg.no_speech_prob, seg.avg_logprob)
        elif doubtful(seg):
            counts.redecoded += 1
            log.info("decoding %.1f-%.1f s again sequentially (compression ratio %.2f, log-prob %.2f)",
                     seg.start, seg.end, seg.compression_ratio, seg.avg_logprob)
            yield from redecode(model, samples, seg, kwargs, counts)
        else:
            yield seg


def batched(model: Any, samples: np.ndarray, clips: list[tuple[float, float]], batch_size: int,
            kwargs: dict[str, Any], counts: GuardCounts) -> tuple[Iterator[Any], Any]:
    """(segments, info) of faster-whisper's batched pipeline over ``clips`` (seconds) of
    ``samples``, the segments held to the guards. The clips are the VAD's already, so the
    pipeline runs none of its own. Lazy: nothing is decoded before the segments are read."""
    from faster_whisper import BatchedInferencePipeline

    segments, info = BatchedInferencePipeline(model).transcribe(
        samples, batch_size=batch_size, vad_filter=False,
        clip_timestamps=[{"start": a, "end": b} for a, b in clips], **kwargs)
    return guarded(segments, model, samples, kwargs, counts), info


def batched_speech(model: Any, joined: JoinedSpeech, audio: np.ndarray, batch_size: int,
                   kwargs: dict[str, Any], counts: GuardCounts) -> tuple[Iterator[Any], Any]:
    """:func:`batched` over clips of speech regions joined without the pauses between
    them (``audio``: :class:`.vad.JoinedSpeech`), the segment and word times mapped back
    onto the recording. The guards see the joined audio, as the decoder did."""
    segments, info = batched(model, audio, joined.bounds, batch_size, kwargs, counts)
    return (joined.restore(seg) for seg in segments), info


def decode_piece(model: Any, part: np.ndarray, mode: str, spec: TranscriptionSpec, kwargs: dict[str, Any],
                 queue: SpeechQueue, last: bool, counts: GuardCounts) -> tuple[Any, Any]:
    """(segments, info) of one piece, whose clips are in ``queue`` when batched: as many
    whole batches as are waiting, or every clip left at the ``last`` piece. segments is a
    generator: nothing is decoded yet. Batched segments pass sequential decoding's
    hallucination guards; their times are the recording's, sequential ones the piece's."""
    if mode == "batched":
        n = len(queue) if last else len(queue) // spec.batch_size * spec.batch_size
        if n:
            joined, audio = queue.take(n)
            return batched_speech(model, joined, audio, spec.batch_size, kwargs, counts)
    elif part.shape[0] >= SAMPLE_RATE // 10:  # else nothing (or a click) is left after the checkpoint
        return model.transcribe(part, vad_filter=spec.vad, **kwargs)
    return iter(()), None
