"""Render a stored transcript (the result JSON) as json, txt, srt or vtt.

Only the JSON is stored; the other formats are derived on read, so one cache entry
serves every format a client asks for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

FORMATS = ("json", "txt", "srt", "vtt")


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
            yield float(seg["start"]), float(seg["end"]), text


def to_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n"


def to_txt(result: Mapping[str, Any]) -> str:
    text = (result.get("text") or "").strip()
    return text + "\n" if text else ""


def to_srt(result: Mapping[str, Any]) -> str:
    blocks = []
    for i, (start, end, text) in enumerate(_segments(result), 1):
        blocks.append(f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(result: Mapping[str, Any]) -> str:
    out = ["WEBVTT", ""]
    for start, end, text in _segments(result):
        # "-->" inside a cue would end the cue timing line early.
        out += [f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}", text.replace("-->", "->"), ""]
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
