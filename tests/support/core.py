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


class ServiceProcess:
    """A kubescribe entry point (``python -m MODULE``) as a child process, output in a log
    file, started when its health URL answers. Subclasses set ``env``, ``log_path``,
    ``workdir`` and ``metrics_port`` before ``start()``."""

    module = ""
    health_path = ""
    env: dict[str, str]
    log_path: Path
    workdir: Path
    metrics_port: int
    proc: "subprocess.Popen[bytes] | None" = None

    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{self.health_path}"

    def start(self):
        import sys
        import urllib.request

        from tests.envtest import wait_for

        name = self.module.split(".")[-2]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.logs()[-3000:]}")
            with urllib.request.urlopen(self.health_url(), timeout=2) as r:
                return r.status == 200

        wait_for(healthy, timeout=60, interval=0.1, description=f"{name} {self.health_path}", ignore=(OSError,))
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make test` (it installs the Debian package {package})")
    return path


class RedisServer:
    """A real redis-server on a free loopback port, with an optional password."""

    def __init__(self, workdir: Path, password: str | None = None, persist: bool = False):
        self.binary = _require("redis-server", "redis-server")
        self.workdir = workdir
        self.password = password
        self.persist = persist  # append-only file: data survives a restart
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def client_kwargs(self) -> dict:
        return {}

    def start(self) -> "RedisServer":
        args = [self.binary, *self.listen_args(), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                connect(self.url, self.password, socket_timeout=1, **self.client_kwargs()).ping()
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
        return connect(self.url, self.password, **self.client_kwargs())


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


class TcpForwarder:
    """A loopback TCP forwarder that can refuse service: a network fault on demand.

    While ``enabled`` is False, connections are accepted and closed at once, which a
    client sees as the server going away.
    """

    def __init__(self, target_port: int):
        import socket as _socket
        import threading

        self.target_port = target_port
        self.enabled = True
        self.refused = 0
        self._sock = _socket.socket()
        self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        import socket as _socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self.enabled:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = _socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def make_tls_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, for rediss:// tests."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubescribe-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv_key = key()
    srv = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                       x509.DNSName("localhost")]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.crt", "cert": directory / "server.crt", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return paths


class TlsRedisServer(RedisServer):
    """redis-server listening only on TLS, for rediss:// URLs."""

    def __init__(self, workdir: Path, password: str | None = None):
        super().__init__(workdir, password)
        self.certs = make_tls_certs(workdir)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def listen_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.certs["cert"]),
                "--tls-key-file", str(self.certs["key"]), "--tls-ca-cert-file", str(self.certs["ca"]),
                "--tls-auth-clients", "no"]

    def client_kwargs(self) -> dict:
        return {"ca_file": str(self.certs["ca"])}
