"""The chart's NetworkPolicies, enforced, on the real node.

The node's bridge CNI enforces nothing by itself; here kube-router's firewall (as k3s
embeds it) enforces the policies the chart installs, on the same pod traffic. The release runs
the operator, the gateway and the in-chart Redis from the images of ``hack/build-images.sh``
with ``networkPolicy.enabled`` and one namespace allowed to call the gateway. Client pods
from the operator image (it has Python) try TCP connections from three places: the allowed
namespace, a namespace nobody listed, and the release's own namespace without the
release's labels. Only the allowed namespace reaches the gateway, nobody outside the
release reaches Redis, Redis reaches no one, and the gateway's own readiness check (a
Redis PING and the API server's /readyz, made from the gateway pod when asked) still
passes through its egress policy.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from harness.envtest import REPO_ROOT, wait_for
from harness.envtest.helm import Helm
from harness.envtest.realnode import NODE_IP, RealNode
from tests.test_realnode import RESTRICTED, SMALL, kubectl_json, split_ref

pytestmark = [pytest.mark.kube, pytest.mark.realnode]

CHART = REPO_ROOT / "charts" / "kubescribe"
RELEASE = "np"
SYSTEM_NS = "netpol-system"
ALLOWED_NS = "netpol-callers"
OUTSIDE_NS = "netpol-outside"

#: How a connection the policies forbid ends: refused (kube-router REJECTs) or dropped.
BLOCKED = {"ConnectionRefusedError", "TimeoutError"}

#: Run in a client pod: one TCP connection attempt per target, each bounded, as JSON.
PROBE = """
import json, socket, sys, urllib.request
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out[target] = "open"
    except OSError as exc:
        out[target] = type(exc).__name__
print(json.dumps(out))
"""

#: Run in a client pod: the gateway's /readyz, answered live from the gateway pod.
READYZ = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
except urllib.error.HTTPError as exc:
    print(exc.read().decode())
"""


def create_namespace(node: RealNode, name: str) -> None:
    node.kubectl("create", "namespace", name, check=True)
    node.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()), "--overwrite",
                 check=True)
    wait_for(lambda: node.kubectl("get", "serviceaccount", "default", "-n", name).returncode == 0,
             timeout=60, description=f"ServiceAccount {name}/default")


def client_pod(node: RealNode, namespace: str, name: str) -> str:
    """A long-running pod from the operator image, restricted profile; its name once Running."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                           "labels": {"role": "netpol-client"}},
           "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": node.images["operator"],
                                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    node.kubectl("apply", "-f", "-", input=json.dumps(pod), check=True)
    wait_for(lambda: kubectl_json(node, "get", "pod", name, "-n", namespace)["status"].get("phase") == "Running",
             timeout=180, interval=0.3, description=f"client pod {namespace}/{name} Running")
    return name


def probe(node: RealNode, namespace: str, pod: str, *targets: str) -> dict[str, str]:
    proc = node.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", PROBE, *targets, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ready_pod(node: RealNode, component: str) -> dict:
    def ready() -> dict | None:
        for p in kubectl_json(node, "get", "pods", "-n", SYSTEM_NS, "-l",
                              f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}")["items"]:
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
            if conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp"):
                return p
        return None

    return wait_for(ready, timeout=240, interval=0.5, description=f"{component} pod Ready")


@pytest.fixture(scope="module")
def fenced(real_node: RealNode, tmp_path_factory) -> Any:
    real_node.start_network_policies()
    for ns in (SYSTEM_NS, ALLOWED_NS, OUTSIDE_NS):
        create_namespace(real_node, ns)
    images = real_node.images
    op_repo, op_tag = split_ref(images["operator"])
    run_repo, run_tag = split_ref(images["runner"])
    redis_repo, redis_tag = split_ref(images["redis"])
    api_port = int(real_node.cluster.server_url.rsplit(":", 1)[1])  # type: ignore[union-attr]
    values = {
        "operator": {"image": {"repository": op_repo, "tag": op_tag}, "resources": SMALL},
        "runner": {"image": {"repository": run_repo, "tag": run_tag}, "resources": SMALL},
        "redis": {"internal": {"enabled": True, "image": {"repository": redis_repo, "tag": redis_tag},
                               "resources": SMALL, "maxmemory": "64mb"}},
        "gateway": {"enabled": True, "replicas": 1, "resources": SMALL},
        # As the README says: the API server's own address and port, as the policy sees them
        # after the kubernetes Service's address is translated.
        # CoreDNS answers on the node itself here, not from a pod: networkPolicy.dnsCidrs.
        "networkPolicy": {"enabled": True, "gatewayFromNamespaces": [ALLOWED_NS],
                          "apiServerCidrs": [f"{NODE_IP}/32"], "apiServerPorts": [api_port],
                          "dnsCidrs": [f"{NODE_IP}/32"]},
    }
    helm = Helm(real_node.cluster, workdir=tmp_path_factory.mktemp("helm-netpol"))
    try:
        helm.run("install", RELEASE, str(CHART), "-n", SYSTEM_NS, "-f", helm.values_file(values),
                 "--wait", "--timeout=5m")
        yield real_node
    finally:
        helm.run("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=2m", check=False)
        helm.close()
        for ns in (SYSTEM_NS, ALLOWED_NS, OUTSIDE_NS):
            real_node.kubectl("delete", "namespace", ns, "--wait=false")
        real_node.stop_network_policies()


def test_only_allowed_pods_reach_the_gateway_and_only_the_release_reaches_redis(fenced: RealNode):
    node = fenced
    assert {p["metadata"]["name"] for p in kubectl_json(node, "get", "networkpolicies", "-n", SYSTEM_NS)["items"]} \
        >= {f"{RELEASE}-kubescribe-gateway", f"{RELEASE}-kubescribe-redis"}
    gateway = ready_pod(node, "gateway")
    redis = ready_pod(node, "redis")
    svc = kubectl_json(node, "get", "service", f"{RELEASE}-kubescribe-gateway", "-n", SYSTEM_NS)
    redis_svc = kubectl_json(node, "get", "service", f"{RELEASE}-kubescribe-redis", "-n", SYSTEM_NS)
    gw_pod, gw_svc = f"{gateway['status']['podIP']}:8000", f"{svc['spec']['clusterIP']}:80"
    redis_pod, redis_svc_addr = f"{redis['status']['podIP']}:6379", f"{redis_svc['spec']['clusterIP']}:6379"
    suffix = uuid.uuid4().hex[:5]
    allowed = client_pod(node, ALLOWED_NS, f"allowed-{suffix}")
    outside = client_pod(node, OUTSIDE_NS, f"outside-{suffix}")
    # In the release's namespace, but not one of the release's pods.
    neighbour = client_pod(node, SYSTEM_NS, f"neighbour-{suffix}")

    # The allowed namespace reaches the gateway, by pod address and through its Service.
    # Waited for: the enforcer learns a new pod's address from its watch, as in any cluster.
    wait_for(lambda: probe(node, ALLOWED_NS, allowed, gw_pod, gw_svc) == {gw_pod: "open", gw_svc: "open"},
             timeout=60, interval=0.5, description="the allowed namespace reaching the gateway")
    # The gateway answers it and, from its own pod, reaches Redis and the API server now.
    proc = node.kubectl("exec", "-n", ALLOWED_NS, allowed, "--", "python", "-c", READYZ,
                        f"http://{gw_svc}/readyz", timeout=60)
    assert json.loads(proc.stdout) == {"ok": True, "redis": "ok", "apiserver": "ok"}, proc.stdout + proc.stderr

    # Everyone else: not the gateway, not Redis (refused by the policy's REJECT, or dropped).
    targets = (gw_pod, gw_svc, redis_pod, redis_svc_addr)
    for ns, pod in ((OUTSIDE_NS, outside), (SYSTEM_NS, neighbour)):
        seen = probe(node, ns, pod, *targets)
        assert set(seen) == set(targets) and set(seen.values()) <= BLOCKED, (ns, seen)
    # The allowed namespace may call the gateway; Redis is still not its business.
    seen = probe(node, ALLOWED_NS, allowed, redis_pod, redis_svc_addr)
    assert len(seen) == 2 and set(seen.values()) <= BLOCKED, seen

    # Redis opens no connection at all: not even to the gateway, which accepts the allowed pods.
    out = node.kubectl("exec", "-n", SYSTEM_NS, redis["metadata"]["name"], "--", "timeout", "5",
                       "redis-cli", "-h", gateway["status"]["podIP"], "-p", "8000", "ping", timeout=60)
    # Refused, or `timeout` (124) ended a connection that never completed; the port is open.
    assert out.returncode == 124 or "Connection refused" in out.stdout + out.stderr, out.stdout + out.stderr
