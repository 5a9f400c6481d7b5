"""Run the real operator as a process against the test cluster, and talk to requests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from harness.envtest import REPO_ROOT, free_port, wait_for
from harness.process import ServiceProcess, settings_env
from kubescribe import API_VERSION, GROUP, KIND, PLURAL, VERSION

CRD = REPO_ROOT / "crds" / "kubescribe.io_transcriptionrequests.yaml"


class OperatorProcess(ServiceProcess):
    """``kubescribe-operator`` as a child process, namespace-scoped, logs in a file."""

    module = "kubescribe.operator.main"
    health_path = "/healthz"

    def __init__(self, kubeconfig: str, namespace: str, redis_url: str, workdir: Path, **settings: Any):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        port = free_port()
        env = dict(os.environ, KUBECONFIG=kubeconfig, KUBESCRIBE_NAMESPACE=namespace, KUBESCRIBE_REDIS_URL=redis_url,
                   KUBESCRIBE_METRICS_PORT=str(port), KUBESCRIBE_RUNNER_IMAGE="kubescribe-runner:test",
                   KUBESCRIBE_LOG_LEVEL="INFO", KUBESCRIBE_RESYNC_SECONDS="3")
        env.update(settings_env(settings))  # a setting given wins over the defaults above
        super().__init__(env, workdir / f"operator-{namespace}.log", workdir, port)


def install_crd(cluster, timeout: float = 120.0) -> None:
    """The TranscriptionRequest CRD applied to ``cluster`` and Established.

    Polled with a deadline rather than one ``kubectl wait``: a single failed call of that
    (its output unseen, on a busy two-core machine) once failed the session's fixture and
    every test behind it. What kubectl last said is in the error."""
    proc = cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl apply of {CRD.name} failed: {proc.stderr.strip()}")
    wait_crd_established(cluster, timeout)


def wait_crd_established(cluster, timeout: float) -> None:
    """The TranscriptionRequest CRD Established within ``timeout`` seconds (however it was
    installed: by :func:`install_crd` or by Helm), or an error with what kubectl last said."""
    said: list[str] = []

    def established() -> bool:
        got = cluster.kubectl("get", f"crd/{PLURAL}.{GROUP}", "-o",
                              "jsonpath={.status.conditions[?(@.type==\"Established\")].status}")
        said[:] = [got.stdout.strip() or got.stderr.strip()]
        return got.returncode == 0 and got.stdout.strip() == "True"

    try:
        wait_for(established, timeout=timeout, interval=0.2, description=f"crd/{PLURAL}.{GROUP} Established")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; kubectl last said: {said[0] if said else 'nothing'}") from None


def operator_identity(cluster, namespace: str = "kube-system", name: str = "kubescribe-operator") -> tuple[str, str]:
    """A ServiceAccount for the operator, bound to cluster-admin, and a kubeconfig for it:
    (kubeconfig path, audit user name). Here only to name the operator in the API server's
    audit log; the chart's least-privilege RBAC is tested in tests/test_chart.py."""
    from kubernetes import client

    api = cluster.api_client()
    try:
        client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        client.RbacAuthorizationV1Api(api).create_cluster_role_binding({
            "metadata": {"name": f"{namespace}-{name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    finally:
        api.close()
    return cluster.service_account_kubeconfig(namespace, name), f"system:serviceaccount:{namespace}:{name}"


class Requests:
    """TranscriptionRequests in one namespace, through the admin client."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict:
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def wait(self, name: str, predicate: Callable[[dict], bool], timeout: float = 180,
             description: str = "") -> dict:
        return wait_for(lambda: (lambda s: s if predicate(s) else None)(self.status(name)),
                        timeout=timeout, interval=0.1, description=description or f"{name} status")

    def wait_phase(self, name: str, *phases: str, timeout: float = 180) -> dict:
        return self.wait(name, lambda s: s.get("phase") in phases, timeout,
                         f"{name} in phase {'/'.join(phases)}")

    def jobs(self) -> list:
        return self.batch.list_namespaced_job(self.namespace).items

    def job_gone(self, name: str) -> bool:
        """The Job ``name`` no longer exists (a read answers 404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.read_namespaced_job(name, self.namespace)
            return False
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise

    def events(self, name: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name]

    def wait_reasons(self, name: str, *reasons: str, timeout: float = 30) -> list[str]:
        """The reasons of ``name``'s events once all of ``reasons`` are among them.

        Events are separate writes that may land after the status patch they
        accompany, so a test that has seen a phase waits for its events too."""
        def seen() -> list[str] | None:
            found = [e.reason for e in self.events(name)]
            return found if set(reasons) <= set(found) else None

        return wait_for(seen, timeout=timeout, interval=0.1,
                        description=f"events {', '.join(reasons)} on {name}")
