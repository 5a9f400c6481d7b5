"""Kueue admits the runner Jobs: real Kueue, real control plane, real faster-whisper.

The operator runs with ``KUBESCRIBE_ADMISSION_ENGINE=kueue`` against the session's
control plane, with Kueue's manager running beside it (``kueue_manager``,
``harness/envtest/kueue.py``; its Configuration enables admission fair sharing) and
the stand-in kubelet running the pods of Jobs that Kueue unsuspended (a suspended Job has
no pods: the Job controller makes none).

Two namespaces share one ClusterQueue with 2 ``nvidia.com/gpu``. Fair sharing here is
Kueue's *admission fair sharing* (KEP 4136, beta and on by default since Kueue 0.15):
with ``admissionScope: UsageBasedAdmissionFairSharing`` on the ClusterQueue, pending
workloads are ordered by their LocalQueue's consumed resources (decayed usage plus an
entry penalty added at every admission) before priority and age. So once both
namespaces wait, a freed GPU goes to the namespace that has used less, even though the
other's requests are older; plain FIFO would give it to the oldest request. The test
makes that observable by holding each runner at a gate until the test opens it: team A
fills both GPUs and queues a third request, team B queues two later, and as A's runners
finish one by one both freed GPUs go to B (B has had 2 GPUs, A has had 2) before A's
older third request runs.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from kubescribe.store import Store
from harness.envtest import wait_for
from harness.envtest.kueue import GROUP, VERSION
from harness.operator import OperatorProcess, Requests

pytestmark = pytest.mark.kube

#: Waits for a file named after the request, then becomes the pod's own command: the
#: runner is the real one, it only starts when the test says so.
GATE = ("import os, sys, time\n"
        "gate = sys.argv[1]\n"
        "while not os.path.exists(gate):\n"
        "    time.sleep(0.05)\n"
        "os.execvp(sys.argv[2], sys.argv[2:])\n")


@pytest.fixture
def second_namespace(kube_api, kube_namespace):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"{kube_namespace[:50]}-b"
    core.create_namespace({"metadata": {"name": name, "labels": {"kubescribe.io/test": "true"}}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30,
             description=f"ServiceAccount {name}/default", ignore=(client.exceptions.ApiException,))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def gpu_queues(kueue_manager, kube_namespace, second_namespace):
    """One ClusterQueue of 2 GPUs; LocalQueue ``default`` in A, ``team-b`` in B."""
    suffix = uuid.uuid4().hex[:6]
    cq = f"transcription-{suffix}"
    flavor = f"gpu-{suffix}"
    objs = [
        {"kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {"kind": "ClusterQueue", "metadata": {"name": cq}, "spec": {
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                        "values": [kube_namespace, second_namespace]}]},
            "queueingStrategy": "BestEffortFIFO",
            "admissionScope": {"admissionMode": "UsageBasedAdmissionFairSharing"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [{
                "name": flavor, "resources": [{"name": "cpu", "nominalQuota": "16"},
                                              {"name": "memory", "nominalQuota": "64Gi"},
                                              {"name": "nvidia.com/gpu", "nominalQuota": 2}]}]}]}},
        {"kind": "LocalQueue", "metadata": {"name": "default", "namespace": kube_namespace},
         "spec": {"clusterQueue": cq}},
        {"kind": "LocalQueue", "metadata": {"name": "team-b", "namespace": second_namespace},
         "spec": {"clusterQueue": cq}},
    ]
    for obj in objs:
        kueue_manager.apply({"apiVersion": f"{GROUP}/{VERSION}", **obj})

    def active():
        got = kueue_manager.custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", cq)
        return any(c["type"] == "Active" and c["status"] == "True" for c in got.get("status", {}).get("conditions", []))

    wait_for(active, timeout=60, description=f"ClusterQueue {cq} active")
    yield cq
    for obj in reversed(objs):
        kind = obj["kind"].lower()
        ns = obj["metadata"].get("namespace")
        args = ["delete", f"{kind}s.{GROUP}", obj["metadata"]["name"], "--ignore-not-found", "--wait=false"]
        kueue_manager.cluster.kubectl(*args, *(["-n", ns] if ns else []))


def test_kueue_admits_each_namespace_its_fair_share_and_nothing_starts_before_admission(
        kube_cluster, kube_api, kube_namespace, second_namespace, gpu_queues, kueue_manager,
        redis_server, speech_dir, fake_kubelet, crd_installed, tmp_path):
    from kubernetes import client

    a, b = Requests(kube_api, kube_namespace), Requests(kube_api, second_namespace)
    audio = Store(redis_server.client()).put_audio((speech_dir / "fox.wav").read_bytes())
    gates = tmp_path / "gates"
    gates.mkdir()

    def gated(pod):
        request = pod["metadata"]["labels"]["kubescribe.io/request"]
        command = pod["spec"]["containers"][0]["command"]
        return [sys.executable, "-c", GATE, str(gates / f"{pod['metadata']['namespace']}.{request}"), *command]

    def open_gate(api, name):
        (gates / f"{api.namespace}.{name}").touch()

    # Distinct beam sizes: five different transcriptions, none answered from another's
    # result; the cache is off so every request needs a runner.
    def submit(api, name, beam, **extra):
        api.create(name, {"audio": {"redisKey": audio}, "gpus": 1, "beamSize": beam,
                          "cache": {"enabled": False}, **extra})

    def pods(api, name):
        job = api.status(name).get("jobName")
        return api.core.list_namespaced_pod(api.namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items

    def waiting_in_kueue(api, name):
        """Queued on a suspended Job with no pod, and Kueue's reason in the status."""
        s = api.status(name)
        if s.get("phase") != "Queued" or s.get("reason") != "WaitingForKueue" or "insufficient" not in s.get("message", ""):
            return None
        job = api.batch.read_namespaced_job(s["jobName"], api.namespace)
        assert job.spec.suspend is True and not pods(api, name), f"{name} has a pod before Kueue admitted it"
        return s

    def explain(api, name):
        s = api.status(name)
        runs = [r for r in fake_kubelet.runs(api.namespace) if r.name.startswith(s.get("jobName", "?"))]
        logs = "\n".join(f"--- {r.name} {r.command[3:]}\n{fake_kubelet.logs(r.name, api.namespace)[-2000:]}"
                         for r in runs)
        return f"{name}: {s.get('phase')} {s.get('reason')}: {s.get('message')}\n{logs}"

    def finished(api, name, timeout=240):
        try:
            s = api.wait_phase(name, "Succeeded", "Failed", timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{explain(api, name)}") from None
        assert s["phase"] == "Succeeded", explain(api, name)
        return s

    def running(api, name):
        return api.status(name).get("phase") in ("Running", "Succeeded")

    op = OperatorProcess(str(kube_cluster.kubeconfig_path), "", redis_server.url, tmp_path,
                         admission_engine="kueue", normal_events="true")  # the Events checked below
    with fake_kubelet.override_command(gated):
        op.start()
        try:
            for i, name in enumerate(("a1", "a2", "a3"), start=1):
                submit(a, name, i)
            # Kueue fills the 2 GPUs with A's first two; the third waits, saying why.
            for name in ("a1", "a2"):
                a.wait(name, lambda s: s.get("phase") == "Running" and s.get("reason") == "AdmittedByKueue",
                       timeout=120, description=f"{name} admitted by Kueue")
            s = wait_for(lambda: waiting_in_kueue(a, "a3"), timeout=60, description="a3 waiting in Kueue")
            assert "nvidia.com/gpu" in s["message"], s["message"]
            conds = {c["type"]: c for c in s["conditions"]}
            assert conds["Admitted"]["status"] == "False" and conds["Admitted"]["message"] == s["message"]
            assert "queuePosition" not in s or s["queuePosition"] is None  # Kueue orders, not kubescribe

            # Team B comes later, into its named LocalQueue.
            submit(b, "b1", 4, queueName="team-b")
            submit(b, "b2", 5, queueName="team-b")
            for name in ("b1", "b2"):
                wait_for(lambda n=name: waiting_in_kueue(b, n), timeout=60, description=f"{name} waiting in Kueue")
            job_b1 = b.batch.read_namespaced_job(b.status("b1")["jobName"], b.namespace)
            assert job_b1.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-b"
            job_a3 = a.batch.read_namespaced_job(a.status("a3")["jobName"], a.namespace)
            assert job_a3.metadata.labels["kueue.x-k8s.io/queue-name"] == "default"

            # A's first runner finishes: the GPU goes to team B, whose usage is lower, not
            # to A's older a3. (Which of B's two goes first is Kueue's order inside B's
            # LocalQueue: their Workloads were made within the same second.)
            def admitted_next(candidates):
                wait_for(lambda: [n for api, n in candidates if running(api, n)], timeout=120,
                         description="the freed GPU admitted")
                return [n for api, n in candidates if running(api, n)]

            open_gate(a, "a1")
            finished(a, "a1")
            first = admitted_next([(b, "b1"), (b, "b2"), (a, "a3")])
            assert len(first) == 1 and first[0] in ("b1", "b2"), (first, explain(a, "a3"))
            other = "b2" if first == ["b1"] else "b1"
            assert waiting_in_kueue(b, other) and waiting_in_kueue(a, "a3")

            # A's second finishes: B has had 1 GPU against A's 2, so B again.
            open_gate(a, "a2")
            finished(a, "a2")
            assert admitted_next([(b, other), (a, "a3")]) == [other], explain(a, "a3")
            assert waiting_in_kueue(a, "a3")

            # Then A's third, once a GPU is free again; everything finishes.
            for api, name in ((b, "b1"), (b, "b2"), (a, "a3")):
                open_gate(api, name)
            for api, name in ((a, "a3"), (b, "b1"), (b, "b2")):
                s = finished(api, name)
                assert s["phase"] == "Succeeded" and s["language"] == "en", s
        finally:
            op.stop()

    # Nothing started before Kueue admitted it: Kueue admitted each Workload into the
    # ClusterQueue, and every runner pod and every Running came after that admission
    # (Kueue sets the Workload's Admitted condition, then unsuspends the Job; the operator
    # never unsuspends a Job). The Job's own startTime is no bound: the Job controller
    # creates the pods of a resumed Job first and stamps startTime after, so a pod can be
    # a second older than it.
    custom = client.CustomObjectsApi(kube_api)
    for api, names in ((a, ("a1", "a2", "a3")), (b, ("b1", "b2"))):
        workloads = custom.list_namespaced_custom_object(GROUP, VERSION, api.namespace, "workloads")["items"]
        for name in names:
            s = api.status(name)
            job = api.batch.read_namespaced_job(s["jobName"], api.namespace)
            wl = next(w for w in workloads if w["metadata"]["labels"].get("kueue.x-k8s.io/job-uid") == job.metadata.uid)
            conds = {c["type"]: c for c in wl["status"]["conditions"]}
            assert conds.get("Finished", {}).get("status") == "True", (name, conds)
            assert conds.get("Admitted", {}).get("status") == "True", (name, conds)
            assert wl["status"]["admission"]["clusterQueue"] == gpu_queues
            admitted = conds["Admitted"]["lastTransitionTime"]
            assert job.status.start_time is not None, name  # the Job was unsuspended
            for pod in pods(api, name):
                created = pod.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
                assert created >= admitted, (name, created, admitted)
            assert s["startedAt"] >= admitted, (name, s["startedAt"], admitted)
            api.wait_reasons(name, "SubmittedToKueue", "AdmittedByKueue", "Succeeded")
