"""The runner's parts that decide something, each built without the others and without a
server: how speech is joined into clips (runner.vad), what may share a batch and what is
decoded whole for it (runner.packing), and the one result document (runner.documents)."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest

from kubescribe import __version__
from kubescribe.models import parse_spec
from kubescribe.runner.audio import BadAudio, SampleStream
from kubescribe.runner import packing
from kubescribe.runner.packing import batch_key, short_samples, transcribe_packed
from kubescribe.runner.documents import document, segment, word_run
from kubescribe.runner.pieces import clip_cut
from kubescribe.runner.resources import cgroup_cpu_quota, usable_cpus
from kubescribe.runner.vad import (CLIP_SECONDS, PARALLEL_MIN_SECONDS, JoinedSpeech, SpeechQueue, in_samples,
                                  join_speech, joined_at, pack_clips, split_points)
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


def test_speech_is_joined_by_its_own_length_and_a_long_pause_still_ends_a_clip():
    regions = [(0.0, 10.0), (11.0, 21.0), (24.0, 34.0), (60.0, 65.0)]
    # 30 s of speech fit one clip however long its pauses up to the gap: 0-34 s spans 34 s
    assert join_speech(regions, CLIP_SECONDS, 6.0) == [[(0.0, 10.0), (11.0, 21.0), (24.0, 34.0)], [(60.0, 65.0)]]
    # a 3 s pause over a 2 s gap ends a clip; 31 s of speech do not fit one
    assert join_speech(regions, CLIP_SECONDS, 2.0) == [[(0.0, 10.0), (11.0, 21.0)], [(24.0, 34.0)], [(60.0, 65.0)]]
    assert join_speech(regions + [(65.5, 86.0)], CLIP_SECONDS, 60.0) == [
        [(0.0, 10.0), (11.0, 21.0), (24.0, 34.0)], [(60.0, 65.0), (65.5, 86.0)]]
    assert join_speech([], CLIP_SECONDS, 2.0) == []


def _seg(start, end, words=()):
    from faster_whisper.transcribe import Segment, Word

    return Segment(id=1, seek=0, start=start, end=end, text="x", tokens=[], avg_logprob=-0.1, compression_ratio=1.0,
                   no_speech_prob=0.0, temperature=0.0,
                   words=[Word(start=a, end=b, word=w, probability=0.9) for a, b, w in words] or None)


def test_times_in_joined_speech_map_back_onto_the_recording_and_never_into_a_pause():
    import numpy as np

    clips = [[(1.0, 3.0), (5.0, 6.0)], [(10.0, 12.0)]]
    joined = JoinedSpeech(in_samples(clips))
    assert joined.bounds == [(0.0, 3.0), (3.0, 5.0)]
    samples = np.arange(16000 * 13, dtype=np.float32)
    audio = joined.audio(samples)
    assert audio.shape[0] == 16000 * 5 and audio[0] == 16000 and audio[2 * 16000] == 5 * 16000
    # a segment over the first clip: its start in the first region, its end in the second
    assert (joined.restore(_seg(0.0, 3.0)).start, joined.restore(_seg(0.0, 3.0)).end) == (1.0, 6.0)
    # the joined boundary 2.0 s opens the second region and closes the first
    assert joined.restore(_seg(2.0, 2.5)).start == 5.0 and joined.restore(_seg(1.5, 2.0)).end == 3.0
    # the second clip's segment stays on it: its start is not the first clip's end
    assert (joined.restore(_seg(3.0, 5.0)).start, joined.restore(_seg(3.0, 5.0)).end) == (10.0, 12.0)
    # words go by their middles, kept inside their region (a word that the model starts
    # before the join starts with its region, not in the pause); the segment takes its
    # times from them
    got = joined.restore(_seg(0.0, 3.0, [(0.2, 0.9, "one"), (1.9, 2.4, "two")]))
    assert [(w.start, w.end) for w in got.words] == [(1.2, 1.9), (5.0, 5.4)]
    assert (got.start, got.end) == (1.2, 5.4)


def test_clips_wait_across_pieces_for_a_whole_batch_and_keep_the_recordings_times():
    import numpy as np

    sr = 16000
    recording = np.arange(sr * 40, dtype=np.float32)
    queue = SpeechQueue()
    assert len(queue) == 0 and queue.start is None
    queue.add([[(1.0, 2.0)], [(3.0, 4.0), (5.0, 6.0)]], recording[:sr * 20], 0)  # a piece from 0 s
    queue.add([[(2.0, 3.0)]], recording[sr * 20:], sr * 20)  # a piece from 20 s
    assert len(queue) == 3 and queue.start == 1.0
    joined, audio = queue.take(2)
    assert joined.spans == [(sr, 2 * sr), (3 * sr, 4 * sr), (5 * sr, 6 * sr)] and audio.shape[0] == 3 * sr
    assert audio[0] == sr and audio[sr] == 3 * sr and audio[2 * sr] == 5 * sr
    assert len(queue) == 1 and queue.start == 22.0
    joined, audio = queue.take(1)
    assert audio[0] == 22 * sr and joined.restore(_seg(0.0, 1.0)).start == 22.0
    assert len(queue) == 0 and queue.take(0)[1].shape == (0,)


def test_long_audio_is_split_for_the_vad_in_the_middle_of_its_quietest_second():
    rate = 16000
    noise = np.random.default_rng(3).normal(0, 0.1, 120 * rate).astype(np.float32)
    noise[int(52.0 * rate):int(54.0 * rate)] = 0.0  # a 2 s pause 8 s before the even split
    noise[int(64.0 * rate):int(64.5 * rate)] *= 0.01  # a shorter, quieter-than-speech stretch
    cuts = split_points(noise, 2)
    assert cuts[0] == 0 and cuts[-1] == noise.shape[0] and len(cuts) == 3
    assert 52.4 <= cuts[1] / rate <= 53.6 and cuts[1] % 512 == 0  # the pause's middle, on a VAD window
    four = split_points(noise, 4)
    assert len(four) == 5 and four == sorted(four) and 52.4 <= four[2] / rate <= 53.6
    assert split_points(noise, 1) == [0, noise.shape[0]]
    short = noise[:int((PARALLEL_MIN_SECONDS - 1) * rate)]
    assert split_points(short, 4) == [0, short.shape[0]]


def test_speech_running_over_a_split_is_one_region_again_unless_longer_than_a_clip():
    def at(*spans):  # seconds to samples
        return [(int(a * 16000), int(b * 16000)) for a, b in spans]

    cuts = [0, 16000 * 100, 16000 * 200]
    # from each part's start: the first part's last region runs into its end
    found = [at((1.0, 5.0), (90.0, 100.0)), at((0.0, 8.0), (20.0, 25.0))]
    assert joined_at(found, cuts) == [(1.0, 5.0), (90.0, 108.0), (120.0, 125.0)]
    # a pause at the split keeps them apart
    assert joined_at([at((90.0, 99.5)), at((0.25, 8.0))], cuts) == [(90.0, 99.5), (100.25, 108.0)]
    # joined, it would pass a clip's 30 s: left as two regions that touch
    assert joined_at([at((75.0, 100.0)), at((0.0, 10.0))], cuts) == [(75.0, 100.0), (100.0, 110.0)]
    assert CLIP_SECONDS == 30.0
    assert joined_at([[], at((0.0, 2.0))], cuts) == [(100.0, 102.0)]
    assert joined_at([[(1, 16001)]], [0, 32000]) == [(1 / 16000, 16001 / 16000)]  # one part: as found


def test_a_batched_piece_ends_before_its_last_clip():
    clips = [[(1.0, 10.0)], [(14.0, 40.0)], [(45.0, 60.0), (61.0, 70.0)]]
    assert clip_cut(clips) == 44.0  # a second before the last clip's speech
    assert clip_cut([[(1.0, 10.0)], [(10.4, 20.0)]]) == pytest.approx(10.2)  # a short pause: its middle
    assert clip_cut([[(1.0, 30.0)]]) is None  # one clip: the plain cut
    assert clip_cut([[(0.0, 0.2)], [(0.5, 30.0)]]) is None  # within the first second: no progress


def test_the_cpus_a_runner_may_use_follow_its_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 1.5
    assert usable_cpus(str(tmp_path)) == min(2, len(__import__("os").sched_getaffinity(0)))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(v1)) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_cpu_quota(str(v1)) == 0.5 and usable_cpus(str(v1)) == 1
    assert usable_cpus(str(tmp_path / "none")) == len(__import__("os").sched_getaffinity(0))


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


def test_only_short_audio_is_decoded_whole_for_packing(tmp_path):
    """A long recording is not held whole to learn that it is long: its container says so,
    or, where it says nothing, decoding stops once the length is passed."""
    sox = require_binary("sox", "sox")
    for seconds in (3, 75):
        subprocess.run([sox, "-n", "-r", "16000", "-c", "1", "-b", "16", str(tmp_path / f"{seconds}.flac"), "synth",
                        str(seconds), "pinknoise", "vol", "0.2"], check=True)

    class Counted(io.FileIO):
        read_bytes = 0

        def read(self, n=-1):
            out = super().read(n)
            self.read_bytes += len(out)
            return out

        def readinto(self, b):
            got = super().readinto(b)
            self.read_bytes += got or 0
            return got

    with Counted(tmp_path / "3.flac") as f:
        samples = short_samples(f, 60.0)
    assert samples is not None and samples.shape[0] == 3 * 16000
    with Counted(tmp_path / "3.flac") as f:
        assert np.array_equal(packing.decode(f.read()), samples), "the same samples from bytes"
    with Counted(tmp_path / "75.flac") as f:
        assert short_samples(f, 60.0) is None
        assert f.read_bytes < 0.5 * (tmp_path / "75.flac").stat().st_size, "never decoded whole"
    with Counted(tmp_path / "3.flac") as f:
        assert short_samples(f, 2.0) is None  # 3 s is long when packing ends at 2 s
    # a stream that declares no length is read a part at a time, until it is too long
    stream = SampleStream(np.zeros(75 * 16000, dtype=np.float32))
    assert packing._read(stream, 60.0) is None and stream.position == 2 * packing.READ_SAMPLES / 16000
    assert packing._read(SampleStream(np.ones(16000, dtype=np.float32)), 60.0).shape == (16000,)


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
