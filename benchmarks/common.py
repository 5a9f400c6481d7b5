"""What every benchmark shares: the outcome record, statistics, the run context and a
watch on requests. Processes, speech and memory sampling come from ``harness``; the
machine's facts and load from ``machine.py``.

The context owns the long-lived processes (redis-server, the Kubernetes control plane)
and stops them when the run ends, whether it ends well, by an exception, or by
SIGTERM/SIGINT. Processes a single benchmark starts (operators, fake kubelets) go on
that benchmark's own ``ExitStack``.
"""

from __future__ import annotations

import contextlib
import math
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


def engine_with_base(out: "Outcome", **options):
    """A runner engine on the test setup's model directory (hack/setup.sh models), or None
    with ``out`` marked NOT RUN when the base model is not there."""
    from kubescribe.modeldir import user_models_dir
    from kubescribe.runner.engine import Engine, EngineOptions
    from kubescribe.settings import EngineSettings

    models = Path(EngineSettings().model_dir or user_models_dir())
    if not (models / "base" / "model.bin").is_file():
        out.status, out.headline = "NOT RUN", f"no base model in {models}: hack/setup.sh models"
        return None
    return Engine(EngineOptions(model_dir=str(models), local_files_only=True, **options))


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
