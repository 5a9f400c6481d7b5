"""Render a stored transcript (the result JSON) as json, txt, srt or vtt.

Only the JSON is stored; the other formats are derived on read, so one cache entry
serves every format a client asks for. Subtitles follow the usual reading limits: a cue
holds at most two lines of 42 characters and lasts at most 7 s, so a 30 s segment of
batched decoding becomes several cues, cut between words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "txt", "srt", "vtt")

#: Subtitle limits of broadcast style guides (Netflix, BBC): longer lines and cues are
#: hard to read before they disappear.
MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 7.0


@dataclass(frozen=True)
class Cue:
    """One subtitle: its time span and its (at most two) lines."""

    start: float
    end: float
    lines: tuple[str, ...]


def _timestamp(seconds: float, sep: str) -> str:
    ms_total = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms_total, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _segments(result: Mapping[str, Any]):
    for seg in result.get("segments") or []:
        text = (seg.get("text") or "").strip()
        if text:
            yield float(seg["start"]), float(seg["end"]), text, seg.get("words") or []


def wrap(text: str, width: int = MAX_LINE_CHARS) -> list[str]:
    """Greedy line breaking at spaces; a word longer than a line is cut."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _words(start: float, end: float, text: str, words: list[Mapping[str, Any]]) -> list[tuple[float, float, str]]:
    """The segment's words with times: its word timestamps when they spell its text, else
    the segment's span shared out by the length of each word (a fair guess for speech).
    A word list that does not spell the text (partial, or edited) would drop words from
    the subtitles, so it is not used."""
    timed = [(float(w["start"]), float(w["end"]), str(w["word"]).strip()) for w in words
             if str(w.get("word", "")).strip()]
    if timed and "".join(w for _, _, w in timed) == "".join(text.split()):
        return timed
    tokens = text.split()
    total = sum(len(t) + 1 for t in tokens)
    out, t, span = [], start, max(0.0, end - start)
    for token in tokens:
        dt = span * (len(token) + 1) / total
        out.append((t, t + dt, token))
        t += dt
    return out


def cues(result: Mapping[str, Any], *, max_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES,
         max_seconds: float = MAX_CUE_SECONDS) -> Iterator[Cue]:
    """Subtitle cues of a result: each segment cut between words so that every cue fits in
    ``max_lines`` lines of ``max_chars`` and lasts at most ``max_seconds``. A cue never
    spans two segments (a segment boundary is a pause or a speaker's turn)."""

    def cue(group: list[tuple[float, float, str]]) -> Cue:
        start, end = group[0][0], group[-1][1]
        return Cue(start, min(end, start + max_seconds), tuple(wrap(" ".join(w for _, _, w in group), max_chars)))

    def fits(group: list[tuple[float, float, str]]) -> bool:
        lines = wrap(" ".join(w for _, _, w in group), max_chars)
        return len(lines) <= max_lines and group[-1][1] - group[0][0] <= max_seconds

    for start, end, text, words in _segments(result):
        group: list[tuple[float, float, str]] = []
        for word in _words(start, end, text, words):
            if group and not fits(group + [word]):
                yield cue(group)
                group = []
            group.append(word)
        if group:
            yield cue(group)


def to_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n"


def to_txt(result: Mapping[str, Any]) -> str:
    text = (result.get("text") or "").strip()
    return text + "\n" if text else ""


def to_srt(result: Mapping[str, Any]) -> str:
    blocks = []
    for i, c in enumerate(cues(result), 1):
        blocks.append(f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n" + "\n".join(c.lines) + "\n")
    return "\n".join(blocks)


def vtt_escape(text: str) -> str:
    """Cue text as WebVTT reads it back as plain text: ``&`` and ``<`` start a character
    reference and a tag there, so they are written ``&amp;`` and ``&lt;``; ``>`` is written
    ``&gt;`` too, which also keeps ``-->`` (the end of a cue's timing line) out of the
    text while a player still shows it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(result: Mapping[str, Any]) -> str:
    out = ["WEBVTT", ""]
    for c in cues(result):
        out += [f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}", *map(vtt_escape, c.lines), ""]
    return "\n".join(out)


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "json": to_json,
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
}


def render(result: Mapping[str, Any], fmt: str) -> str:
    try:
        return RENDERERS[fmt](result)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}") from None
