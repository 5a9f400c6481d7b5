"""Kueue's manager as a local process against a test control plane.

Kueue is built from its Go module by ``hack/build-test-binaries.sh kueue``, which also
copies the release's CRDs and webhook manifests out of the module source into
``<tools>/kueue-<version>/config/`` (so the tests need neither the module cache nor
kustomize). :class:`KueueManager`:

- applies those CRDs, with the conversion webhooks Kueue's own kustomization enables;
- generates a CA and a serving certificate for 127.0.0.1 (Kueue's internal certificate
  management is off: it would make certificates for a Service that does not exist);
- starts ``kueue --config`` with a Configuration that manages ``batch/job`` only and
  only Jobs that name a queue (``manageJobsWithoutQueueName: false``);
- registers the mutating and validating webhooks Kueue needs for Jobs and its own
  resources, as ``url`` clientConfigs pointing at the manager's port, with the CA;
- on ``stop()`` removes the webhook configurations first, so a stopped manager never
  leaves the API server calling a dead port for every Job.

Only the webhooks of enabled integrations are registered: Kueue's manifests also carry
webhooks for pods, Deployments, JobSets, ... whose handlers a manager with only
``batch/job`` does not serve, and a ``failurePolicy: Fail`` webhook on pods would break
every other test sharing the control plane.

When internal certificate management is off, Kueue's manager reads its metrics serving
certificate from the fixed path ``/etc/kueue/metrics/certs`` and exits when it is
missing; the wrapper writes a generated one there when none exists (a loopback-only,
throwaway certificate; tests run as root, like the real node's).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from harness.certs import serving_cert
from harness.envtest import find_tool, free_port, log_tail
from harness.envtest.cluster import ClusterStartError
from harness.process import ManagedProcess, http_ok

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
WEBHOOK_CONFIG_NAME = "kubescribe-envtest-kueue"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
#: CRDs whose conversion webhook Kueue's kustomization (config/components/crd) enables.
CONVERSION_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
#: API groups of the webhooks the manager serves with ``integrations: [batch/job]``.
WEBHOOK_GROUPS = {GROUP, "batch"}


def kueue_config_dir(binary: str) -> Path:
    """``<tools>/kueue-<version>/config``: the CRDs and webhooks of the built release."""
    path = Path(binary).resolve().parent.parent / "config"
    if not (path / "crd").is_dir() or not (path / "webhooks.yaml").is_file():
        raise ClusterStartError(
            f"{path} lacks Kueue's CRDs or webhooks; run `hack/build-test-binaries.sh kueue` "
            f"(it copies them from the Go module next to the binary)")
    return path


def _valid_for_a_day(path: Path) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)


def local_webhooks(manifests: str, *, base_url: str, ca_pem: bytes, name: str = WEBHOOK_CONFIG_NAME
                   ) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, reduced to the enabled integrations and pointed at
    ``base_url`` (``https://127.0.0.1:<port>``) instead of an in-cluster Service."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc or doc.get("kind") not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if not groups or not groups <= WEBHOOK_GROUPS:
                continue
            hook = copy.deepcopy(hook)
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base_url + path, "caBundle": base64.b64encode(ca_pem).decode()}
            hooks.append(hook)
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                    "metadata": {"name": name}, "webhooks": hooks})
    return out


class KueueManager:
    """Kueue's manager for a ``KubeCluster``.

    Args:
        cluster: a started ``KubeCluster``.
        workdir: config, certificates and the log; a temporary directory when not given.
        config: extra top-level Configuration fields (deep-merged over the defaults),
            e.g. ``{"admissionFairSharing": {...}}``.
        feature_gates: ``--feature-gates`` of the manager. The visibility API server is
            off by default: it is an aggregated API server of its own, not needed here.
        startup_timeout: seconds for CRDs and the manager to become ready.

    After ``start()``: ``log_path``, ``webhook_url``, ``custom`` (a CustomObjectsApi),
    and ``apply(doc)`` for Kueue objects.
    """

    def __init__(self, cluster: Any, *, workdir: Optional[os.PathLike[str] | str] = None,
                 config: Optional[dict[str, Any]] = None, feature_gates: str = "VisibilityOnDemand=false",
                 startup_timeout: float = 120.0) -> None:
        self.cluster = cluster
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-kueue-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = config or {}
        self.feature_gates = feature_gates
        self.startup_timeout = startup_timeout
        self.log_path = self.workdir / "kueue.log"
        self.process: Optional[ManagedProcess] = None
        self.webhook_url = ""
        self._webhooks: list[dict[str, Any]] = []
        self._api: Any = None
        self.custom: Any = None

    def __enter__(self) -> "KueueManager":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> "KueueManager":
        binary = find_tool("kueue")
        config_dir = kueue_config_dir(binary)
        try:
            certs = serving_cert(self.workdir / "certs")
            ca_pem, cert = certs.ca_pem, certs.cert
            self._ensure_metrics_cert(cert, certs.key)
            port, health_port = free_port(), free_port()
            self.webhook_url = f"https://127.0.0.1:{port}"
            self._install_crds(config_dir / "crd", ca_pem)
            self.cluster.kubectl("create", "namespace", "kueue-system")  # exists already: fine
            config_path = self.workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(self._config(port, health_port, cert.parent)))
            self.process = ManagedProcess(
                "kueue",
                [binary, f"--config={config_path}", f"--feature-gates={self.feature_gates}",
                 "--zap-log-level=2", "--zap-devel=false"],
                self.log_path,
                env=dict(os.environ, KUBECONFIG=self.cluster.kubeconfig_path),
                error=ClusterStartError,
            )
            self.process.start()
            self._await_ready(health_port)
            self._webhooks = local_webhooks((config_dir / "webhooks.yaml").read_text(),
                                            base_url=self.webhook_url, ca_pem=ca_pem)
            for doc in self._webhooks:
                self._kubectl_apply(doc)
            self._api = self.cluster.api_client()
            from kubernetes import client

            self.custom = client.CustomObjectsApi(self._api)
            self._await_webhooks()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Webhook configurations first, then the process; the CRDs stay (harmless)."""
        for doc in self._webhooks:
            self.cluster.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found")
        self._webhooks = []
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._own_workdir and os.environ.get("KUBESCRIBE_ENVTEST_KEEP", "") in ("", "0", "false"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- pieces

    def _config(self, port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
        config: dict[str, Any] = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "manageJobsWithoutQueueName": False,
            "internalCertManagement": {"enable": False},
            "leaderElection": {"leaderElect": False},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(cert_dir)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "integrations": {"frameworks": ["batch/job"]},
        }
        return _merge(config, self.extra_config)

    @staticmethod
    def _ensure_metrics_cert(cert: Path, key: Path) -> None:
        """Kueue only reads it at start (nothing scrapes it here): keep one that is valid
        for another day, else write this run's."""
        if (METRICS_CERT_DIR / "tls.key").is_file() and _valid_for_a_day(METRICS_CERT_DIR / "tls.crt"):
            return
        try:
            METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cert, METRICS_CERT_DIR / "tls.crt")
            shutil.copyfile(key, METRICS_CERT_DIR / "tls.key")
            (METRICS_CERT_DIR / "tls.key").chmod(0o600)
        except OSError as exc:
            raise ClusterStartError(
                f"Kueue's manager reads its metrics certificate from {METRICS_CERT_DIR} and cannot start "
                f"without one; writing it failed ({exc}): run the tests as root, as `make test` does") from None

    def _install_crds(self, crd_dir: Path, ca_pem: bytes) -> None:
        docs = []
        for path in sorted(crd_dir.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                if doc["spec"]["names"]["plural"] in CONVERSION_CRDS:
                    doc["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                        "conversionReviewVersions": ["v1"],
                        "clientConfig": {"url": f"{self.webhook_url}/convert",
                                         "caBundle": base64.b64encode(ca_pem).decode()}}}
                docs.append(doc)
        path = self.workdir / "crds.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        proc = self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path),
                                    timeout=self.startup_timeout + 10)
        if proc.returncode != 0:
            raise ClusterStartError(f"kubectl apply of Kueue's CRDs failed:\n{proc.stderr}")
        self.cluster.wait_established("-f", str(path), timeout=self.startup_timeout)

    def _kubectl_apply(self, doc: dict[str, Any]) -> None:
        proc = self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                                    input=json.dumps(doc))
        if proc.returncode != 0:
            raise ClusterStartError(f"kubectl apply of {doc['kind']} failed:\n{proc.stderr}\n"
                                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}")

    def _await_ready(self, health_port: int) -> None:
        assert self.process is not None
        self.process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{health_port}/readyz"),
                                timeout=self.startup_timeout, description="Kueue's manager /readyz")

    def _await_webhooks(self) -> None:
        """Until Kueue's Job webhook answers: a server-side dry run of a Job that names a
        queue comes back suspended, which only the webhook does."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        batch = client.BatchV1Api(self._api)
        probe = {"apiVersion": "batch/v1", "kind": "Job",
                 "metadata": {"name": "kueue-webhook-probe", "labels": {f"{GROUP}/queue-name": "probe"}},
                 "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "c", "image": "none"}]}}}}

        def mutated() -> bool:
            job = batch.create_namespaced_job("default", probe, dry_run="All")
            return bool(job.spec.suspend)

        assert self.process is not None
        self.process.wait_ready(mutated, timeout=self.startup_timeout, interval=0.2,
                                description="the API server to reach Kueue's Job webhook", ignore=(ApiException,))

    # ----------------------------------------------------------------- objects

    def apply(self, doc: dict[str, Any]) -> None:
        """Create or update a Kueue (or any) object through the API server and its webhooks."""
        self._kubectl_apply(doc)

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


__all__ = ["GROUP", "VERSION", "KueueManager", "local_webhooks"]
