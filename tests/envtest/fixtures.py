"""pytest fixtures for the real test environment (loaded by ``tests/conftest.py``).

- ``kube_cluster`` (session): etcd + kube-apiserver + kube-controller-manager;
  ``kube_cluster_options`` (session) gives its ``KubeCluster`` keyword arguments.
- ``kube_api`` (session): an admin ``kubernetes.client.ApiClient`` for that cluster.
- ``kube_namespace`` (function): a fresh namespace, deleted afterwards.
- ``fake_kubelet`` (session): runs Job pods as local processes on a fake Node.
- ``helm`` (session): the helm binary against the cluster, isolated homes.
- ``prometheus_factory`` (function): ``factory(targets, **kwargs) -> PrometheusServer``.
- ``real_node`` (session): a second control plane with a real kubelet on containerd,
  kube-proxy and CoreDNS, and the images built from our Dockerfiles imported.
- ``kueue_manager`` (module): Kueue's manager on ``kube_cluster``, with its CRDs and
  webhooks; module-scoped so its Job webhook is registered only while a module uses it.
- ``s3_server`` (session): versitygw, a real S3 server over a temporary directory.
- ``s3_bucket`` (function): a fresh bucket on it, yielded as its name; emptied and
  deleted afterwards.

Missing binaries fail the test with the command that builds them; nothing here skips.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from . import free_port, wait_for
from .cluster import KubeCluster
from .helm import Helm
from .kubelet import FakeKubelet
from .kueue import KueueManager
from .prometheus import PrometheusServer
from .realnode import RealNode, image_manifest
from .s3 import S3Server, bucket_name

__all__ = [
    "fake_kubelet",
    "free_port",
    "helm",
    "kube_api",
    "kube_cluster",
    "kube_cluster_options",
    "kube_namespace",
    "kueue_manager",
    "prometheus_factory",
    "real_node",
    "s3_bucket",
    "s3_server",
]


@pytest.fixture(scope="session")
def kube_cluster_options() -> dict[str, Any]:
    """Keyword arguments for the session's ``KubeCluster``; override in a conftest.

    For example ``{"crds": [REPO_ROOT / "crds"]}`` to install CRDs before the
    controller manager starts, so its garbage collector knows them from the start.
    """
    return {}


@pytest.fixture(scope="session")
def kube_cluster(kube_cluster_options: dict[str, Any]) -> Iterator[KubeCluster]:
    """One real control plane for the whole session (a few seconds to start warm)."""
    cluster = KubeCluster(**kube_cluster_options)
    t0 = time.monotonic()
    cluster.start()
    cluster.startup_seconds.setdefault("fixture", time.monotonic() - t0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_api(kube_cluster: KubeCluster) -> Iterator[Any]:
    """Admin ``ApiClient``; build ``CoreV1Api(kube_api)`` etc. from it."""
    api = kube_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test, ready for pods (its ServiceAccount exists).

    Deleted afterwards without waiting: the namespace controller empties it in the
    background, and the fake kubelet stops any process still running in it.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_api)
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-") or "test"
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubescribe.io/test": "true"}}})
    # Pods are rejected by the ServiceAccount admission plugin until the controller
    # has created "default" in the new namespace.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        interval=0.05,
        description=f"ServiceAccount {name}/default",
        ignore=(ApiException,),
    )
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture(scope="session")
def fake_kubelet(kube_cluster: KubeCluster) -> Iterator[FakeKubelet]:
    """The session's stand-in kubelet, on node ``kubescribe-fake-node``.

    Substitute a command for one test with ``with fake_kubelet.override_command(fn):``
    (``fn(pod_dict) -> argv | None``) so the change cannot leak into other tests.
    """
    kubelet = FakeKubelet(kube_cluster)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture(scope="session")
def helm(kube_cluster: KubeCluster) -> Iterator[Helm]:
    """``Helm`` bound to the session cluster's admin kubeconfig."""
    h = Helm(kube_cluster)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., PrometheusServer]]:
    """``factory(targets, *, rule_files=(), **kwargs)`` starts a ``PrometheusServer``.

    Every server started through it is stopped when the test ends.
    """
    servers: list[PrometheusServer] = []

    def factory(targets: Any = (), **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(targets, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture(scope="module")
def kueue_manager(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueManager]:
    """Kueue managing ``batch/job`` for the tests of one module (a few seconds to start).

    Admission fair sharing is configured (usage half-life 1 h: within a test, a
    LocalQueue's usage only grows with what it was admitted); it applies to the
    ClusterQueues that ask for it with ``admissionScope``.
    """
    manager = KueueManager(kube_cluster, workdir=tmp_path_factory.mktemp("kueue"), config={
        "admissionFairSharing": {"usageHalfLifeTime": "1h", "usageSamplingInterval": "5m"}})
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    """One real node for the session (~15 s to start with the images built).

    It needs root, containerd, runc, the CNI plugins and the images from
    ``hack/build-images.sh``; a machine without them fails here with what is missing.
    """
    from . import REPO_ROOT

    # The base image is only a build input; pods use the others.
    images = {name: entry for name, entry in image_manifest().items() if name != "base"}
    node = RealNode(images, crds=[REPO_ROOT / "crds"])
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One versitygw for the session (well under a second to start).

    Tests share it through ``s3_bucket``; a test that stops the server to play an
    outage starts an ``S3Server`` of its own, so a failure halfway cannot leave the
    shared one down.
    """
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bucket of its own for one test, named after it; emptied and deleted afterwards.

    The cleanup is best-effort: a test that left the server unreachable must not turn
    into a second failure in teardown.
    """
    name = s3_server.create_bucket(bucket_name(request.node.name))
    try:
        yield name
    finally:
        try:
            s3_server.delete_bucket(name)
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


def pytest_report_header(config: pytest.Config) -> str:
    tools = os.environ.get("KUBESCRIBE_TOOLS_PATH")
    return f"kubescribe envtest tools: {tools or 'hack/build-test-binaries.sh --print-path'}"
