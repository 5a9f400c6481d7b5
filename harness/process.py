"""One kubescribe entry point as a child process: started, waited for until healthy,
logged to a file, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import subprocess
from pathlib import Path


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

        from harness.envtest import wait_for

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
