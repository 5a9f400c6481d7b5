"""The one way tests and benchmarks run a long-lived process.

Every server the harness starts (etcd, the API server, kubelets, kwok, Kueue, Prometheus,
versitygw, redis-server, Sentinel, and kubescribe's own operator and gateway) is a
``ManagedProcess``: output to a log file, its own process group, a readiness wait that
fails at once with the log tail when the process exits, and a stop that sends SIGTERM to
the group, then SIGKILL after a grace period, so children of a server go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from harness.envtest import log_tail, wait_for

T = TypeVar("T")


class ProcessError(RuntimeError):
    """A process exited early or did not become ready; the message carries its log tail."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    """Ask Linux to SIGTERM the child if the test process dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def http_ok(url: str, *, context: Optional[ssl.SSLContext] = None) -> bool:
    """A health URL's probe: True on 200, False on another status (503 while starting); a
    refused connection raises OSError, which ``wait_ready`` counts as "not yet"."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


class ManagedProcess:
    """One long-running program with its output in a log file.

    Args:
        name: what messages call it.
        argv: the command.
        log_path: stdout and stderr go here (appended: a restart keeps the earlier run).
        env: the environment; None inherits this process's.
        cwd: the working directory; None keeps this process's.
        error: the exception type raised when it exits early or is not ready in time, so
            that a caller's own error (``ClusterStartError``, ``S3ServerError``) comes out.
        stop_grace: seconds between SIGTERM and SIGKILL in ``stop()``.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Optional[dict[str, str]] = None, *,
                 cwd: Optional[Path] = None, error: type[Exception] = ProcessError, stop_grace: float = 10.0):
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.error = error
        self.stop_grace = stop_grace
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "ManagedProcess":
        log = open(self.log_path, "ab")
        try:
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only ask for
            # it from the main thread (where pytest fixtures run).
            preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True, preexec_fn=preexec)
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise ``error`` with the log tail if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self.error(f"{self.name} exited with code {self.proc.returncode}\n"
                             f"command: {' '.join(self.argv)}\n--- {self.log_path} ---\n{log_tail(self.log_path)}")

    def wait_ready(self, probe: Callable[[], T], *, timeout: float, interval: float = 0.1,
                   description: str = "", ignore: tuple[type[BaseException], ...] = (OSError,)) -> T:
        """``probe()`` until it returns something truthy; fails at once if the process exits,
        and with the log tail on timeout (stopping the process). Exceptions in ``ignore``
        mean "not yet"."""

        def alive_and_ready() -> T:
            self.check_alive()
            return probe()

        try:
            return wait_for(alive_and_ready, timeout=timeout, interval=interval,
                            description=description or f"{self.name} to become ready", ignore=ignore)
        except TimeoutError as exc:
            self.stop()  # not ready is not wanted; its log stays
            raise self.error(f"{exc}\n--- {self.log_path} ---\n{log_tail(self.log_path)}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL to the whole group: no clean-up, as when a node dies."""
        if self.running and self._signal(signal.SIGKILL):
            self.proc.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self, grace: Optional[float] = None) -> None:
        """SIGTERM to the group, then SIGKILL after ``grace`` (default ``stop_grace``)
        seconds; 0 is SIGKILL at once. Whatever of the group outlived its leader (a
        runner's children) is killed too."""
        grace = self.stop_grace if grace is None else grace
        if self.running:
            if grace <= 0 or not self._signal(signal.SIGTERM):
                self.kill()
            else:
                try:
                    self.proc.wait(timeout=grace)  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    self.kill()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """kubescribe settings as its environment variables: ``KUBESCRIBE_<NAME>``, a string
    as it is and anything else as JSON (lists, numbers, booleans)."""
    return {f"KUBESCRIBE_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}


class ServiceProcess(ManagedProcess):
    """A kubescribe entry point (``python -m MODULE``) as a child process, ready when its
    health URL answers. Subclasses set ``module`` and ``health_path``."""

    module = ""
    health_path = ""

    def __init__(self, env: dict[str, str], log_path: Path, workdir: Path, metrics_port: int):
        super().__init__(self.module.split(".")[-2], [sys.executable, "-m", self.module], log_path, env,
                         cwd=workdir, stop_grace=20.0)
        self.workdir = workdir
        self.metrics_port = metrics_port

    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{self.health_path}"

    def start(self) -> "ServiceProcess":
        super().start()
        self.wait_ready(lambda: http_ok(self.health_url()), timeout=60, description=f"{self.name} {self.health_path}")
        return self

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()
