"""Speech for tests and benchmarks: espeak-ng sentences as 16 kHz WAV, and the word
error rate a transcript is judged by."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from harness.envtest import require_binary


def speak(text: str, path: Path, speed: int = 120) -> Path:
    """Speech from espeak-ng, resampled to a 16 kHz mono WAV."""
    require_binary("espeak-ng", "espeak-ng")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(raw), text], check=True)
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


SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "weather": "The weather today is sunny with a light breeze from the west.",
    "library": "We will meet at the library on Monday afternoon.",
}


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm)
