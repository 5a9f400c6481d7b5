"""The analysis of a transcript: word count, speaking rate, speech and silence, language,
the most frequent content words.

The inherited service kept analyses in Redis for 7 days; kubescribe does the same
(``kubescribe:analysis:<cache key>``, see :mod:`kubescribe.store`). The gateway's
``GET /v1/transcriptions/{name}/analysis`` and ``kubescribe analyze NAME`` both call
:func:`analyze`, so they can never disagree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

#: Bump when the fields or their computation change, so cached analyses are recomputed.
ANALYSIS_VERSION = 1

#: How many frequent content words an analysis lists.
TOP_WORDS = 10

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)

#: English function words left out of the frequent words: they top every transcript and
#: say nothing about it. Other languages keep all their words (word count is unaffected).
STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been
before being below between both but by can can't cannot could couldn't did didn't do does
doesn't doing don't down during each few for from further had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll
i'm i've if in into is isn't it it's its itself just let's me more most mustn't my myself no
nor not now of off on once only or other ought our ours ourselves out over own same shan't
she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through
to too under until up very was wasn't we we'd we'll we're we've were weren't what what's
when when's where where's which while who who's whom why why's will with won't would
wouldn't you you'd you'll you're you've your yours yourself yourselves yeah uh um oh okay
""".split())


def words(text: str) -> list[str]:
    """The words of a text, lower-cased; apostrophes inside a word keep it whole."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text or "")]


def _speech_seconds(segments: list[Mapping[str, Any]]) -> float:
    """Time covered by segments with text, overlaps counted once."""
    spans = sorted((float(s["start"]), float(s["end"])) for s in segments
                   if (s.get("text") or "").strip() and float(s["end"]) > float(s["start"]))
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def analyze(result: Mapping[str, Any]) -> dict[str, Any]:
    """Analyse a stored transcript (the result JSON the runner writes).

    Returns ``word_count``, ``duration_seconds`` (the audio's length), ``speech_seconds``
    (time covered by segments with text), ``silence_seconds`` (the rest),
    ``speech_ratio`` (speech / duration, 0..1), ``speaking_rate_wpm`` (words per minute
    of speech, so long pauses do not lower it), ``language`` and ``top_words`` (the
    :data:`TOP_WORDS` most frequent words that are not English function words, as
    ``{"word", "count"}``, most frequent first, ties alphabetical so the answer is
    stable).
    """
    segments = list(result.get("segments") or [])
    all_words = words(result.get("text") or " ".join(s.get("text") or "" for s in segments))
    speech = _speech_seconds(segments)
    duration = float(result.get("audio_duration_seconds") or 0.0)
    if duration < speech:  # no duration recorded, or segments past the end: trust the segments
        duration = max(speech, float(segments[-1]["end"]) if segments else 0.0)
    counts = Counter(w for w in all_words if w not in STOPWORDS and not w.isdigit() and len(w) > 1)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_WORDS]
    return {
        "version": ANALYSIS_VERSION,
        "word_count": len(all_words),
        "duration_seconds": round(duration, 3),
        "speech_seconds": round(speech, 3),
        "silence_seconds": round(max(0.0, duration - speech), 3),
        "speech_ratio": round(speech / duration, 4) if duration > 0 else 0.0,
        "speaking_rate_wpm": round(len(all_words) / speech * 60, 1) if speech > 0 else 0.0,
        "language": result.get("language") or "",
        "top_words": [{"word": w, "count": c} for w, c in top],
    }
