"""OpenAI's transcription API in kubescribe's terms: fields to a spec, results to OpenAI's
response shapes, errors to OpenAI's error JSON. Pure functions, tested without a server.

Fields of ``/v1/audio/transcriptions`` and ``/v1/audio/translations``: ``file``,
``model`` (through the alias table), ``language``, ``prompt`` (the initial prompt),
``response_format`` (json, text, srt, verbose_json, vtt), ``temperature`` (accepted and
checked, 0..1; faster-whisper decodes with its own fallback temperatures, as OpenAI's
``0`` default does), ``timestamp_granularities[]`` (``word`` turns on word timestamps;
``segment`` is always there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kubescribe.modeldir import ModelInfo, choose
from kubescribe.models import DEFAULT_MODEL
from kubescribe.render import to_srt, to_vtt

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")

#: Whisper's language codes and the names OpenAI's verbose_json reports.
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "cy": "welsh", "sk": "slovak", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "sl": "slovenian", "et": "estonian", "is": "icelandic", "ga": "irish",
}


class BadField(ValueError):
    """A form field OpenAI's API would refuse: ``param`` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


#: HTTP status -> OpenAI error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error",
               504: "timeout_error"}


def build_spec(fields: Mapping[str, Any], *, task: str, aliases: Mapping[str, str], audio: dict[str, str],
               priority: int = 0, models: Sequence[ModelInfo] = ()) -> tuple[dict[str, Any], str]:
    """The TranscriptionRequest spec for OpenAI form ``fields``, and the response format.

    An alias becomes the first model of its list that is in ``models`` (what the runners
    can load) and can do the task and language (:func:`kubescribe.modeldir.choose`).

    ``fields`` maps a field name to its value, or for ``timestamp_granularities[]`` to
    the list of values. Raises :class:`BadField` for a value OpenAI's API would refuse.
    """
    fmt = str(fields.get("response_format") or "json")
    if fmt not in RESPONSE_FORMATS:
        raise BadField("response_format", f"response_format must be one of {', '.join(RESPONSE_FORMATS)} (got {fmt!r})")
    raw_temp = fields.get("temperature")
    if raw_temp not in (None, ""):
        try:
            temp = float(raw_temp)
        except ValueError:
            raise BadField("temperature", f"temperature must be a number (got {raw_temp!r})") from None
        if not 0 <= temp <= 1:
            raise BadField("temperature", "temperature must be between 0 and 1")
    granularities = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or []
    if isinstance(granularities, str):
        granularities = [granularities]
    for g in granularities:
        if g not in ("word", "segment"):
            raise BadField("timestamp_granularities[]", f"timestamp granularities are word and segment (got {g!r})")
    if granularities and fmt != "verbose_json":
        raise BadField("timestamp_granularities[]", "timestamp_granularities needs response_format verbose_json")
    if str(fields.get("stream") or "false").lower() not in ("false", "0", ""):
        raise BadField("stream", "streaming transcriptions are not supported: use /v1/transcriptions and its events")
    model = str(fields.get("model") or "").strip()
    if not model:
        raise BadField("model", "model is required (whisper-1, or a faster-whisper model name)")
    language = str(fields.get("language") or "").strip().lower()
    if model in aliases:
        model = choose([m.strip() for m in aliases[model].split(",") if m.strip()], models, task, language)
    spec: dict[str, Any] = {
        "audio": audio,
        "model": model or DEFAULT_MODEL,
        "language": language,
        "task": task,
        "wordTimestamps": "word" in granularities,
        "initialPrompt": str(fields.get("prompt") or ""),
        "formats": ["json"],
        "priority": priority,
    }
    return spec, fmt


def _segment(i: int, seg: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": seg.get("id", i), "seek": 0, "start": seg["start"], "end": seg["end"],
            "text": " " + (seg.get("text") or "").strip(), "tokens": [], "temperature": 0.0,
            "avg_logprob": seg.get("avg_logprob", 0.0), "compression_ratio": 0.0,
            "no_speech_prob": seg.get("no_speech_prob", 0.0)}


def response(result: Mapping[str, Any], fmt: str, *, task: str = "transcribe",
             words: bool = False) -> tuple[str, str]:
    """``(body, media type)`` of a stored transcript in an OpenAI response format."""
    text = (result.get("text") or "").strip()
    if fmt == "json":
        return json.dumps({"text": text}, ensure_ascii=False), "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(result), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(result), "text/vtt; charset=utf-8"
    if fmt == "verbose_json":
        segments = list(result.get("segments") or [])
        lang = result.get("language") or ""
        body: dict[str, Any] = {
            "task": task, "language": LANGUAGE_NAMES.get(lang, lang),
            "duration": result.get("audio_duration_seconds") or 0.0, "text": text,
            "segments": [_segment(i, s) for i, s in enumerate(segments)],
        }
        if words:
            body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]}
                             for s in segments for w in s.get("words") or []]
        return json.dumps(body, ensure_ascii=False), "application/json"
    raise BadField("response_format", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
