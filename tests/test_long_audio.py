"""Long recordings on real faster-whisper (tiny.en): batched or sequential decoding, and
no invented text on silence, noise or tones (sox-made, 60 s each)."""

import subprocess

import numpy as np
import pytest

from kubescribe.models import parse_spec
from kubescribe.runner.engine import Engine, EngineOptions, choose_decoding
from kubescribe.runner.pieces import resume_offset
from kubescribe.runner.task import run_task
from harness.envtest import require_binary
from harness.speech import SENTENCES, wer, write_wav


def spec(**extra):
    return parse_spec({"audio": {"redisKey": "kubescribe:audio:x"}, "device": "cpu", "language": "en", **extra})


# -- the choice: a pure function -----------------------------------------------------------

def test_auto_batches_from_the_threshold_up_and_an_explicit_choice_stands():
    assert choose_decoding("auto", 59.9, 60) == "sequential"
    assert choose_decoding("auto", 60.0, 60) == "batched"
    assert choose_decoding("auto", 7200, 60) == "batched"
    assert choose_decoding("sequential", 7200, 60) == "sequential"
    assert choose_decoding("batched", 3, 60) == "batched"
    assert choose_decoding("auto", 0.5, 0) == "batched"


def test_a_resumed_run_starts_where_the_last_checkpointed_segment_ends():
    assert resume_offset([], 100) == 0.0
    assert resume_offset([{"end": 12.5}, {"end": 31.25}], 100) == 31.25
    assert resume_offset([{"end": 500.0}], 100) == 100  # never past the audio


def test_the_default_spec_skips_non_speech_and_decides_by_length():
    s = parse_spec({"audio": {"redisKey": "kubescribe:audio:x"}})
    assert s.vad is True and s.decoding == "auto" and s.batch_size == 8
    assert s.output_params()["decoding"] == "auto"


# -- real decoding ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def padded_speech(speech_dir, tmp_path_factory):
    """Two sentences with 20 s of digital silence before, between and after: 70 s."""
    from faster_whisper.audio import decode_audio

    gap = np.zeros(20 * 16000, dtype=np.float32)
    parts = [gap]
    for name in ("fox", "weather"):
        parts += [decode_audio(str(speech_dir / f"{name}.wav"), sampling_rate=16000), gap]
    path = write_wav(tmp_path_factory.mktemp("padded") / "padded.wav", np.concatenate(parts))
    return path.read_bytes(), SENTENCES["fox"] + " " + SENTENCES["weather"]


def test_long_audio_is_batched_by_default_and_says_so_in_result_and_outcome(redis_store, engine, padded_speech):
    data, text = padded_speech
    key = redis_store.put_audio(data)
    out = run_task(redis_store, engine, parse_spec({"audio": {"redisKey": key}, "device": "cpu"}))
    assert out.result["audio_duration_seconds"] > 60
    assert out.result["decoding"] == {"mode": "batched", "requested": "auto", "batch_size": 8,
                                      "resumed_at_seconds": None, "dropped_segments": 0, "redecoded_segments": 0}
    assert out.outcome.decoding == "batched"
    # VAD-cut chunks: segments sit on the speech, not on 30 s windows of silence
    assert wer(text, out.result["text"]) <= 0.25, out.result["text"]
    assert all(s["end"] - s["start"] < 15 for s in out.result["segments"])
    assert out.result["segments"][0]["start"] >= 15


def test_short_audio_is_decoded_sequentially_by_default(redis_store, engine, speech_dir):
    key = redis_store.put_audio((speech_dir / "fox.wav").read_bytes())
    out = run_task(redis_store, engine, parse_spec({"audio": {"redisKey": key}, "device": "cpu"}))
    assert out.result["decoding"]["mode"] == "sequential" and out.outcome.decoding == "sequential"
    assert out.result["decoding"]["batch_size"] is None


def test_the_threshold_is_a_runner_setting(speech_dir, monkeypatch):
    monkeypatch.setenv("KUBESCRIBE_BATCHED_MIN_SECONDS", "2")
    engine = Engine(EngineOptions())
    result = engine.transcribe((speech_dir / "fox.wav").read_bytes(), spec())
    assert result["decoding"]["mode"] == "batched"
    assert wer(SENTENCES["fox"], result["text"]) <= 0.25


def test_padded_speech_gives_the_words_and_nothing_invented_in_the_silences(engine, padded_speech):
    data, text = padded_speech
    for decoding in ("sequential", "batched"):
        result = engine.transcribe(data, spec(decoding=decoding))
        # tiny.en mishears a word or two ("sunny" as "on it"); text invented in 60 s of
        # silence would add a sentence or a segment out in the silence
        assert wer(text, result["text"]) <= 0.35, (decoding, result["text"])
        assert len(result["text"].split()) <= len(text.split()) + 3, (decoding, result["text"])
        assert all(s["start"] >= 15 and s["end"] <= 60 for s in result["segments"]), result["segments"]


@pytest.fixture(scope="module")
def non_speech(tmp_path_factory):
    """60 s of digital silence, pink noise, a 440 Hz tone and a C major chord, made by sox."""
    sox = require_binary("sox", "sox")
    d = tmp_path_factory.mktemp("nonspeech")
    recipes = {
        "silence": ["trim", "0", "60"],
        "pink_noise": ["synth", "60", "pinknoise", "vol", "0.3"],
        "tone": ["synth", "60", "sine", "440", "vol", "0.5"],
        "chord": ["synth", "60", "sine", "261.6", "sine", "329.6", "sine", "392", "remix", "-", "vol", "0.3"],
    }
    out = {}
    for name, effect in recipes.items():
        path = d / f"{name}.wav"
        subprocess.run([sox, "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), *effect], check=True)
        out[name] = path.read_bytes()
    return out


@pytest.mark.parametrize("kind", ["silence", "pink_noise", "tone", "chord"])
def test_sixty_seconds_without_speech_give_no_words_with_default_settings(engine, non_speech, kind):
    result = engine.transcribe(non_speech[kind], parse_spec({"audio": {"redisKey": "kubescribe:audio:x"},
                                                             "device": "cpu"}))
    assert result["audio_duration_seconds"] == pytest.approx(60, abs=0.1)
    assert result["text"] == "" and result["segments"] == [], result["text"]


def test_without_vad_sequential_decoding_of_silence_is_what_the_default_protects_from(engine, non_speech):
    """The reason vad defaults to true: Whisper's known failure, measured, not assumed."""
    result = engine.transcribe(non_speech["silence"], spec(vad=False, decoding="sequential"))
    default = engine.transcribe(non_speech["silence"], spec())
    assert default["text"] == ""
    assert result["parameters"]["vad"] is False  # the opt-out is honoured as asked


# -- packing short requests into shared windows: pure logic -------------------------------

class _Word:
    def __init__(self, start, end, word):
        self.start, self.end, self.word, self.probability = start, end, word, 0.9


class _Seg:
    def __init__(self, words, text=None):
        self.words = words
        self.text = text if text is not None else "".join(w.word for w in words)
        self.start = words[0].start if words else 0.0
        self.end = words[-1].end if words else 0.0
        self.avg_logprob, self.no_speech_prob = -0.2, 0.01


def test_short_requests_are_packed_across_their_boundaries_but_not_across_long_pauses():
    from kubescribe.runner.vad import pack_clips

    # three requests of 4 s speech each, 5 s apart: one window holds them all
    three = [[(0.0, 4.0)], [(5.0, 9.0)], [(10.0, 14.0)]]
    assert pack_clips(three, 30.0, 2.0) == [(0.0, 14.0)]
    # the 30 s cap holds across requests
    many = [[(i * 5.0, i * 5.0 + 4.0)] for i in range(10)]
    clips = pack_clips(many, 30.0, 2.0)
    assert all(b - a <= 30.0 for a, b in clips) and len(clips) == 2
    assert clips[0][0] == 0.0 and clips[-1][1] == 49.0
    # inside one request a pause longer than the gap still ends the window
    assert pack_clips([[(0.0, 2.0), (6.0, 8.0)], [(9.0, 10.0)]], 30.0, 2.0) == [(0.0, 2.0), (6.0, 10.0)]
    assert pack_clips([[], [(1.0, 2.0)]], 30.0, 2.0) == [(1.0, 2.0)]


def test_words_go_back_to_the_request_whose_speech_they_overlap():
    from kubescribe.runner.packing import SharedAudio

    parts = [np.zeros(16000 * 3, dtype=np.float32), np.zeros(16000 * 2, dtype=np.float32)]
    shared = SharedAudio(parts, [[(0.5, 2.5)], [(0.2, 1.8)]], gap_seconds=1.0)  # second request starts at 4.0
    assert shared.offsets == [0.0, 4.0] and shared.durations == [3.0, 2.0]
    assert shared.regions == [[(0.5, 2.5)], [(4.2, 5.8)]]
    # "The", stretched back into the silence between the requests, still goes to the
    # second one: it overlaps the second request's speech, not the first one's
    seg = _Seg([_Word(1.0, 1.5, " dog."), _Word(2.6, 4.4, " The"), _Word(4.4, 5.0, " end")])
    runs = shared.split(seg)
    assert [(i, "".join(w.word for w in ws)) for i, ws in runs] == [(0, " dog."), (1, " The end")]
    # touching no speech at all: the nearest speech decides
    assert shared.owner(2.7, 2.8) == 0 and shared.owner(3.9, 4.0) == 1
    # a segment without word times goes whole to the request it overlaps most
    assert shared.split(_Seg([], text=" hello")) == [(0, [])]
    assert shared.split(_Seg([], text="")) == []


def test_a_run_of_words_becomes_a_segment_on_its_own_requests_timeline():
    from kubescribe.runner.documents import word_run

    seg = _Seg([_Word(4.3, 4.6, " The"), _Word(4.6, 6.4, " end.")])
    item = word_run(seg.words, seg, 1, -4.0, 2.0, keep_words=True)
    assert item["text"] == "The end." and item["start"] == 0.3 and item["end"] == 2.0  # clamped to 2.0 s
    assert [w["word"] for w in item["words"]] == ["The", "end."]
    assert "words" not in word_run(seg.words, seg, 2, -4.0, 2.0, keep_words=False)
