"""Sequential decoding's hallucination guards on the batched path (runner/guards.py): the
decisions on fake segments, and four voices talking at once through the real tiny.en,
where faster-whisper's own batched pipeline loops and kubescribe's batched path says
nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from faster_whisper.transcribe import get_compression_ratio as compression_ratio

from harness.speech import SENTENCES, crosstalk, speak, wer
from kubescribe.models import parse_spec
from kubescribe.runner.guards import GuardCounts, doubtful, guarded, shifted, silent


@dataclasses.dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float = 0.9


@dataclasses.dataclass
class Seg:
    start: float
    end: float
    text: str
    avg_logprob: float = -0.3
    no_speech_prob: float = 0.1
    compression_ratio: float = 1.5
    words: list | None = None


def test_the_thresholds_are_sequential_decodings():
    assert not doubtful(Seg(0, 1, "fine")) and not silent(Seg(0, 1, "fine"))
    assert doubtful(Seg(0, 1, "loop", compression_ratio=2.5))
    assert doubtful(Seg(0, 1, "unsure", avg_logprob=-1.2))
    # likely silence and said without confidence: skipped, as sequential decoding skips it
    assert silent(Seg(0, 1, "hum", no_speech_prob=0.7, avg_logprob=-1.1))
    # likely silence but said with confidence: kept, as sequential decoding keeps it
    assert not silent(Seg(0, 1, "quiet words", no_speech_prob=0.7, avg_logprob=-0.5))


class FakeModel:
    """Answers a sequential decode of a clip with the segments it was given (clip time)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def transcribe(self, clip, **kwargs):
        self.calls.append((clip.shape[0], kwargs))
        return iter(self.answers.pop(0)), None


def test_silent_segments_are_dropped_and_doubtful_ones_decoded_again_where_they_were():
    samples = np.zeros(16000 * 40, np.float32)
    model = FakeModel([[Seg(0.5, 2.0, "said again", words=[Word(0.5, 1.0, "said"), Word(1.1, 2.0, "again")]),
                        Seg(2.0, 9.0, "runs past the clip"),  # a last timestamp past the clip's end
                        Seg(9.5, 12.0, "after the clip")],
                       [Seg(0.0, 1.0, "still looping", compression_ratio=3.0, no_speech_prob=0.7),
                        Seg(1.0, 3.0, "said twice, said twice", compression_ratio=2.5, no_speech_prob=0.3)]])
    counts = GuardCounts()
    segs = [Seg(0.0, 4.0, "kept"),
            Seg(4.0, 10.0, "going to be going to be", compression_ratio=3.1),
            Seg(10.0, 12.0, "hum", no_speech_prob=0.8, avg_logprob=-1.5),
            Seg(12.0, 15.0, "unsure", avg_logprob=-1.4)]
    out = list(guarded(segs, model, samples, {"language": "en", "beam_size": 5}, counts))
    assert [(s.start, s.end, s.text) for s in out] == [(0.0, 4.0, "kept"), (4.5, 6.0, "said again"),
                                                       (6.0, 10.0, "runs past the clip"),
                                                       (13.0, 15.0, "said twice, said twice")]
    assert [(w.start, w.end) for w in out[1].words] == [(4.5, 5.0), (5.1, 6.0)]
    # the clips decoded again are the doubtful segments' own stretches, at temperature 0
    assert [n for n, _ in model.calls] == [16000 * 6, 16000 * 3]
    assert all(kw["temperature"] == 0.0 and kw["language"] == "en" for _, kw in model.calls)
    # the silent segment, and the second clip's loop over likely silence; its repetition
    # over likely speech is kept, as sequential decoding keeps its best try
    assert counts.as_dict() == {"dropped_segments": 2, "redecoded_segments": 2}


def test_shifted_keeps_times_inside_the_clip():
    s = shifted(Seg(1.0, 31.0, "x", words=[Word(29.0, 31.0, "x")]), 10.0, 35.0)
    assert (s.start, s.end, s.words[0].start, s.words[0].end) == (11.0, 35.0, 35.0, 35.0)


@pytest.fixture(scope="module")
def voices_at_once(tmp_path_factory):
    return crosstalk(tmp_path_factory.mktemp("crosstalk"))


def test_voices_talking_at_once_loop_in_the_librarys_batched_pipeline_and_give_no_text_here(engine, voices_at_once):
    from faster_whisper import BatchedInferencePipeline

    from kubescribe.runner.vad import CLIP_SECONDS, pack_clips, speech_regions

    model = engine.model("tiny.en", "cpu", "int8")
    clips = pack_clips([speech_regions(voices_at_once)], CLIP_SECONDS, 2.0)
    plain, _ = BatchedInferencePipeline(model).transcribe(voices_at_once, language="en", vad_filter=False,
                                                          clip_timestamps=[{"start": a, "end": b} for a, b in clips])
    plain = list(plain)
    # the failure this guards against, on this very audio: a loop the library lets through
    assert any(compression_ratio(s.text) > 2.4 for s in plain), [s.text for s in plain]

    doc = engine.transcribe(voices_at_once, parse_spec({"audio": {"redisKey": "x"}, "decoding": "batched",
                                                        "language": "en"}))
    assert doc["decoding"]["redecoded_segments"] >= 1
    assert all(compression_ratio(s["text"]) <= 2.4 for s in doc["segments"]), doc["segments"]
    # what is left of it is no more than a few words: nothing here was said with confidence
    assert len(doc["text"].split()) <= 12, doc["text"]


def test_speech_said_again_keeps_its_words_when_batched(engine, tmp_path):
    """Three sentences said three times: the text of a clip that holds them twice compresses
    above 2.4 like a loop, but it was said, and the guards keep it."""
    from faster_whisper.audio import decode_audio

    parts = []
    for i, text in enumerate(SENTENCES.values()):
        parts += [decode_audio(str(speak(text, tmp_path / f"{i}.wav")), sampling_rate=16000),
                  np.zeros(8000, np.float32)]
    doc = engine.transcribe(np.concatenate(parts * 3), parse_spec({"audio": {"redisKey": "x"},
                                                                   "decoding": "batched", "language": "en"}))
    assert doc["decoding"]["dropped_segments"] == 0
    assert wer(" ".join(list(SENTENCES.values()) * 3), doc["text"]) <= 0.2, doc["text"]
