import json

import pytest

from kubescribe.render import MAX_CUE_SECONDS, MAX_LINE_CHARS, MAX_LINES, render, to_srt, wrap
from kubescribe.render import cues as cues_of

RESULT = {
    "text": "Hello there. General Kenobi.",
    "segments": [
        {"id": 1, "start": 0.0, "end": 1.5, "text": "Hello there."},
        {"id": 2, "start": 3661.25, "end": 3662.999, "text": "General --> Kenobi."},
        {"id": 3, "start": 4.0, "end": 4.0, "text": "  "},
    ],
}


def test_srt_numbers_cues_and_uses_commas():
    out = render(RESULT, "srt")
    assert out.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n")
    assert "2\n01:01:01,250 --> 01:01:02,999\nGeneral --> Kenobi.\n" in out
    assert "3\n" not in out  # empty segments are dropped


def test_vtt_has_header_dots_and_no_arrow_in_text():
    out = render(RESULT, "vtt")
    assert out.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")
    assert "General --&gt; Kenobi." in out  # a player shows "-->"; the cue's timing line is not ended
    assert out.count("-->") == 2


def test_vtt_cue_text_escapes_what_webvtt_reads_as_markup():
    """WebVTT cue text is markup: ``<`` opens a tag (``<b>``, ``<c.x>``, ``<00:01.000>``)
    and ``&`` a character reference, so said text holding them must be escaped or a
    player drops or restyles words (the WebVTT spec, cue text parsing rules)."""
    said = {"segments": [{"id": 1, "start": 0.0, "end": 2.0, "text": "Q&A: if x<y and y>z, say <b>bold</b> &amp;"}]}
    out = render(said, "vtt")
    line = out.split("\n")[3]
    assert line == "Q&amp;A: if x&lt;y and y&gt;z, say &lt;b&gt;bold&lt;/b&gt; &amp;amp;"
    # read back as a WebVTT parser reads cue text: references resolved, no tags left
    import html

    assert html.unescape(line) == said["segments"][0]["text"]
    assert render(said, "srt").split("\n")[2] == said["segments"][0]["text"]  # SRT is plain text: untouched


def test_txt_and_json_round_trip():
    assert render(RESULT, "txt") == "Hello there. General Kenobi.\n"
    assert json.loads(render(RESULT, "json")) == RESULT


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of json, txt, srt, vtt"):
        render(RESULT, "docx")


# -- subtitle cues: at most 2 lines of 42 characters and 7 s, cut between words ------------

LONG_TEXT = ("The train to the city leaves every twenty minutes from platform four, and the museum "
             "opens at nine and closes at five on weekdays, so we will meet at the library on Monday.")


def _long_segment(**extra):
    return {"segments": [{"id": 1, "start": 10.0, "end": 40.0, "text": LONG_TEXT, **extra}]}


def _words_of(text, start, step):
    return [{"start": start + i * step, "end": start + (i + 1) * step - 0.05, "word": w}
            for i, w in enumerate(text.split())]


def test_a_30_second_segment_becomes_cues_within_the_reading_limits():
    cues = list(cues_of(_long_segment()))
    assert len(cues) > 1
    for c in cues:
        assert 1 <= len(c.lines) <= MAX_LINES
        assert all(len(line) <= MAX_LINE_CHARS for line in c.lines)
        assert c.end - c.start <= MAX_CUE_SECONDS + 1e-9
    # every word is shown once, in order, and the cues cover the segment end to end
    assert " ".join(" ".join(c.lines) for c in cues) == LONG_TEXT
    assert cues[0].start == 10.0 and abs(cues[-1].end - 40.0) < 1e-6
    assert all(a.end <= b.start + 1e-9 for a, b in zip(cues, cues[1:]))


def test_cues_are_cut_on_word_timestamps_when_the_segment_has_them():
    words = _words_of(LONG_TEXT, 10.0, 0.4)
    cues = list(cues_of(_long_segment(words=words)))
    starts = {w["start"] for w in words}
    ends = {w["end"] for w in words}
    assert all(c.start in starts and c.end in ends for c in cues)
    assert " ".join(" ".join(c.lines) for c in cues) == LONG_TEXT


def test_slow_speech_is_cut_at_seven_seconds_even_when_the_text_fits():
    words = _words_of("one two three four five six", 0.0, 2.0)  # a word every 2 s
    cues = list(cues_of({"segments": [{"start": 0, "end": 12, "text": "one two three four five six",
                                       "words": words}]}))
    assert [c.lines for c in cues] == [("one two three",), ("four five six",)]
    assert all(c.end - c.start <= MAX_CUE_SECONDS for c in cues)


def test_short_segments_stay_one_cue_each_and_never_merge():
    result = {"segments": [{"start": 0.0, "end": 1.0, "text": "Hello."}, {"start": 1.0, "end": 2.0, "text": "Bye."}]}
    assert [c.lines for c in cues_of(result)] == [("Hello.",), ("Bye.",)]


def test_a_word_longer_than_a_line_is_cut_rather_than_overflowing():
    assert wrap("x" * 50) == ["x" * 42, "x" * 8]
    assert wrap("a bb ccc", width=4) == ["a bb", "ccc"]


def test_srt_and_vtt_print_two_line_cues():
    srt = render(_long_segment(), "srt")
    vtt = render(_long_segment(), "vtt")
    first = srt.split("\n\n")[0].splitlines()
    assert first[0] == "1" and first[1].startswith("00:00:10,000 --> ")
    assert 1 <= len(first[2:]) <= 2 and all(len(line) <= 42 for line in first[2:])
    assert vtt.startswith("WEBVTT\n\n00:00:10.000 --> ")
    assert srt.count(" --> ") == vtt.count(" --> ") > 1


def test_a_word_list_that_does_not_spell_the_segment_loses_no_words():
    result = {"segments": [{"start": 0.0, "end": 2.0, "text": " The quick brown fox jumps.",
                            "words": [{"start": 0.0, "end": 0.3, "word": " The"},
                                      {"start": 0.3, "end": 0.8, "word": " quick"}]}]}
    assert "The quick brown fox jumps." in to_srt(result)
    assert "00:00:00,000 --> 00:00:02,000" in to_srt(result)
