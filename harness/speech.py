"""Audio for tests and benchmarks: espeak-ng speech of known sentences as 16 kHz WAV,
WAV streams of any size, and the word error rate a transcript is judged by."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np

from harness.envtest import require_binary


def speak(text: str, path: Path, speed: int = 120, voice: str | None = None) -> Path:
    """Speech from espeak-ng at ``speed`` words a minute in ``voice`` (an espeak-ng voice:
    "es", "en-gb", "en-us+f3"; its default English when None), resampled to a 16 kHz
    mono WAV at ``path``."""
    require_binary("espeak-ng", "espeak-ng")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", *(["-v", voice] if voice else []), "-s", str(speed), "-w", str(raw), text],
                   check=True)
    from faster_whisper.audio import decode_audio

    samples = decode_audio(str(raw), sampling_rate=16000)
    raw.unlink()
    write_wav(path, samples)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


#: Known text for generated speech: short, plain sentences that espeak-ng says clearly,
#: so WER measures the decoder and not the voice. The benchmarks join the first twelve
#: into a ~65 s "minute" and use all twenty-four as distinct short requests.
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "The weather today is sunny with a light breeze from the west.",
    "We will meet at the library on Monday afternoon.",
    "Please remember to bring your notebook and a pen to the meeting.",
    "The train to the city leaves every twenty minutes from platform four.",
    "Our garden has tomatoes, beans and a small apple tree near the fence.",
    "She reads the morning paper while her coffee is still warm.",
    "The children played football in the park until it was dark.",
    "He fixed the old bicycle and rode it down to the river.",
    "The museum opens at nine and closes at five on weekdays.",
    "A good map helps travellers find their way through the mountains.",
    "The baker sells fresh bread and sweet rolls every morning.",
    "My sister painted the kitchen a bright shade of yellow.",
    "The doctor asked him to drink more water and sleep early.",
    "Snow covered the roads, so the school stayed closed all day.",
    "The band played three new songs at the concert last night.",
    "Turn left at the bank and walk two blocks to the post office.",
    "The cat slept on the warm window sill all afternoon.",
    "They planted twenty trees along the new road in spring.",
    "Dinner will be ready in about fifteen minutes.",
    "The pilot told the passengers to fasten their seat belts.",
    "I forgot my umbrella and got wet on the way home.",
    "The students wrote a short report about the solar system.",
    "Fresh fruit and vegetables are sold at the market on Saturday.",
)
#: The tests' three sentences by name.
SENTENCES = dict(zip(("fox", "weather", "library"), CORPUS))
#: Silence between sentences when they are joined into one recording.
GAP_SECONDS = 0.5
SAMPLE_RATE = 16000
NOISE_BLOCK = 4 * 1024 * 1024


class SpeechBank:
    """Speech of the ``CORPUS`` sentences, made once each on first use and kept in
    ``directory`` (thread-safe: benchmarks ask from several threads)."""

    def __init__(self, directory: Path, speed: int = 120):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.speed = speed
        self._samples: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def samples(self, i: int) -> np.ndarray:
        from faster_whisper.audio import decode_audio

        with self._lock:
            if i not in self._samples:
                path = speak(CORPUS[i], self.dir / f"s{i:02d}.wav", speed=self.speed)
                self._samples[i] = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
            return self._samples[i]

    def sentence_wav(self, i: int) -> bytes:
        """One sentence as a 16 kHz mono WAV file's bytes."""
        self.samples(i)
        return (self.dir / f"s{i:02d}.wav").read_bytes()

    def joined(self, indices: range | list[int], name: str) -> tuple[bytes, str, float]:
        """Several sentences in one WAV with short gaps: (wav bytes, reference text, seconds)."""
        gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        parts: list[np.ndarray] = []
        for i in indices:
            parts += [self.samples(i), gap]
        audio = np.concatenate(parts)
        path = write_wav(self.dir / f"{name}.wav", audio)
        return path.read_bytes(), " ".join(CORPUS[i] for i in indices), audio.shape[0] / SAMPLE_RATE


#: espeak-ng voices that talk at once in :func:`crosstalk`.
CROSSTALK_VOICES = ("en-us+m3", "en+f3", "en-gb+m1", "en-us+f2")


def crosstalk(directory: Path, sentences_each: int = 8) -> np.ndarray:
    """Four voices talking at once (16 kHz samples, peak 0.9): each says its own corpus
    sentences at its own pace with its own pauses. Nobody could transcribe it, and on it
    tiny.en's batched pipeline loops ("going to be going to be ...")."""
    from faster_whisper.audio import decode_audio

    directory.mkdir(parents=True, exist_ok=True)
    tracks = []
    for k, voice in enumerate(CROSSTALK_VOICES):
        parts = []
        for j in range(sentences_each):
            path = speak(CORPUS[(k * 6 + j) % len(CORPUS)], directory / f"crosstalk-{k}-{j}.wav", speed=150 + 10 * k,
                         voice=voice)
            parts += [decode_audio(str(path), sampling_rate=SAMPLE_RATE),
                      np.zeros(int(0.3 * SAMPLE_RATE * (k + 1)), np.float32)]
        tracks.append(np.concatenate(parts))
    mix = np.zeros(max(t.shape[0] for t in tracks), np.float32)
    for t in tracks:
        mix[:t.shape[0]] += t
    return mix * (0.9 / float(np.abs(mix).max()))


@functools.lru_cache(maxsize=4)
def _noise_block(seed: int | None) -> bytes:
    """4 MiB of noise: random once per process when ``seed`` is None, else derived from
    the seed (distinct seeds, distinct uploads: distinct cache keys)."""
    if seed is None:
        return os.urandom(NOISE_BLOCK)
    return hashlib.shake_256(f"kubescribe-{seed}".encode()).digest(NOISE_BLOCK)


def wav_stream(size: int, seed: int | None = None):
    """``size`` bytes that sniff as WAV, generated as they are sent, for uploads larger than
    memory: a RIFF header, then one 4 MiB noise block over and over. The same ``size``
    and ``seed`` give the same bytes within a process (with a seed, in every process)."""
    block = _noise_block(seed)
    header = b"RIFF" + (size - 8 & 0xFFFFFFFF).to_bytes(4, "little") + b"WAVEfmt "
    yield header
    left = size - len(header)
    while left > 0:
        chunk = block[:left] if left < len(block) else block
        left -= len(chunk)
        yield chunk


def wav_bytes(size: int, seed: int | None = None) -> bytes:
    """``wav_stream`` in one piece."""
    return b"".join(wav_stream(size, seed))


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate, case and punctuation aside: of one transcript, or of a corpus given
    as two lists (errors over all its words)."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm)
