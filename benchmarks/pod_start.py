"""realnode_pod_start: a runner Job's pod from Job creation to Running on the real node
(kubelet, containerd, runc, CNI bridge: ``harness/envtest/realnode.py``), with the image
present, against the same Job with Kubernetes' pause image in its place, in one run.

The Job is the operator's own (``build_job``) in a namespace that enforces the restricted
Pod Security Standard; its container sleeps instead of running a task, since only the
start is measured. Trials alternate runner and pause, one Job at a time, so each start has
the node to itself.
"""

from __future__ import annotations

import statistics
import time
import uuid

from .common import Context, Outcome, log, secs

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def _job(name: str, namespace: str, image: str, command: list[str] | None) -> dict:
    from kubescribe.models import parse_spec
    from kubescribe.operator.jobs import build_job
    from kubescribe.settings import OperatorSettings

    body = {"metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1}}
    spec = parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "0" * 64}, "model": "tiny.en", "device": "cpu"})
    job = build_job(body, spec, OperatorSettings(runner_image=image, redis_url="redis://127.0.0.1:1/0"))
    job["metadata"].pop("ownerReferences")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["imagePullPolicy"] = "Never"  # present on the node: what is measured is the start
    container["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    pod["terminationGracePeriodSeconds"] = 0  # the sleeping python is PID 1 and ignores SIGTERM
    if command is None:
        container.pop("command", None)  # the image's own entry point (pause)
    else:
        container["command"] = command
    return job


def _start_once(node, namespace: str, job: dict) -> dict[str, float]:
    """Create ``job`` and watch its pod to Running: seconds from the create call to the
    pod's first sight, to its scheduling and to Running (client clock)."""
    from kubernetes import client, watch

    api = node.api_client()
    try:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        name = job["metadata"]["name"]
        rv = core.list_namespaced_pod(namespace, limit=1).metadata.resource_version
        t0 = time.perf_counter()
        batch.create_namespaced_job(namespace, job)
        seen: dict[str, float] = {}
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, namespace, label_selector=f"job-name={name}",
                           resource_version=rv, timeout_seconds=120):
            pod, now = ev["object"], time.perf_counter() - t0
            seen.setdefault("pod", now)
            if pod.spec.node_name:
                seen.setdefault("scheduled", now)
            if pod.status.phase == "Running":
                seen["running"] = now
                w.stop()
            elif pod.status.phase in ("Failed", "Succeeded"):
                w.stop()
                raise RuntimeError(f"{name}'s pod ended {pod.status.phase} before it was seen Running")
        if "running" not in seen:
            raise RuntimeError(f"{name}'s pod was not Running within 120 s")
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background", grace_period_seconds=0)
        from harness.envtest import wait_for

        wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items,
                 timeout=120, interval=0.1, description=f"{name}'s pod gone")  # the next start has the node alone
        return seen
    finally:
        api.close()


def realnode_pod_start(ctx: Context) -> Outcome:
    from kubernetes import client

    from harness.envtest import REPO_ROOT, wait_for
    from harness.envtest.realnode import RealNode, image_manifest

    trials = 5 if ctx.quick else 20
    out = Outcome("realnode_pod_start", "A runner Job's pod from creation to Running on the real node")
    images = {name: entry for name, entry in image_manifest().items() if name != "base"}
    node = RealNode(images, crds=[REPO_ROOT / "crds"])
    node.start()
    try:
        ns = "podstart"
        api = node.api_client()
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": ns, "labels": RESTRICTED}})
        wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=60, interval=0.1,
                 description=f"{ns}/default ServiceAccount", ignore=(client.exceptions.ApiException,))
        api.close()
        kinds = {"runner": (node.images["runner"], ["python", "-c", "import time; time.sleep(60)"]),
                 "pause": (node.images["pause"], None)}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for kind, (image, command) in kinds.items():  # a first start of each, not measured
            _start_once(node, ns, _job(f"warm-{kind}", ns, image, command))
        for i in range(trials):
            for kind, (image, command) in (kinds.items() if i % 2 == 0 else reversed(list(kinds.items()))):
                runs[kind].append(_start_once(node, ns, _job(f"{kind}-{i:02d}", ns, image, command)))
        log(f"realnode_pod_start: {trials} starts of each")
    finally:
        node.stop()

    def pct(kind: str, key: str, q: float) -> float:
        values = sorted(r[key] for r in runs[kind])
        return values[min(len(values) - 1, int(q * len(values)))]

    p50 = {k: statistics.median(r["running"] for r in runs[k]) for k in runs}
    ok = p50["runner"] <= 2.0
    out.measured = (
        f"The real node (kubelet, containerd + runc, CNI bridge) with the images imported. {trials} Jobs of each kind, "
        "one at a time, alternating: the operator's own runner Job (`build_job`: restricted security context, "
        "runner image, its env and volumes; the container sleeps instead of running a task), and the same Job with "
        "Kubernetes' pause image. Times from the create call to a watch's first sight of the pod, to it bound to "
        "the node, and to it Running (client clock). A first start of each kind before the measured ones."
    )
    out.headline = f"runner pod Running p50 {secs(p50['runner'])}, p90 {secs(pct('runner', 'running', 0.9))}"
    out.baseline = f"pause pod p50 {secs(p50['pause'])}, p90 {secs(pct('pause', 'running', 0.9))}"
    out.ratio = f"{p50['runner'] / p50['pause']:.2f}x the pause image's start"
    out.target = "runner pod create -> Running p50 <= 2 s with the image present (upstream SLO: p99 <= 5 s)"
    out.status = "PASS" if ok else "MISS"
    out.table("Seconds from the Job's creation (p50 / p90)", ["image", "pod created", "pod bound", "pod Running"],
              [[k, *(f"{pct(k, key, 0.5):.2f} / {pct(k, key, 0.9):.2f}" for key in ("pod", "scheduled", "running"))]
               for k in runs])
    out.data = {"runs": runs, "p50": p50}
    return out
