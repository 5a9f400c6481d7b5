"""At scale, on simulated GPU nodes (kwok): the operator's API writes per request, counted
from the API server's audit log, and finished requests deleted after their TTL.

The control plane, scheduler, Job controller and garbage collector are real; kwok plays
the kubelets and finishes each runner pod after a second with a runner's termination
message (harness/envtest/kwok.py says what that skips). The operator runs as its own
ServiceAccount, so the audit log tells its writes from everyone else's.
"""

from __future__ import annotations

import collections
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.models import parse_spec
from kubescribe.operator.admitter import POSITION_PERIOD
from kubescribe.cache_layout import known_cache_key
from kubescribe.store import Store
from harness.envtest import wait_for
from harness.envtest.audit import WRITES_AUDIT_POLICY, audit_writes
from harness.envtest.cluster import KubeCluster
from harness.envtest.kwok import APISERVER_SCALE_ARGS, CONTROLLER_MANAGER_SCALE_ARGS, KwokNodes
from harness.operator import OperatorProcess, Requests, operator_identity

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[1]
NODES, GPUS_PER_NODE = 3, 4
DEFAULT_TTL = 3


class ScaleEnv:
    def __init__(self, cluster: KubeCluster, nodes: KwokNodes, operator: OperatorProcess, user: str, store: Store,
                 api: Any):
        self.cluster, self.nodes, self.operator, self.user, self.store, self.api = \
            cluster, nodes, operator, user, store, api

    def namespace(self, prefix: str) -> str:
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(self.api).create_namespace({"metadata": {"name": name}})
        wait_for(lambda: client.CoreV1Api(self.api).read_namespaced_service_account("default", name),
                 timeout=60, interval=0.1, description=f"{name}/default ServiceAccount",
                 ignore=(client.exceptions.ApiException,))
        return name

    def writes(self, namespace: str):
        return audit_writes(self.cluster.audit_events(), user=self.user, namespace=namespace)


@pytest.fixture(scope="module")
def scale_env(redis_server, tmp_path_factory) -> Iterator[ScaleEnv]:
    with KubeCluster(audit_policy=WRITES_AUDIT_POLICY, crds=[ROOT / "crds"],
                     controller_manager_args=CONTROLLER_MANAGER_SCALE_ARGS,
                     apiserver_args=APISERVER_SCALE_ARGS) as cluster:
        with KwokNodes(cluster, nodes=NODES, gpus_per_node=GPUS_PER_NODE, run_seconds=1.0) as nodes:
            api = cluster.api_client()
            kubeconfig, user = operator_identity(cluster)
            op = OperatorProcess(kubeconfig, "", redis_server.url, tmp_path_factory.mktemp("scale-operator"),
                                 gpu_budget=str(nodes.gpus), request_ttl_seconds=str(DEFAULT_TTL),
                                 resync_seconds="1").start()
            try:
                yield ScaleEnv(cluster, nodes, op, user, Store(redis_server.client()), api)
            finally:
                op.stop()
                api.close()


def spec(sha: str, **extra: Any) -> dict[str, Any]:
    return {"audio": {"redisKey": f"kubescribe:audio:{sha}"}, "model": "tiny.en", **extra}


def test_a_burst_stays_within_the_write_budget_per_request(scale_env):
    """20 misses on 12 GPUs (8 of them wait for a slot) and 4 cache hits: 2 writes to a
    missed request admitted at once, 3 to one that waited, at most 2 to a hit one (plus queue positions only for one that
    waited over 5 s), no Event when nothing goes wrong, one Job per miss, none per hit."""
    ns = scale_env.namespace("budget")
    reqs = Requests(scale_env.api, ns)
    misses = [f"miss-{i:02d}" for i in range(20)]
    hits = [f"hit-{i}" for i in range(4)]
    for i, name in enumerate(hits):
        s = spec(f"{i:064x}", ttlSecondsAfterFinished=3600)
        key, _ = known_cache_key(parse_spec(s))
        scale_env.store.put_result(key, {"text": "seeded", "language": "en", "audio_duration_seconds": 1.0,
                                         "segments": []})
    for name in misses:
        reqs.create(name, spec(uuid.uuid4().hex * 2, ttlSecondsAfterFinished=3600))
    for i, name in enumerate(hits):
        reqs.create(name, spec(f"{i:064x}", ttlSecondsAfterFinished=3600))
    statuses = {n: reqs.wait_phase(n, "Succeeded", "Failed", timeout=240) for n in misses + hits}
    assert all(s["phase"] == "Succeeded" for s in statuses.values()), statuses
    assert all(statuses[n]["cached"] is True for n in hits) and not any(statuses[n]["cached"] for n in misses)
    assert any(s["startedAt"] > s["queuedAt"] for s in (statuses[n] for n in misses))  # some did wait

    writes = scale_env.writes(ns)
    position = frozenset({"queuePosition", "reason", "message"})
    to_request = [w for w in writes if w.resource.startswith("transcriptionrequests")]
    per_request = collections.Counter(w.name for w in to_request if w.status_fields != position)
    positions = collections.Counter(w.name for w in to_request if w.status_fields == position)
    jobs = collections.Counter(w.verb for w in writes if w.resource == "jobs")
    events = [w for w in writes if w.resource == "events"]
    # Admitted at once: Queued and Running in one patch, then Succeeded. One that waited
    # has its Queued status written alone first.
    waited = {w.name for w in to_request if ((w.body or {}).get("status") or {}).get("phase") == "Queued"}
    assert {n: per_request[n] for n in misses if per_request[n] != 2 + (n in waited)} == {}
    assert 0 < len(waited & set(misses)) < len(misses), waited  # 12 GPUs for 20: some wait, some not
    assert all(1 <= per_request[n] <= 2 for n in hits), {n: per_request[n] for n in hits}
    assert jobs == {"create": len(misses)} and events == []
    # Queue positions come on top only for a request that waited a whole period (5 s) in
    # the first 20 places, and then at most once per period while it waits.
    for name, count in positions.items():
        s = statuses[name]
        waited = (datetime.fromisoformat(s["startedAt"]) - datetime.fromisoformat(s["queuedAt"])).total_seconds()
        assert waited >= POSITION_PERIOD - 1 and count <= 1 + waited // POSITION_PERIOD, (name, count, waited)
    assert not [w for w in writes if w.verb == "delete"]  # TTL of an hour: nothing deleted yet


def test_finished_requests_are_deleted_after_their_ttl_never_a_queued_or_running_one(scale_env):
    ns = scale_env.namespace("ttl")
    reqs = Requests(scale_env.api, ns)
    custom = reqs.custom
    # 8 GPUs: no node has them, so its pod never schedules and the request stays Running;
    # the next one does not fit what is left of the 12-GPU budget and stays Queued (at a
    # lower priority, so it does not hold the others back: admission is strictly ordered).
    reqs.create("running", spec(uuid.uuid4().hex * 2, gpus=8, device="cuda", ttlSecondsAfterFinished=0))
    reqs.wait_phase("running", "Running", timeout=60)
    reqs.create("queued", spec(uuid.uuid4().hex * 2, gpus=8, device="cuda", ttlSecondsAfterFinished=0,
                                  priority=-10))  # behind the others: plan() is strictly ordered
    reqs.wait_phase("queued", "Queued", timeout=60)
    reqs.create("at-once", spec(uuid.uuid4().hex * 2, ttlSecondsAfterFinished=0))
    reqs.create("by-default", spec(uuid.uuid4().hex * 2))
    reqs.create("kept", spec(uuid.uuid4().hex * 2, ttlSecondsAfterFinished=3600))
    reqs.wait_phase("kept", "Succeeded", timeout=120)

    def gone(name: str) -> bool:
        return name not in [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL)["items"]]

    wait_for(lambda: gone("at-once") and gone("by-default"), timeout=120, interval=0.2,
             description="at-once and by-default deleted after their TTL")
    # The resync that deleted by-default (3 s after it finished) judged every request of
    # the namespace: the others stay.
    assert reqs.status("kept")["phase"] == "Succeeded"
    assert reqs.status("running")["phase"] == "Running"
    assert reqs.status("queued")["phase"] == "Queued"
    deleted = {w.name for w in scale_env.writes(ns) if w.verb == "delete" and w.resource == "transcriptionrequests"}
    assert deleted == {"at-once", "by-default"}
    # The Jobs of the deleted requests go with them (garbage collection).
    wait_for(lambda: {j.metadata.labels.get("kubescribe.io/request") for j in reqs.jobs()} <= {"running", "kept"},
             timeout=120, interval=0.5, description="Jobs of deleted requests garbage-collected")
    assert "kubescribe_requests_expired_total 2.0" in scale_env.operator.metrics_text()
