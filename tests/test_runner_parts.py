"""The runner's parts that decide something, each built without the others and without a
server: how speech is joined into clips (runner.vad), what may share a batch and what is
decoded whole for it (runner.packing), and the one result document (runner.documents)."""

from __future__ import annotations

import subprocess

import pytest

from kubescribe import __version__
from kubescribe.models import parse_spec
from kubescribe.runner.audio import BadAudio
from kubescribe.runner import packing
from kubescribe.runner.packing import batch_key, short_samples, transcribe_packed
from kubescribe.runner.documents import document, segment, word_run
from kubescribe.runner.vad import CLIP_SECONDS, pack_clips
from harness.envtest import require_binary


def spec(**extra):
    return parse_spec({"audio": {"redisKey": "kubescribe:audio:x"}, "device": "cpu", **extra})


class Word:
    def __init__(self, start, end, word, probability=0.91234):
        self.start, self.end, self.word, self.probability = start, end, word, probability


class Seg:
    def __init__(self, start, end, text, words=None):
        self.start, self.end, self.text, self.words = start, end, text, words
        self.avg_logprob, self.no_speech_prob = -0.123456, 0.0123456


# -- clips of one request's speech -------------------------------------------------------------

def test_one_requests_speech_is_joined_across_short_pauses_up_to_a_window():
    regions = [(0.0, 4.0), (5.5, 9.0), (12.0, 14.0), (14.5, 29.0), (29.5, 33.0)]
    # the 3 s pause after 9.0 ends a clip; 14.5-29.0 still fits the clip from 12.0; 29.5-33.0
    # would make it 21 s, fine; so would the whole: the window cap decides only past 30 s
    assert pack_clips([regions], CLIP_SECONDS, 2.0) == [(0.0, 9.0), (12.0, 33.0)]
    assert pack_clips([regions], 20.0, 2.0) == [(0.0, 9.0), (12.0, 29.0), (29.5, 33.0)]
    assert pack_clips([regions], CLIP_SECONDS, 0.4) == [(0.0, 4.0), (5.5, 9.0), (12.0, 14.0), (14.5, 29.0),
                                                       (29.5, 33.0)]
    assert pack_clips([[]], CLIP_SECONDS, 2.0) == [] == pack_clips([], CLIP_SECONDS, 2.0)


def test_a_request_alone_is_clipped_as_a_batch_of_one_and_a_boundary_is_not_a_pause():
    regions = [(0.0, 2.0), (6.0, 8.0)]
    assert pack_clips([regions], 30.0, 2.0) == [(0.0, 2.0), (6.0, 8.0)]
    # the same stretch of silence between two requests joins them
    assert pack_clips([regions[:1], regions[1:]], 30.0, 2.0) == [(0.0, 8.0)]


# -- what may share a batch ------------------------------------------------------------------------

def test_requests_share_a_batch_only_with_one_model_call_and_a_known_language():
    base = batch_key(spec(model="tiny.en"))
    assert base is not None and base == batch_key(spec(model="tiny.en", language="en"))  # .en: English
    assert batch_key(spec(model="base")) is None  # the language would be detected once for all
    assert batch_key(spec(model="base", language="de")) is not None
    assert batch_key(spec(model="tiny.en", decoding="sequential")) is None
    for change in ({"beamSize": 1}, {"initialPrompt": "Kubernetes"}, {"wordTimestamps": True}, {"batchSize": 2},
                   {"model": "base.en"}):
        assert batch_key(spec(**{"model": "tiny.en", **change})) != base, change


def test_a_batch_of_mixed_settings_is_refused_and_bad_audio_fails_before_a_model_loads():
    loads = []
    load = lambda s: loads.append(s) or pytest.fail("loaded a model")  # noqa: E731
    assert transcribe_packed(load, [], 2.0) == []
    with pytest.raises(ValueError, match="must share model"):
        transcribe_packed(load, [(b"x", spec(model="tiny.en"), None), (b"x", spec(model="tiny.en", beamSize=1), None)],
                          2.0)
    with pytest.raises(BadAudio, match="not a readable audio file"):
        transcribe_packed(load, [(b"RIFF" + b"\0" * 400, spec(model="tiny.en"), None)], 2.0)
    assert loads == []


def test_only_short_audio_is_decoded_whole_for_packing(tmp_path, monkeypatch):
    """A long recording is not held whole to learn that it is long: its container says so."""
    sox = require_binary("sox", "sox")
    for seconds in (3, 75):
        subprocess.run([sox, "-n", "-r", "16000", "-c", "1", "-b", "16", str(tmp_path / f"{seconds}.flac"), "synth",
                        str(seconds), "pinknoise", "vol", "0.2"], check=True)
    whole = []
    real = packing.decode
    monkeypatch.setattr(packing, "decode", lambda data: whole.append(data) or real(data))
    with (tmp_path / "3.flac").open("rb") as f:
        samples = short_samples(f, 60.0)
    assert samples is not None and samples.shape[0] == 3 * 16000 and len(whole) == 1
    with (tmp_path / "75.flac").open("rb") as f:
        assert short_samples(f, 60.0) is None and len(whole) == 1, "never decoded whole"
    with (tmp_path / "3.flac").open("rb") as f:
        assert short_samples(f, 2.0) is None  # 3 s is long when packing ends at 2 s


# -- the result document ---------------------------------------------------------------------------

def test_a_segment_is_shifted_onto_the_recording_and_kept_inside_its_piece():
    seg = Seg(28.0, 30.4, "  the end.  ", [Word(28.0, 28.5, " the"), Word(28.5, 30.4, " end.")])
    item = segment(seg, 7, 300.0, True, until=330.0)
    assert item == {"id": 7, "start": 328.0, "end": 330.0, "text": "the end.", "avg_logprob": -0.1235,
                    "no_speech_prob": 0.0123,
                    "words": [{"start": 328.0, "end": 328.5, "word": "the", "probability": 0.9123},
                              {"start": 328.5, "end": 330.0, "word": "end.", "probability": 0.9123}]}
    assert "words" not in segment(seg, 7, 300.0, False)
    assert "words" not in segment(Seg(0.0, 1.0, "hm", None), 1, 0.0, True)


def test_a_packed_requests_words_are_clamped_to_its_own_length():
    seg = Seg(3.0, 6.5, " dog. The end.", [Word(3.0, 3.4, " dog."), Word(4.3, 4.6, " The"), Word(4.6, 6.5, " end.")])
    item = word_run(seg.words[1:], seg, 1, -4.0, 2.0, keep_words=False)
    assert (item["start"], item["end"], item["text"]) == (0.3, 2.0, "The end.") and "words" not in item
    assert word_run([], Seg(1.0, 2.0, " hello"), 3, 10.0, 99.0, True)["start"] == 11.0  # no alignment: whole


@pytest.mark.parametrize("mode, resumed_at, shared_with", [("sequential", None, None), ("batched", 31.25678, None),
                                                           ("batched", None, 2)])
def test_every_way_of_transcribing_makes_the_same_document(mode, resumed_at, shared_with):
    s = spec(model="tiny.en")
    segs = [{"id": 1, "start": 0.0, "end": 1.0, "text": "Hello."}, {"id": 2, "start": 1.0, "end": 1.5, "text": ""},
            {"id": 3, "start": 2.0, "end": 3.0, "text": "World."}]
    doc = document(segs, s, language="en", language_probability=0.987654, duration=10.00049, after_vad=3.0004,
                   elapsed=2.5, mode=mode, audio_sha256="a" * 64, resumed_at=resumed_at, shared_with=shared_with)
    assert list(doc) == ["text", "segments", "language", "language_probability", "audio_duration_seconds",
                         "duration_after_vad_seconds", "processing_seconds", "realtime_factor", "decoding", "model",
                         "parameters", "audio_sha256", "created_at", "kubescribe_version"]
    assert doc["text"] == "Hello. World." and doc["segments"] is segs
    assert (doc["language_probability"], doc["audio_duration_seconds"], doc["duration_after_vad_seconds"]) == \
        (0.9877, 10.0, 3.0)
    assert doc["realtime_factor"] == 0.25 and doc["kubescribe_version"] == __version__
    assert doc["parameters"] == s.output_params() and doc["model"] == "tiny.en"
    expected = {"mode": mode, "requested": "auto", "batch_size": 8 if mode == "batched" else None,
                "resumed_at_seconds": None if resumed_at is None else 31.257}
    if shared_with is not None:
        expected["shared_with"] = shared_with
    assert doc["decoding"] == expected
    empty = document([], s, language="en", language_probability=1.0, duration=0.0, after_vad=0.0, elapsed=0.1,
                     mode=mode, audio_sha256=None)
    assert empty["text"] == "" and empty["realtime_factor"] is None
