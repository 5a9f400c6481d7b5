"""Simulated GPU nodes for scale tests: kwok and kube-scheduler against a ``KubeCluster``.

kwok (sigs.k8s.io/kwok, built by ``hack/build-test-binaries.sh kwok``) plays the kubelet
of many fake nodes from one process: it keeps their status, and moves the pods the real
kube-scheduler binds to them through *stages*. The stages here make a runner pod behave
like one that transcribed successfully:

1. ``kubescribe-pod-ready``: Pending -> Running (all containers started, Ready).
2. ``kubescribe-runner-complete``: a Running runner pod (label
   ``app.kubernetes.io/component=runner``) ends after ``run_seconds`` with exit code 0
   and a termination message in the runner's format: a successful
   :class:`kubescribe.outcomes.RunnerOutcome` as JSON, as ``runner/main.py`` writes it to
   ``/dev/termination-log``.
3. ``kubescribe-pod-delete``: a pod being deleted whose finalizers are gone (the Job
   controller's tracking finalizer) is removed, as a kubelet would after the containers
   stopped.

What is real: the API server (schema, CEL, RBAC, audit), etcd, the scheduler (GPU
capacity as ``nvidia.com/gpu`` in each node's allocatable), the Job controller (pods,
conditions, podFailurePolicy, TTL), the garbage collector, and the operator's whole path:
watch, cache lookup, admission under the GPU budget, Job creation, the Job's outcome read
from the pod's termination message, status, TTL deletion.

What is skipped, and how it shows: no container runs and nothing is transcribed, so no
result is written to Redis. The operator trusts the termination message when the Job is
Complete (as it does for a real runner), so such a request ends ``Succeeded`` with the
simulated outcome (language ``en``, ``textPreview`` saying it was simulated) and no
``resultKey``; ``kubescribe result`` answers that it has no result. A test of what is in
Redis, or of a failing runner, needs the stand-in kubelet or the real node instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from kubescribe.outcomes import RunnerOutcome

from harness.envtest import find_tool, free_port
from harness.envtest.cluster import ClusterStartError, KubeCluster, local_healthz_ok
from harness.process import ManagedProcess, http_ok

#: The annotation kwok manages nodes by (``--manage-nodes-with-annotation-selector``).
NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
RUNNER_LABEL = "app.kubernetes.io/component"

#: Flags for a KubeCluster that carries thousands of pods: the controllers' default
#: client rate (20 QPS) would take minutes to create 10,000 pods, which is not what a
#: production control plane does. kwok's own scale setup lifts the limits the same way.
CONTROLLER_MANAGER_SCALE_ARGS = ("--kube-api-qps=2000", "--kube-api-burst=4000", "--concurrent-job-syncs=50",
                                 "--concurrent-ttl-after-finished-syncs=20", "--concurrent-gc-syncs=50")
APISERVER_SCALE_ARGS = ("--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000")


def simulated_outcome(run_seconds: float, by: str = "kwok") -> RunnerOutcome:
    """The outcome every simulated runner leaves (kwok's pods, harness.simulated_pool's
    consumers): success, with the simulation said."""
    return RunnerOutcome(ok=True, language="en", language_probability=1.0, audio_duration_seconds=10.0,
                         processing_seconds=run_seconds, realtime_factor=run_seconds / 10.0,
                         text_preview=f"(simulated by {by}: nothing was transcribed)", exit_code=0)


def _stages(run_seconds: float) -> list[dict[str, Any]]:
    message = simulated_outcome(run_seconds).to_json()
    not_deleted = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    node_init = """
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  operatingSystem: linux
phase: Running
"""
    pod_ready = """
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""
    pod_complete = """
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
  reason: PodCompleted
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: ContainersReady
  reason: PodCompleted
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      message: MESSAGE
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
""".replace("MESSAGE", yaml.safe_dump(message, default_style="'").strip())
    return [
        {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "kubescribe-node-initialize"},
         "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Node"},
                  "selector": {"matchExpressions": [
                      {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                       "operator": "NotIn", "values": ["True"]}]},
                  "next": {"statusTemplate": node_init}}},
        {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "kubescribe-pod-ready"},
         "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                  "selector": {"matchExpressions": [
                      not_deleted, {"key": ".status.phase", "operator": "In", "values": ["Pending"]}]},
                  "next": {"statusTemplate": pod_ready}}},
        {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "kubescribe-runner-complete"},
         "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                  "selector": {"matchExpressions": [
                      not_deleted, {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                      {"key": f'.metadata.labels["{RUNNER_LABEL}"]', "operator": "In", "values": ["runner"]}]},
                  "delay": {"durationMilliseconds": int(run_seconds * 1000)},
                  "next": {"statusTemplate": pod_complete}}},
        {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "kubescribe-pod-delete"},
         "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                  "selector": {"matchExpressions": [
                      {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                      {"key": ".metadata.finalizers", "operator": "DoesNotExist"}]},
                  "next": {"delete": True}}},
    ]


class KwokNodes:
    """``nodes`` simulated GPU nodes on ``cluster``, with kube-scheduler to bind pods.

    Args:
        cluster: a started KubeCluster (for thousands of pods, start it with
            ``CONTROLLER_MANAGER_SCALE_ARGS`` and ``APISERVER_SCALE_ARGS``).
        nodes: how many nodes to create.
        gpus_per_node: ``nvidia.com/gpu`` each node advertises.
        run_seconds: how long a runner pod runs before it completes.
        workdir: where the stage config and logs go (a fresh temporary directory,
            removed by ``stop()``, when not given).

    ``start()`` returns once every node is Ready with its GPUs allocatable.
    """

    def __init__(self, cluster: KubeCluster, *, nodes: int, gpus_per_node: int = 4, run_seconds: float = 1.0,
                 workdir: Optional[os.PathLike[str] | str] = None, startup_timeout: float = 180.0):
        self.cluster = cluster
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.run_seconds = run_seconds
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-kwok-"))
        self.logs_dir = self.workdir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler: Optional[ManagedProcess] = None
        self.kwok: Optional[ManagedProcess] = None

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_names(self) -> list[str]:
        return [f"kwok-gpu-{i:04d}" for i in range(self.nodes)]

    def __enter__(self) -> "KwokNodes":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "KwokNodes":
        kwok_bin, scheduler_bin = find_tool("kwok"), find_tool("kube-scheduler")
        try:
            self._start_scheduler(scheduler_bin)
            self._start_kwok(kwok_bin)
            self._create_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in (self.kwok, self.scheduler):
            if proc is not None:
                proc.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_path(self, component: str) -> Path:
        """``kwok`` or ``kube-scheduler``."""
        return self.logs_dir / f"{component}.log"

    def _await(self, what: str, probe: Any, proc: ManagedProcess) -> None:
        proc.wait_ready(probe, timeout=self.startup_timeout, interval=0.2, description=what)

    def _start_scheduler(self, binary: str) -> None:
        kc, port = self.cluster.kubeconfig_path, free_port()
        self.scheduler = ManagedProcess("kube-scheduler", [
            binary, f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}", "--v=1",
            # Bind at the rate the pods arrive; the default 50 QPS would pace the burst.
            "--kube-api-qps=2000", "--kube-api-burst=4000",
        ], self.log_path("kube-scheduler"), error=ClusterStartError)
        self.scheduler.start()
        self._await("kube-scheduler /healthz", lambda: local_healthz_ok(port), self.scheduler)

    def _start_kwok(self, binary: str) -> None:
        config = self.workdir / "kwok.yaml"
        docs = [{"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
                 "options": {"podPlayStageParallelism": 16, "nodePlayStageParallelism": 4}},
                *_stages(self.run_seconds)]
        config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        port = free_port()
        self.kwok = ManagedProcess("kwok", [
            binary, f"--config={config}", f"--kubeconfig={self.cluster.kubeconfig_path}",
            f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{port}",
            # Pod and node addresses are strings in a status here: nothing dials them.
            "--cidr=10.128.0.0/12", "--node-ip=10.127.0.1",
        ], self.log_path("kwok"), env=dict(os.environ, HOME=str(self.workdir)), error=ClusterStartError)
        self.kwok.start()
        self._await("kwok /healthz", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), self.kwok)

    def _create_nodes(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self.cluster.api_client()
        try:
            core = client.CoreV1Api(api)
            resources = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(self.gpus_per_node)}
            for name in self.node_names():
                node = {"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "annotations": {NODE_ANNOTATION: "fake"},
                                     "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                                                "nvidia.com/gpu.present": "true"}},
                        "status": {"allocatable": resources, "capacity": resources}}
                try:
                    core.create_node(node)
                except ApiException as exc:
                    if exc.status != 409:
                        raise

            def all_ready() -> bool:
                ready = 0
                for n in core.list_node(label_selector="type=kwok").items:
                    conds = {c.type: c.status for c in n.status.conditions or []}
                    if conds.get("Ready") == "True" and (n.status.allocatable or {}).get(GPU_RESOURCE):
                        ready += 1
                return ready >= self.nodes

            assert self.kwok is not None
            self.kwok.wait_ready(all_ready, timeout=self.startup_timeout, interval=0.5, ignore=(),
                                 description=f"{self.nodes} kwok nodes Ready with {GPU_RESOURCE}")
            # The API server taints a new node not-ready; the node lifecycle controller lifts
            # the taint once the node reports Ready. That controller is not run here (it
            # would want a heartbeat lease per node every 10 s: load a scale test is not
            # about), so lift it as it would.
            for name in self.node_names():
                core.patch_node(name, {"spec": {"taints": None}})
        finally:
            api.close()
