"""Real redis-server processes for tests and benchmarks: plain, TLS, and a loopback
forwarder that can refuse service."""

from __future__ import annotations

from pathlib import Path

from harness.certs import make_tls_certs
from harness.envtest import free_port, require_binary
from harness.process import ManagedProcess
from kubescribe.store import connect


class RedisServer:
    """A real redis-server on a free loopback port, with an optional password."""

    def __init__(self, workdir: Path, password: str | None = None, persist: bool = False):
        self.binary = require_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.password = password
        self.persist = persist  # append-only file: data survives a restart
        self.port = free_port()
        self.process: ManagedProcess | None = None

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
        self.process = ManagedProcess("redis-server", args, self.workdir / f"redis-{self.port}.log").start()
        # Anything the client raises (refused, loading, TLS not up) means "not yet".
        self.process.wait_ready(
            lambda: connect(self.url, self.password, socket_timeout=1, **self.client_kwargs()).ping(),
            timeout=20, interval=0.05, description=f"redis-server on {self.port}", ignore=(Exception,))
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):
        return connect(self.url, self.password, **self.client_kwargs())


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
