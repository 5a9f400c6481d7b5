"""Long audio in bounded memory: the streamed decode (runner.audio, runner.pieces) against
faster-whisper's whole-file decode on sox-made files, where pieces are cut (pure), and
real transcriptions piece by piece with tiny.en whose seams fall inside speech."""

from __future__ import annotations

import io
import re
import subprocess

import numpy as np
import pytest

from kubescribe.models import parse_spec
from kubescribe.runner import frames as frames_mod
from kubescribe.runner import engine as engine_mod
from kubescribe.runner import pieces as pieces_mod
from kubescribe.runner.audio import SAMPLE_RATE, AudioStream, BadAudio, open_audio
from kubescribe.runner.pieces import cut_point, pieces
from kubescribe.runner.engine import Engine, EngineOptions
from harness.envtest import require_binary
from harness.speech import SENTENCES, speak, wer, write_wav


def whole_decode(data: bytes) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)


# -- the streamed decode -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """75 s of two tones and pink noise, 44.1 kHz stereo (resampled and mixed down on
    decode), as WAV, FLAC and Ogg Vorbis; and a 16 kHz mono WAV (no resampling)."""
    sox = require_binary("sox", "sox")
    d = tmp_path_factory.mktemp("made")
    wav = d / "mix.wav"
    subprocess.run([sox, "-n", "-r", "44100", "-c", "2", "-b", "16", str(wav), "synth", "75", "sine", "150",
                    "sine", "230", "pinknoise", "remix", "1,2,3", "1,2,3", "vol", "0.3"], check=True)
    subprocess.run([sox, str(wav), str(d / "mix.flac")], check=True)
    subprocess.run([sox, str(wav), "-C", "3", str(d / "mix.ogg")], check=True)
    subprocess.run([sox, "-n", "-r", "16000", "-c", "1", "-b", "16", str(d / "mono16k.wav"), "synth", "75",
                    "sine", "300", "pinknoise", "remix", "1,2", "vol", "0.3"], check=True)
    return {p.name: p.read_bytes() for p in d.iterdir()}


FILES = ["mix.wav", "mix.flac", "mix.ogg", "mono16k.wav"]


@pytest.mark.parametrize("name", FILES)
def test_pieces_joined_are_faster_whispers_whole_decode(made, name):
    whole = whole_decode(made[name])
    got = list(pieces(io.BytesIO(made[name]), piece_seconds=20))
    assert [p.start for p in got] == [0.0, 20.0, 40.0, 60.0]
    assert [p.samples.shape[0] for p in got[:-1]] == [20 * SAMPLE_RATE] * 3
    joined = np.concatenate([p.samples for p in got])
    assert joined.dtype == np.float32 and joined.shape == whole.shape
    # the same resampler as decode_audio, fed the same 500,000-sample groups
    assert np.array_equal(joined, whole)


def _mp3(rate: int, seconds: float, freq: float) -> bytes:
    import av

    buf = io.BytesIO()
    tone = (0.3 * 32767 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.int16)
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        for i in range(0, tone.shape[0], 1152):
            frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1152], format="s16", layout="mono")
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def test_a_stream_whose_sample_rate_changes_midway_is_read_to_its_end():
    """Two MP3s joined end to end (3 s at 44.1 kHz, then 2 s at 22.05 kHz): one resampler
    refuses the second's frames; the stream goes on with a new one."""
    got = np.concatenate([p.samples for p in pieces(io.BytesIO(_mp3(44100, 3, 440) + _mp3(22050, 2, 220)),
                                                    piece_seconds=2)])
    assert 5.0 <= got.shape[0] / SAMPLE_RATE <= 5.2  # the encoder's padding: a frame or two
    # both halves are there: the 440 Hz tone first, the 220 Hz tone after
    for seconds, freq in ((slice(SAMPLE_RATE // 2, 2 * SAMPLE_RATE), 440), (slice(4 * SAMPLE_RATE, None), 220)):
        spectrum = np.abs(np.fft.rfft(got[seconds]))
        assert abs(np.argmax(spectrum) * SAMPLE_RATE / (2 * (spectrum.shape[0] - 1)) - freq) < 5


@pytest.mark.parametrize("name", FILES)
def test_reading_from_an_offset_seeks_there_and_gives_the_rest_of_the_whole_decode(made, name, monkeypatch):
    seeks = []
    real_seek = frames_mod.seek
    monkeypatch.setattr(frames_mod, "seek", lambda c, s: (seeks.append(s), real_seek(c, s)))
    whole = whole_decode(made[name])
    offset = 47.31234
    with AudioStream(io.BytesIO(made[name]), start=offset) as stream:
        assert stream.start == round(offset * SAMPLE_RATE) / SAMPLE_RATE == stream.position
        rest = stream.read(10**8)
        assert stream.ended and stream.position == pytest.approx(75.0, abs=1 / SAMPLE_RATE)
    assert seeks == [round(offset * SAMPLE_RATE) / SAMPLE_RATE]  # seeked, not decoded up to the offset
    expected = whole[round(offset * SAMPLE_RATE):]
    # After a seek the resampler starts on the input's own frame, a fraction of a 16 kHz
    # sample off the whole decode's grid (and a lossy decoder restarts): the length agrees
    # within a sample, and the samples line up best unshifted, within 10 % (RMS) of the
    # signal; shifted by one sample this noise differs by 9-18 %.
    assert abs(rest.shape[0] - expected.shape[0]) <= 1
    n = min(rest.shape[0], expected.shape[0]) - 3
    scale = np.sqrt(np.mean(expected ** 2))
    error = {lag: np.sqrt(np.mean((rest[3 + lag:3 + lag + n - 3] - expected[3:n]) ** 2)) / scale
             for lag in range(-3, 4)}
    assert min(error, key=error.get) == 0 and error[0] <= 0.1, (name, error)


def test_without_a_usable_seek_the_offset_is_reached_by_decoding_from_the_start(made, monkeypatch):
    import errno

    import av

    def refuse(container, seconds):  # what FFmpeg answers for a demuxer that cannot seek
        raise av.error.PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(frames_mod, "seek", refuse)
    whole = whole_decode(made["mix.flac"])
    with AudioStream(io.BytesIO(made["mix.flac"]), start=30.0) as stream:
        assert stream.start == 30.0
        rest = np.concatenate([stream.read(7 * SAMPLE_RATE) for _ in range(7)])
        assert stream.ended
    np.testing.assert_array_equal(rest, whole[30 * SAMPLE_RATE:])  # the very same decode, minus the head


@pytest.mark.parametrize("name", ["mix.wav", "mix.flac", "mix.ogg"])
def test_an_offset_past_the_end_leaves_the_stream_at_the_end(made, name):
    with AudioStream(io.BytesIO(made[name]), start=500.0) as stream:
        assert stream.ended and stream.read(SAMPLE_RATE).size == 0
        assert stream.start == pytest.approx(75.0, abs=0.001)


def test_the_length_comes_from_the_container_then_from_the_samples(made, monkeypatch):
    with AudioStream(io.BytesIO(made["mix.flac"])) as stream:
        assert stream.total_seconds() == 75.0  # FLAC's header, before much is decoded
        stream.read(10 * SAMPLE_RATE)
        assert stream.total_seconds() == 75.0
        stream.read(10**8)
        assert stream.ended and stream.total_seconds() == whole_decode(made["mix.flac"]).shape[0] / SAMPLE_RATE
    # a container that declares no length: estimated from the bytes read so far
    monkeypatch.setattr(frames_mod, "metadata_seconds", lambda container, stream: None)
    with AudioStream(io.BytesIO(made["mix.wav"])) as stream:
        stream.read(10 * SAMPLE_RATE)
        assert stream.total_seconds() == pytest.approx(75.0, rel=0.05)


def _silent_video() -> bytes:
    """A Matroska file with three frames of video and no audio stream."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for _ in range(3):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def test_what_is_not_audio_is_bad_audio_with_a_clear_message(made, tmp_path):
    import random

    # Fixed bytes, not os.urandom: about 1 in 200 random buffers happens to parse as a container
    # with no audio stream, which is the other clear message (checked below), not this one.
    noise = random.Random(20261202).randbytes(5000)
    cases = {
        "random bytes": (noise, "not a readable audio file"),
        "text": (b"hello, this is a text file and not a recording\n" * 50, "not a readable audio file"),
        "header only": (made["mix.wav"][:44], "no audio samples"),
        "empty": (b"", "empty (0 bytes)"),
        "video without sound": (_silent_video(), "holds no audio stream"),
    }
    for name, (data, message) in cases.items():
        for source in (data, io.BytesIO(data)):
            with pytest.raises(BadAudio, match=re.escape(message)):
                open_audio(source)
            with pytest.raises(BadAudio, match=re.escape(message)):
                list(pieces(io.BytesIO(data)))
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with empty.open("rb") as f, pytest.raises(BadAudio, match="empty"):
        open_audio(f)


def test_an_engine_with_pieces_too_short_to_hold_a_pause_is_refused():
    with pytest.raises(ValueError, match="piece_seconds"):
        EngineOptions(piece_seconds=20)
    assert EngineOptions().piece_seconds == pieces_mod.PIECE_SECONDS == 300


# -- where a piece is cut: a specification --------------------------------------------------------

def test_a_piece_is_cut_in_the_last_pause_before_its_final_seconds():
    # speech until 33.2 s, a pause, then speech running past the piece's end
    assert cut_point([(1.0, 20.0), (20.5, 33.2), (34.1, 40.0)], 40.0) == pytest.approx(33.65)
    # the pause closest to the end that is not in the last 2 s; a long pause is cut 1 s
    # from the speech after it, or at the limit
    assert cut_point([(1.0, 10.0), (20.0, 39.5)], 40.0) == 19.0
    assert cut_point([(1.0, 10.0)], 40.0) == 38.0  # silence at the end: cut 2 s before it
    assert cut_point([], 40.0) == 38.0


def test_unbroken_speech_is_cut_where_the_vad_split_it_and_never_in_the_first_second():
    # the VAD ends a region after at most 30 s: regions that touch are a cut too
    assert cut_point([(0.0, 30.0), (30.0, 40.0)], 40.0) == 30.0
    assert cut_point([(0.5, 40.0)], 40.0) == 38.0  # no pause at all: at the limit
    assert cut_point([(0.2, 39.9)], 40.0) == 38.0
    assert cut_point([(0.0, 0.4), (0.6, 40.0)], 40.0) == 38.0  # a pause inside the first second moves nothing
    assert cut_point([(1.0, 3.0)], 2.5) == 2.5  # too short to cut: whole


# -- real transcription, piece by piece -----------------------------------------------------------

SPOKEN = {
    **{k: v for k, v in SENTENCES.items()},
    "notebook": "Please remember to bring your notebook and a pen to the meeting.",
    "train": "The train to the city leaves every twenty minutes from platform four.",
    "paper": "She reads the morning paper while her coffee is still warm.",
    "football": "The children played football in the park until it was dark.",
    "bicycle": "He fixed the old bicycle and rode it down to the river.",
    "museum": "The museum opens at nine and closes at five on weekdays.",
    "baker": "The baker sells fresh bread and sweet rolls every morning.",
}
#: Words that belong to one sentence only: how often a sentence was heard is the most
#: times one of them was (tiny.en hears "The maker sells fresh red and sweet roll").
KEYWORDS = {
    "fox": ("quick", "fox", "lazy", "dog"), "weather": ("today", "sunny", "breeze", "west"),
    "library": ("meet", "library", "monday", "afternoon"), "notebook": ("remember", "bring", "notebook", "meeting"),
    "train": ("train", "city", "leaves", "platform"), "paper": ("reads", "paper", "coffee", "warm"),
    "football": ("children", "football", "park", "dark"), "bicycle": ("fixed", "old", "bicycle", "river"),
    "museum": ("museum", "opens", "closes", "weekdays"), "baker": ("sells", "fresh", "sweet", "bread"),
}
ROUNDS = 2
PIECE = 35.0


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Ten different sentences said twice (the second round in reverse order), 0.4-0.6 s
    apart: ~95 s, encoded as FLAC. Returns (flac bytes, reference text, the spoken
    stretches (start, end) in seconds, total seconds)."""
    sox = require_binary("sox", "sox")
    d = tmp_path_factory.mktemp("spoken")
    said = {}
    for name, text in SPOKEN.items():
        said[name] = whole_decode(speak(text, d / f"{name}.wav").read_bytes())
    order = list(SPOKEN) + list(reversed(SPOKEN))
    parts, stretches, text, t = [], [], [], 0
    for i, name in enumerate(order):
        s = said[name]
        loud = np.flatnonzero(np.abs(s) > 0.01)
        stretches.append(((t + loud[0]) / SAMPLE_RATE, (t + loud[-1]) / SAMPLE_RATE))
        gap = np.zeros(int((0.4 + 0.2 * (i % 2)) * SAMPLE_RATE), dtype=np.float32)
        parts += [s, gap]
        text.append(SPOKEN[name])
        t += s.shape[0] + gap.shape[0]
    wav = write_wav(d / "spoken.wav", np.concatenate(parts))
    flac = d / "spoken.flac"
    subprocess.run([sox, str(wav), str(flac)], check=True)
    return flac.read_bytes(), " ".join(text), stretches, t / SAMPLE_RATE


def _covered(regions):
    """Regions with those that touch (the VAD splits a pause shorter than its padding
    between the two sides) made one: the speech they cover."""
    out = []
    for a, b in regions:
        if out and a - out[-1][1] <= 0.001:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def test_the_vad_in_parts_at_once_finds_the_speech_a_whole_run_finds(spoken):
    """Real speech, ~95 s with pauses of 0.4-0.6 s: searched in two and in four parts at
    once, the speech covered is the whole run's, every edge within 0.1 s (the VAD's state
    starts afresh in each part), and no part boundary falls inside a spoken stretch."""
    from kubescribe.runner.vad import speech_regions, split_points

    samples = whole_decode(spoken[0])
    _flac, _text, stretches, _seconds = spoken
    whole = _covered(speech_regions(samples, parts=1))
    assert len(whole) >= 15
    for parts in (2, 4):
        cuts = split_points(samples, parts)
        assert len(cuts) == parts + 1
        assert not [c for c in cuts[1:-1] for a, b in stretches if a < c / SAMPLE_RATE < b]
        split = _covered(speech_regions(samples, parts=parts))
        assert len(split) == len(whole)
        assert max(max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(whole, split)) <= 0.1


@pytest.fixture(scope="module")
def piece_engine():
    return Engine(EngineOptions(piece_seconds=PIECE))


def spec(**extra):
    return parse_spec({"audio": {"redisKey": "kubescribe:audio:x"}, "device": "cpu", "language": "en",
                       "beamSize": 1, "batchSize": 4, **extra})


def times_heard(text: str) -> dict[str, int]:
    """For every sentence, the most times one of its own words was heard."""
    words = re.findall(r"[a-z]+", text.lower())
    return {name: max(words.count(k) for k in keys) for name, keys in KEYWORDS.items()}


def doubled(text: str) -> dict[str, int]:
    words = re.findall(r"[a-z]+", text.lower())
    return {k: words.count(k) for keys in KEYWORDS.values() for k in keys if words.count(k) > ROUNDS}


@pytest.fixture
def seams(monkeypatch):
    """The absolute positions where the engine cut pieces, and where the pieces would
    have ended uncut."""
    got = {"cuts": [], "ends": []}
    real = engine_mod.seam

    def spy(regions, length, clips):
        cut = real(regions, length, clips)
        start = got["cuts"][-1] if got["cuts"] else got["start"]
        got["ends"].append(start + length)
        got["cuts"].append(start + cut)
        return cut

    got["start"] = 0.0
    monkeypatch.setattr(engine_mod, "seam", spy)
    return got


def inside(t: float, stretches) -> bool:
    return any(a < t < b for a, b in stretches)


@pytest.mark.parametrize("decoding", ["sequential", "batched"])
def test_a_recording_in_pieces_cut_inside_speech_gives_every_sentence_once(piece_engine, spoken, seams,
                                                                             decoding):
    data, reference, stretches, seconds = spoken
    reports = []
    result = piece_engine.transcribe(data, spec(decoding=decoding), progress=lambda d, t: reports.append((d, t)))
    # the test means something: pieces would have ended inside a sentence, and the
    # engine moved every cut into the pause before it
    assert len(seams["cuts"]) >= 2, seams
    assert any(inside(t, stretches) for t in seams["ends"]), (seams, stretches)
    assert not any(inside(t, stretches) for t in seams["cuts"]), (seams, stretches)
    # every sentence heard as often as it was said, none more often
    assert doubled(result["text"]) == {}, result["text"]
    assert times_heard(result["text"]) == {name: ROUNDS for name in KEYWORDS}, result["text"]
    assert wer(reference, result["text"]) <= 0.3, result["text"]
    # the result is the document a whole-file run makes
    assert result["decoding"]["mode"] == decoding
    assert result["audio_duration_seconds"] == round(seconds, 3)
    segs = result["segments"]
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert all(a["end"] <= b["start"] for a, b in zip(segs, segs[1:])), segs
    assert 0 <= segs[0]["start"] and segs[-1]["end"] <= seconds
    # progress: of the declared length throughout, never back, ending at the end
    assert reports[-1] == (seconds, seconds)
    assert all(t == pytest.approx(seconds, abs=0.01) for _, t in reports)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


class Killed(Exception):
    pass


def test_a_run_stopped_in_a_later_piece_resumes_there_by_seeking(piece_engine, spoken, monkeypatch):
    data, reference, _stretches, seconds = spoken
    saved = []

    def stop_after_the_first_seam(done, total):
        if done > 1.2 * PIECE:
            raise Killed

    with pytest.raises(Killed):
        piece_engine.transcribe(data, spec(decoding="batched"), on_segment=saved.append,
                                progress=stop_after_the_first_seam)
    assert saved and saved[-1]["end"] > PIECE, saved

    seeks = []
    real_seek = frames_mod.seek
    monkeypatch.setattr(frames_mod, "seek", lambda c, s: (seeks.append(s), real_seek(c, s)))
    resumed = piece_engine.transcribe(data, spec(decoding="batched"), done=saved)
    assert seeks == [saved[-1]["end"]]
    assert resumed["decoding"]["resumed_at_seconds"] == saved[-1]["end"]
    assert resumed["audio_duration_seconds"] == round(seconds, 3)
    segs = resumed["segments"]
    assert segs[:len(saved)] == saved
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert all(a["end"] <= b["start"] for a, b in zip(segs, segs[1:])), segs
    assert doubled(resumed["text"]) == {}, resumed["text"]
    assert times_heard(resumed["text"]) == {name: ROUNDS for name in KEYWORDS}, resumed["text"]
    assert wer(reference, resumed["text"]) <= 0.3


def test_batched_words_land_on_the_speech_they_were_said_in_and_a_long_pause_splits_segments(tmp_path):
    """Batched clips are decoded with their pauses left out; the times come back onto the
    recording. Pauses of 0.5 s and 3 s (inside a clip) and 10 s (past the 6 s clip gap):
    every word lies on the sentence it was said in, never in a pause, and no segment
    spans the 10 s silence."""
    names = ["fox", "weather", "library", "notebook", "train", "paper"]
    pauses = [0.5, 3.0, 10.0, 0.5, 3.0, 0.0]
    parts, stretches, t = [], [], 0
    for name, pause in zip(names, pauses):
        s = whole_decode(speak(SPOKEN[name], tmp_path / f"{name}.wav").read_bytes())
        loud = np.flatnonzero(np.abs(s) > 0.01)
        stretches.append(((t + loud[0]) / SAMPLE_RATE, (t + loud[-1]) / SAMPLE_RATE))
        parts += [s, np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
        t += s.shape[0] + int(pause * SAMPLE_RATE)
    data = write_wav(tmp_path / "paused.wav", np.concatenate(parts)).read_bytes()
    result = Engine(EngineOptions(clip_gap_seconds=6.0)).transcribe(
        data, spec(decoding="batched", wordTimestamps=True, beamSize=5))
    reference = " ".join(SPOKEN[n] for n in names)
    assert wer(reference, result["text"]) <= 0.3, result["text"]
    words = [w for s in result["segments"] for w in s["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    # each word on speech: its middle within a sentence's stretch (half a second of slack
    # for Whisper's word timing), never in the 3 s or 10 s pauses
    off = [w for w in words if not any(a - 0.5 <= (w["start"] + w["end"]) / 2 <= b + 0.5 for a, b in stretches)]
    assert not off, (off, stretches)
    silence = (stretches[2][1], stretches[3][0])  # the 10 s pause
    assert not [s for s in result["segments"] if s["start"] < silence[0] and s["end"] > silence[1]], result["segments"]
    assert all(s["start"] == s["words"][0]["start"] and s["end"] == s["words"][-1]["end"] for s in result["segments"])
