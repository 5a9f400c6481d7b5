import json

import pytest

from kubescribe.render import render

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
    assert "General -> Kenobi." in out


def test_txt_and_json_round_trip():
    assert render(RESULT, "txt") == "Hello there. General Kenobi.\n"
    assert json.loads(render(RESULT, "json")) == RESULT


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of json, txt, srt, vtt"):
        render(RESULT, "docx")
