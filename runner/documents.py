"""The result document: what the store keeps, the renderers read and the outcome sums up.

One builder for every way a request is transcribed (alone, piece by piece, or packed
with others into shared windows), so the document has one shape; the segment builders
put faster-whisper's segments and words on the request's own timeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from kubescribe import __version__
from kubescribe.models import TranscriptionSpec, now_rfc3339


def document(segments: list[dict[str, Any]], spec: TranscriptionSpec, *, language: str, language_probability: float,
             duration: float, after_vad: float, elapsed: float, mode: str, audio_sha256: str | None,
             resumed_at: float | None = None, shared_with: int | None = None, guards: Any = None
             ) -> dict[str, Any]:
    """The result document of one request.

    Args:
        segments: result segments (:func:`segment`, :func:`word_run`), numbered from 1.
        duration: seconds of audio; ``elapsed``: seconds of work spent on it (a packed
            request's share of its batch), so the real-time factor is theirs.
        after_vad: seconds of audio the model was given (speech only, when the VAD ran).
        mode: ``batched`` or ``sequential``, as :func:`.engine.choose_decoding` chose.
        resumed_at: where a resumed run started decoding (None: from the start).
        shared_with: how many other requests shared the windows (None: decoded alone).
        guards: what sequential decoding's hallucination guards did to batched segments
            (:class:`.guards.GuardCounts`: dropped as silence, decoded again).
    """
    decoding: dict[str, Any] = {"mode": mode, "requested": spec.decoding,
                                "batch_size": spec.batch_size if mode == "batched" else None,
                                "resumed_at_seconds": None if resumed_at is None else round(resumed_at, 3)}
    if shared_with is not None:
        decoding["shared_with"] = shared_with
    if guards is not None:
        decoding.update(guards.as_dict())
    return {
        "text": " ".join(s["text"] for s in segments if s["text"]),
        "segments": segments,
        "language": language,
        "language_probability": round(language_probability, 4),
        "audio_duration_seconds": round(duration, 3),
        "duration_after_vad_seconds": round(after_vad, 3),
        "processing_seconds": round(elapsed, 3),
        "realtime_factor": round(elapsed / duration, 4) if duration > 0 else None,
        "decoding": decoding,
        "model": spec.model,
        "parameters": spec.output_params(),
        "audio_sha256": audio_sha256,
        "created_at": now_rfc3339(),
        "kubescribe_version": __version__,
    }


def segment(seg: Any, number: int, offset: float, words: bool, until: float = math.inf) -> dict[str, Any]:
    """A faster-whisper segment as result JSON, shifted by ``offset`` seconds and kept
    before ``until`` (the end of the audio it was decoded from: Whisper's last timestamp
    in a window can point past it, which would overlap the next piece's first segment)."""
    return _item(number, seg, seg.text.strip(), seg.start, seg.end, seg.words if words else None,
                 lambda t: round(min(t + offset, until), 3))


def word_run(words: list[Any], seg: Any, number: int, offset: float, duration: float, keep_words: bool
             ) -> dict[str, Any]:
    """One request's run of words from a shared window's segment, as a result segment on
    that request's timeline (shifted by ``offset``, clamped to its ``duration``)."""
    if not words:
        return segment(seg, number, offset, False)
    return _item(number, seg, "".join(w.word for w in words).strip(), words[0].start, words[-1].end,
                 words if keep_words else None, lambda t: round(min(max(t + offset, 0.0), duration), 3))


def _item(number: int, seg: Any, text: str, start: float, end: float, words: list[Any] | None,
          at: Callable[[float], float]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": number,
        "start": at(start),
        "end": at(end),
        "text": text,
        "avg_logprob": round(seg.avg_logprob, 4),
        "no_speech_prob": round(seg.no_speech_prob, 4),
    }
    if words:
        item["words"] = [{"start": at(w.start), "end": at(w.end), "word": w.word.strip(),
                          "probability": round(w.probability, 4)} for w in words]
    return item
