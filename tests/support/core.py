"""Fixtures for the real non-Kubernetes parts: redis-server, espeak-ng speech, the model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from kubescribe.store import Store, connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make test` (it installs the Debian package {package})")
    return path


class RedisServer:
    """A real redis-server on a free loopback port, with an optional password."""

    def __init__(self, workdir: Path, password: str | None = None):
        self.binary = _require("redis-server", "redis-server")
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                connect(self.url, self.password, socket_timeout=1).ping()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):
        return connect(self.url, self.password)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_store(redis_server):
    client = redis_server.client()
    client.flushdb()
    return Store(client)


def speak(text: str, path: Path, speed: int = 120) -> Path:
    """Speech from espeak-ng, resampled to a 16 kHz mono WAV."""
    _require("espeak-ng", "espeak-ng")
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


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("speech")
    for name, text in SENTENCES.items():
        speak(text, d / f"{name}.wav")
    return d


@pytest.fixture(scope="session")
def engine():
    from kubescribe.runner.engine import Engine

    return Engine()


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm)


os.environ.setdefault("KUBESCRIBE_LOG_LEVEL", "WARNING")
