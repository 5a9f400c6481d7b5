"""A webhook receiver on 127.0.0.1 for notification tests and benchmarks: a real HTTP
server that records every POST and answers as the test tells it (a status code, a
script of codes, a hold until released, or a delay), and can go down and come back on
the same port."""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Delivery:
    """One POST as received."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """``codes`` are answered in turn, then ``code`` for ever; ``hold`` (an Event) makes
    each POST wait until it is set; ``delay`` seconds are waited before answering."""

    code: int = 204
    codes: list[int] = field(default_factory=list)
    hold: threading.Event | None = None
    delay: float = 0.0
    port: int = 0
    received: list[Delivery] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def reserve_port(self) -> "Receiver":
        """Pick a free port without listening on it (the receiver is down)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        return self

    def start(self) -> "Receiver":
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.received.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    code = receiver.codes.pop(0) if receiver.codes else receiver.code
                    receiver.arrived.notify_all()
                if receiver.hold is not None:
                    receiver.hold.wait(120)
                if receiver.delay:
                    threading.Event().wait(receiver.delay)  # the slow sink being measured
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_count(self, n: int, timeout: float = 60) -> list[Delivery]:
        """The deliveries once at least ``n`` have arrived."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"the receiver got {len(self.received)} POSTs in {timeout}s, expected {n}")
            return list(self.received)
