"""A stand-in kubelet (and scheduler) for runner Jobs.

No container runtime exists on the test machines, so this plays the node's part for
pods that belong to a Job, and nothing else: it binds them to a fake Node (as the
scheduler would), runs the first container's ``command + args`` as a local process
with the container's environment, and reports the pod's life through the API the way
a kubelet does (Running with a Ready condition, then Succeeded/Failed with the
container's exit code, reason and termination message). The real Job controller turns
that into Job status, retries, ``podFailurePolicy`` and conditions.

What a kubelet would do and this does not: images, init and sidecar containers (only
``containers[0]`` runs), volumes, probes, resource limits, restarts in place
(``restartPolicy: OnFailure`` behaves like ``Never``), ``kubectl logs`` (use ``logs()``).

The container's environment and its final status are worked out in ``pods.py``; each
container is a ``harness.process.ManagedProcess``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from harness.envtest.pods import (ConfigError, container_env, expand_vars, terminal_status, termination_message,
                                  timestamp)
from harness.process import ManagedProcess

log = logging.getLogger(__name__)

CommandOverride = Callable[[dict], Optional[Sequence[str]]]

DEFAULT_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi", "nvidia.com/gpu": "4"}


def _owned_by_job(pod: dict) -> bool:
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return True
    return False


@dataclass
class PodRun:
    """What the fake kubelet knows about one pod it runs."""

    namespace: str
    name: str
    uid: str
    log_path: Path
    termination_log: Path
    command: list[str] = field(default_factory=list)
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    reason: str = ""
    kill_reason: str = ""  # "deleted" | "DeadlineExceeded" | "stopping"
    kill_grace: float = 0.0
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    def request_kill(self, reason: str, grace: float) -> None:
        if not self.kill_reason:
            self.kill_reason = reason
            self.kill_grace = grace
        self.wake.set()


class FakeKubelet:
    """Schedules and runs Job pods on one fake Node.

    Args:
        cluster: the ``KubeCluster`` to register with (anything with ``api_client()``).
        node_name: the Node this kubelet registers and binds pods to.
        namespace: only handle pods in this namespace (all namespaces when ``None``).
        command_override: ``pod -> argv | None``; when it returns an argv, that runs
            instead of the container's command (``pod`` is the API object as a dict).
            Tests use it to substitute a fake runner. Settable at any time.
        capacity: the Node's capacity and allocatable; defaults include 4 GPUs
            (``nvidia.com/gpu``) so GPU requests look schedulable.
        labels: extra Node labels.
        workdir: where per-pod logs, working directories and termination logs go; a
            temporary directory, removed by ``stop()`` unless ``KUBESCRIBE_ENVTEST_KEEP=1``.
        pythonpath: prepended to ``PYTHONPATH``. Empty by default: kubescribe is
            installed (editable) into the test interpreter, and the repository root must
            not go on the path, where its ``operator/`` folder would shadow the standard
            library's ``operator`` module.
        extra_env: added to every process' environment (before the pod's own env).
        max_grace_seconds: cap on the SIGTERM-to-SIGKILL wait when a pod is deleted,
            so a deleted pod's 30 s default grace does not stall a test.
    """

    def __init__(
        self,
        cluster: Any,
        *,
        node_name: str = "kubescribe-fake-node",
        namespace: Optional[str] = None,
        command_override: Optional[CommandOverride] = None,
        capacity: Optional[dict[str, str]] = None,
        labels: Optional[dict[str, str]] = None,
        workdir: Optional[os.PathLike[str] | str] = None,
        pythonpath: Sequence[os.PathLike[str] | str] = (),
        extra_env: Optional[dict[str, str]] = None,
        max_grace_seconds: float = 10.0,
        scheduler_name: str = "default-scheduler",
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.namespace = namespace
        self.command_override = command_override
        self.capacity = dict(capacity or DEFAULT_CAPACITY)
        self.labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.present": "true",
            **(labels or {}),
        }
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-kubelet-"))
        self.logs_dir = self.workdir / "logs"
        self.pods_dir = self.workdir / "pods"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.pythonpath = [str(p) for p in pythonpath]
        self.extra_env = dict(extra_env or {})
        self.max_grace_seconds = max_grace_seconds
        self.scheduler_name = scheduler_name

        self._lock = threading.RLock()
        self._runs: dict[str, PodRun] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._watch_thread: Optional[threading.Thread] = None
        self._watch: Any = None
        self._api: Any = None
        self._watch_api: Any = None
        self.errors: list[str] = []  # unexpected failures, for test diagnostics

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FakeKubelet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> "FakeKubelet":
        from kubernetes import client

        self._api = self.cluster.api_client()
        self._watch_api = self.cluster.api_client()
        self._core = client.CoreV1Api(self._api)
        self._watch_core = client.CoreV1Api(self._watch_api)
        self._register_node()
        self._stopping.clear()
        self._synced.clear()
        self._watch_thread = threading.Thread(target=self._watch_loop, name="fake-kubelet-watch", daemon=True)
        self._watch_thread.start()
        if not self._synced.wait(timeout):
            self.stop()
            raise RuntimeError(f"fake kubelet did not list pods within {timeout}s: {self.errors[-3:]}")
        return self

    def stop(self) -> None:
        """Stop watching, kill every process still running, close API clients."""
        self._stopping.set()
        deadline = time.monotonic() + 15
        while self._watch_thread is not None and self._watch_thread.is_alive() and time.monotonic() < deadline:
            self._unblock_watch()
            self._watch_thread.join(0.1)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.request_kill("stopping", 1.0)
        for t in list(self._threads):
            t.join(timeout=15)
        for api in (self._api, self._watch_api):
            if api is not None:
                with contextlib.suppress(Exception):
                    api.close()
        if self._own_workdir and os.environ.get("KUBESCRIBE_ENVTEST_KEEP", "") in ("", "0", "false"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _unblock_watch(self) -> None:
        """End the watch thread's blocking read now rather than at the watch timeout."""
        w = self._watch
        if w is None:
            return
        w.stop()
        resp = getattr(w, "_resp", None)  # the streaming urllib3 response
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread

    @contextlib.contextmanager
    def override_command(self, fn: CommandOverride) -> Iterator["FakeKubelet"]:
        """Use ``fn`` as ``command_override`` inside the ``with`` block only."""
        previous = self.command_override
        self.command_override = fn
        try:
            yield self
        finally:
            self.command_override = previous

    # ----------------------------------------------------------------- inspection

    def run_for(self, pod_name: str, namespace: Optional[str] = None) -> Optional[PodRun]:
        """The most recent run of a pod by name (any namespace unless given)."""
        with self._lock:
            found = [
                r for r in self._runs.values()
                if r.name == pod_name and (namespace is None or r.namespace == namespace)
            ]
        return found[-1] if found else None

    def runs(self, namespace: Optional[str] = None) -> list[PodRun]:
        """Every pod run so far, oldest first."""
        with self._lock:
            return [r for r in self._runs.values() if namespace is None or r.namespace == namespace]

    def running(self) -> list[PodRun]:
        """Runs whose process has started and not yet been reaped."""
        return [r for r in self.runs() if r.pid is not None and not r.done.is_set()]

    def log_path(self, pod_name: str, namespace: Optional[str] = None) -> Path:
        run = self.run_for(pod_name, namespace)
        if run is None:
            raise KeyError(f"fake kubelet has not run pod {namespace + '/' if namespace else ''}{pod_name}")
        return run.log_path

    def logs(self, pod_name: str, namespace: Optional[str] = None) -> str:
        """The process' combined stdout and stderr, like ``kubectl logs``."""
        return self.log_path(pod_name, namespace).read_text(errors="replace")

    # ----------------------------------------------------------------- API helpers

    def _raw(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call an API method and return the JSON as plain dicts.

        Plain dicts rather than the client's models: the kubelet has to read and
        write whatever other clients put into pods without any model being stricter
        than the API server.
        """
        resp = fn(*args, _preload_content=False, _request_timeout=(5, 30), **kwargs)
        try:
            data = resp.data
        finally:
            with contextlib.suppress(Exception):
                resp.release_conn()
        return json.loads(data) if data else None

    def _register_node(self) -> None:
        from kubernetes.client.rest import ApiException

        now = timestamp()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.labels},
            "spec": {},
        }
        try:
            self._raw(self._core.create_node, node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        status = {
            "status": {
                "capacity": self.capacity,
                "allocatable": self.capacity,
                "conditions": [
                    {
                        "type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubescribe fake kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now,
                    },
                    *[
                        {
                            "type": t, "status": "False", "reason": r, "message": "",
                            "lastHeartbeatTime": now, "lastTransitionTime": now,
                        }
                        for t, r in (
                            ("MemoryPressure", "KubeletHasSufficientMemory"),
                            ("DiskPressure", "KubeletHasNoDiskPressure"),
                            ("PIDPressure", "KubeletHasSufficientPID"),
                        )
                    ],
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "nodeInfo": {
                    "machineID": "kubescribe-fake", "systemUUID": "kubescribe-fake", "bootID": "kubescribe-fake",
                    "kernelVersion": os.uname().release, "osImage": "kubescribe fake kubelet",
                    "containerRuntimeVersion": "kubescribe-fake://1", "kubeletVersion": "v0.0.0-fake",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                },
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            }
        }
        self._raw(self._core.patch_node_status, self.node_name, status)

    # ----------------------------------------------------------------- watch

    def _list_fn(self) -> Callable[..., Any]:
        if self.namespace:
            return lambda **kw: self._watch_core.list_namespaced_pod(self.namespace, **kw)
        return self._watch_core.list_pod_for_all_namespaces

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        list_fn = self._list_fn()
        rv: Optional[str] = None
        while not self._stopping.is_set():
            try:
                if rv is None:
                    pods = self._raw(list_fn)
                    rv = pods["metadata"]["resourceVersion"]
                    for pod in pods.get("items") or []:
                        self._handle("SYNC", pod)
                    self._synced.set()
                w = watch.Watch()
                self._watch = w
                # timeout_seconds ends each watch so stop() is noticed within seconds;
                # the next one resumes from the last resourceVersion seen.
                for event in w.stream(
                    list_fn,
                    resource_version=rv,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    _request_timeout=(5, 30),
                ):
                    if self._stopping.is_set():
                        w.stop()
                        break
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":  # usually 410 Gone: history compacted, list again
                        rv = None
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if kind == "BOOKMARK":
                        continue
                    self._handle(kind, obj)
            except ApiException as exc:
                if exc.status != 410:
                    self._note_error(f"watch: {exc.status} {exc.reason}")
                rv = None
                self._stopping.wait(0.5)
            except KeyError:
                # kubernetes.watch with deserialize=False trips over ERROR events
                # (it looks for "raw_object"); treat it like the 410 it almost always is.
                rv = None
            except Exception as exc:  # connection reset, cluster stopping, ...
                if not self._stopping.is_set():
                    self._note_error(f"watch: {exc!r}")
                    rv = None
                    self._stopping.wait(0.5)

    def _note_error(self, msg: str) -> None:
        log.warning("fake kubelet: %s", msg)
        with self._lock:
            self.errors.append(msg)

    def _handle(self, kind: Optional[str], pod: dict) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        if kind == "DELETED":
            run = self._runs.get(uid)
            if run is not None:
                run.request_kill("deleted", 0.0)
            return
        if not _owned_by_job(pod):
            return
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            run = self._runs.get(uid)
            if run is not None:
                run.request_kill("deleted", float(meta.get("deletionGracePeriodSeconds") or 0))
            elif node == self.node_name and phase not in ("Succeeded", "Failed"):
                self._confirm_deletion(pod)
            return
        if phase in ("Succeeded", "Failed"):
            return
        if not node:
            if spec.get("schedulerName", "default-scheduler") == self.scheduler_name and not spec.get("schedulingGates"):
                self._bind(pod)
            return
        if node != self.node_name:
            return
        with self._lock:
            if uid in self._runs or self._stopping.is_set():
                return
            base = f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
            pod_dir = self.pods_dir / base
            pod_dir.mkdir(parents=True, exist_ok=True)
            run = PodRun(
                namespace=meta["namespace"],
                name=meta["name"],
                uid=uid,
                log_path=self.logs_dir / f"{base}.log",
                termination_log=pod_dir / "termination-log",
            )
            self._runs[uid] = run
            t = threading.Thread(target=self._run_pod, args=(run, pod, pod_dir), name=f"fake-kubelet-{meta['name']}", daemon=True)
            self._threads.append(t)
        t.start()

    def _bind(self, pod: dict) -> None:
        """Bind like the scheduler does; a 409 means someone bound it first: re-read."""
        from kubernetes.client.rest import ApiException

        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self._raw(self._core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                with contextlib.suppress(ApiException):
                    fresh = self._raw(self._core.read_namespaced_pod, meta["name"], meta["namespace"])
                    if fresh and fresh["metadata"].get("uid") == meta["uid"]:
                        self._handle("MODIFIED", fresh)
            elif exc.status != 404:
                self._note_error(f"bind {meta['namespace']}/{meta['name']}: {exc.status} {exc.reason}")

    def _confirm_deletion(self, pod: dict) -> None:
        """Finish a graceful deletion, as the kubelet does once containers are gone."""
        from kubernetes.client.rest import ApiException

        meta = pod["metadata"]
        with contextlib.suppress(ApiException):
            self._raw(
                self._core.delete_namespaced_pod,
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    # ----------------------------------------------------------------- one pod

    def _patch_status(self, run: PodRun, status: dict) -> bool:
        """Strategic-merge the pod status; False when the pod is gone."""
        from kubernetes.client.rest import ApiException

        for _ in range(5):
            try:
                self._raw(self._core.patch_namespaced_pod_status, run.name, run.namespace, {"status": status})
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status == 409:  # conflict: re-read and try again
                    try:
                        fresh = self._raw(self._core.read_namespaced_pod, run.name, run.namespace)
                    except ApiException:
                        return False
                    if fresh["metadata"].get("uid") != run.uid:
                        return False
                    continue
                self._note_error(f"status {run.namespace}/{run.name}: {exc.status} {exc.reason} {exc.body}")
                return False
        return False

    def _resolve_env(self, pod: dict, container: dict) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        return container_env(pod, container, self.node_name,
                             secret=lambda name: self._raw(self._core.read_namespaced_secret, name, ns),
                             config_map=lambda name: self._raw(self._core.read_namespaced_config_map, name, ns))

    def _process_env(self, pod: dict, pod_env: dict[str, str], run: PodRun) -> dict[str, str]:
        env = dict(os.environ)
        # Commands resolve against the interpreter running the tests first, so
        # `python` and console scripts such as `kubescribe-runner` are this venv's.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        pp = [p for p in [*self.pythonpath, env.get("PYTHONPATH", "")] if p]
        if pp:
            env["PYTHONPATH"] = os.pathsep.join(pp)
        env.pop("KUBECONFIG", None)  # a pod has no kubeconfig; the test's must not leak in
        env["HOSTNAME"] = pod["metadata"]["name"]
        env.update(self.extra_env)
        env.update(pod_env)
        # The real container writes /dev/termination-log; kubescribe's runner honours
        # this variable instead, and it wins over any value in the pod spec.
        env["KUBESCRIBE_TERMINATION_LOG"] = str(run.termination_log)
        return env

    def _run_pod(self, run: PodRun, pod: dict, pod_dir: Path) -> None:
        try:
            self._run_pod_inner(run, pod, pod_dir)
        except Exception as exc:  # keep the thread's failure visible to the test
            self._note_error(f"run {run.namespace}/{run.name}: {exc!r}")
        finally:
            run.done.set()

    def _run_pod_inner(self, run: PodRun, pod: dict, pod_dir: Path) -> None:
        container = pod["spec"]["containers"][0]
        cname = container["name"]
        image = container.get("image") or "none"
        base_status = {
            "name": cname,
            "image": image,
            "imageID": f"kubescribe-fake://{image}",
            "restartCount": 0,
        }
        start_time = timestamp()

        # 1. Environment; missing Secrets/ConfigMaps keep the pod Pending, like a kubelet.
        last_msg = None
        while True:
            try:
                pod_env = self._resolve_env(pod, container)
                break
            except ConfigError as exc:
                msg = str(exc)
                if msg != last_msg:
                    last_msg = msg
                    self._patch_status(run, {
                        "phase": "Pending",
                        "startTime": start_time,
                        "hostIP": "127.0.0.1",
                        "hostIPs": [{"ip": "127.0.0.1"}],
                        "containerStatuses": [{
                            **base_status, "ready": False, "started": False,
                            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": msg}},
                        }],
                    })
                if run.wake.wait(1.0) and run.kill_reason:
                    self._finish_killed_before_start(run, pod)
                    return
                run.wake.clear()

        # 2. Command.
        override = self.command_override
        argv = list(override(pod) or []) if override else []
        if not argv:
            argv = [expand_vars(a, pod_env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        run.command = argv
        env = self._process_env(pod, pod_env, run)
        run.termination_log.touch()
        run.started_at = timestamp()
        if not argv:
            return self._start_error(run, base_status, start_time, argv,
                                     "container has no command: the fake kubelet cannot run an image entrypoint")
        proc = ManagedProcess(f"pod {run.namespace}/{run.name}", argv, run.log_path, env, cwd=pod_dir)
        try:
            proc.start()
        except OSError as exc:
            return self._start_error(run, base_status, start_time, argv, exc)
        run.pid = proc.pid

        # 3. Running (a pod deleted meanwhile is gone: stop the process).
        alive = self._patch_status(run, {
            "phase": "Running",
            "startTime": start_time,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": run.started_at}
                for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [{
                **base_status, "containerID": f"kubescribe-fake://{proc.pid}", "ready": True, "started": True,
                "state": {"running": {"startedAt": run.started_at}},
            }],
        })
        if not alive:
            run.request_kill("deleted", 0.0)

        # 4. Wait for exit, deletion or the pod's activeDeadlineSeconds.
        waiter = threading.Thread(target=lambda: (proc.proc.wait(), run.wake.set()), daemon=True)  # type: ignore[union-attr]
        waiter.start()
        deadline_s = pod["spec"].get("activeDeadlineSeconds")
        deadline = time.monotonic() + float(deadline_s) if deadline_s else None
        while proc.running:
            if run.kill_reason:
                proc.stop(grace=max(0.0, min(run.kill_grace, self.max_grace_seconds)))
                break
            if deadline is not None and time.monotonic() >= deadline:
                run.request_kill("DeadlineExceeded", 0.0)
                continue
            run.wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            run.wake.clear()
        waiter.join()
        rc = proc.proc.returncode  # type: ignore[union-attr]
        exit_code = rc if rc >= 0 else 128 + (-rc)
        run.exit_code = exit_code
        run.finished_at = timestamp()
        run.reason = "Completed" if exit_code == 0 else "Error"

        if run.kill_reason == "stopping":
            return
        message = termination_message(run.termination_log, run.log_path, container, exit_code)
        status = terminal_status(run, base_status, start_time, exit_code, run.reason, message, proc.pid)
        if run.kill_reason == "DeadlineExceeded":
            status["phase"] = "Failed"
            status["reason"] = "DeadlineExceeded"
            status["message"] = "Pod was active on the node longer than the specified deadline"
        elif run.kill_reason == "deleted":
            status["phase"] = "Failed"
        alive = self._patch_status(run, status)
        if run.kill_reason == "deleted" and alive:
            self._confirm_deletion(pod)

    def _finish_killed_before_start(self, run: PodRun, pod: dict) -> None:
        run.finished_at = timestamp()
        if run.kill_reason == "deleted":
            self._confirm_deletion(pod)

    def _start_error(self, run: PodRun, base_status: dict, start_time: str, argv: list[str], error: object) -> None:
        """The container could not start: exit 128, reason StartError, as the kubelet says."""
        run.exit_code, run.reason = 128, "StartError"
        run.finished_at = timestamp()
        self._patch_status(run, terminal_status(
            run, base_status, start_time, 128, "StartError", f"failed to start {argv[:1]}: {error}"))
