"""The real Prometheus Operator for the tests, and the Prometheus that runs its config.

``hack/build-test-binaries.sh prometheus-operator`` builds the operator from its Go module
and copies the CRDs of the same release from the module source
(``example/prometheus-operator-crd``) beside it, into
``~/.cache/kubescribe/tools/prometheus-operator-<version>/{bin,crds}``; the tests read
them there, nothing is vendored.

How it runs (no registry, so no upstream Prometheus image): the operator runs as a host
process against a test cluster's API server and does everything it does in a cluster —
it watches ServiceMonitors, PodMonitors and PrometheusRules, turns those a ``Prometheus``
object selects into a scrape configuration (Secret ``prometheus-<name>``) and rule files
(ConfigMaps ``prometheus-<name>-rulefiles-<n>``), and creates the StatefulSet. The
``Prometheus`` object's nodeSelector matches no node, so that StatefulSet's pod stays
Pending; ``generated_config`` reads what the operator wrote and hands it, unchanged but
for the paths that only exist inside its pod, to the real Prometheus binary running on
the host. There, kubernetes_sd discovers the real pods through the API server and scrapes
them at their pod IPs on the real node's bridge.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from harness.envtest import find_tool, free_port, log_tail, wait_for
from harness.envtest.cluster import KubeCluster
from harness.process import ManagedProcess, http_ok

#: A node label no node has: the operator's StatefulSet pod stays Pending.
UNSCHEDULABLE = {"kubescribe.io/prometheus-runs-on-the-host": "true"}


class PrometheusOperatorError(RuntimeError):
    """The operator did not start, or wrote no configuration."""


def crd_dir() -> Path:
    """The CRDs copied from the module source by the build script, beside the binary."""
    path = Path(find_tool("operator")).parent.parent / "crds"
    if not sorted(path.glob("monitoring.coreos.com_*.yaml")):
        raise PrometheusOperatorError(
            f"no Prometheus Operator CRDs in {path}: run `hack/build-test-binaries.sh prometheus-operator`")
    return path


class PrometheusOperator:
    """The Prometheus Operator as a process against ``cluster`` (admin credentials).

    Args:
        cluster: a started ``KubeCluster``; its CRDs are installed on ``start()``.
        workdir: log and generated files; temporary (removed by ``stop()``) when not given.
    """

    def __init__(self, cluster: KubeCluster, workdir: Optional[Path] = None) -> None:
        self.binary = find_tool("operator")
        self.cluster = cluster
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-promop-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "prometheus-operator.log"
        self.process: Optional[ManagedProcess] = None
        self.port = 0

    def start(self) -> "PrometheusOperator":
        for crd in sorted(crd_dir().glob("monitoring.coreos.com_*.yaml")):
            # Server-side: the larger CRDs exceed the client-side last-applied annotation.
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd),
                                 check=True, timeout=120)
        for crd in ("prometheuses", "servicemonitors", "podmonitors", "prometheusrules"):
            self.cluster.wait_established(f"crd/{crd}.monitoring.coreos.com", timeout=60)
        pki = self.cluster.pki
        assert pki is not None
        self.port = free_port()
        self.process = ManagedProcess("prometheus-operator", [
            self.binary,
            f"--apiserver={self.cluster.server_url}",
            f"--ca-file={pki.ca_cert}",
            f"--cert-file={pki.admin_cert}",
            f"--key-file={pki.admin_key}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log-level=info",
        ], self.log_path, error=PrometheusOperatorError)
        self.process.start()

        try:
            self.process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{self.port}/healthz"), timeout=60,
                                    interval=0.25, description="prometheus-operator /healthz")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return log_tail(self.log_path, 100)

    # ------------------------------------------------------------------ its output

    def _get(self, kind: str, name: str, namespace: str) -> Optional[dict[str, Any]]:
        proc = self.cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def generated_config(self, namespace: str, name: str, *, until: Any = None,
                         timeout: float = 120.0) -> dict[str, Any]:
        """The scrape configuration the operator generated for ``Prometheus`` name, decoded.

        ``until(config) -> bool`` waits for a configuration that has what the caller needs
        (the operator rewrites it as monitors appear).
        """
        def probe() -> Optional[dict[str, Any]]:
            secret = self._get("secret", f"prometheus-{name}", namespace)
            if not secret or "prometheus.yaml.gz" not in (secret.get("data") or {}):
                return None
            import base64

            config = yaml.safe_load(gzip.decompress(base64.b64decode(secret["data"]["prometheus.yaml.gz"])))
            return config if until is None or until(config) else None

        try:
            return wait_for(probe, timeout=timeout, interval=0.5, description=f"config of Prometheus {namespace}/{name}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nprometheus-operator log:\n{self.log()}") from None

    def rule_files(self, namespace: str, name: str, directory: Path) -> list[Path]:
        """The rule files the operator generated (ConfigMaps ``prometheus-<name>-rulefiles-<n>``)."""
        proc = self.cluster.kubectl("get", "configmaps", "-n", namespace, "-o", "json", check=True, timeout=30)
        out = []
        for cm in json.loads(proc.stdout)["items"]:
            if re.fullmatch(rf"prometheus-{re.escape(name)}-rulefiles-\d+", cm["metadata"]["name"]):
                for file, text in (cm.get("data") or {}).items():
                    path = directory / cm["metadata"]["name"] / file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
                    out.append(path)
        return out

    def host_config(self, config: dict[str, Any], rule_files: list[Path]) -> dict[str, Any]:
        """``config`` for a Prometheus on the host: kubernetes_sd through the admin
        kubeconfig instead of the pod's ServiceAccount, the rule files where
        ``rule_files`` wrote them, and the placeholders the pod's config reloader would
        fill filled the same way."""
        # The pod's config reloader fills $(SHARD) (the shard number, 0 of 1 here) and
        # $(POD_NAME) from its environment before Prometheus reads the file.
        config = json.loads(json.dumps(config).replace("$(SHARD)", "0"))
        labels = (config.get("global") or {}).get("external_labels") or {}
        for key in [k for k, v in labels.items() if "$(" in str(v)]:
            del labels[key]
        for job in config.get("scrape_configs") or []:
            for sd in job.get("kubernetes_sd_configs") or []:
                sd.pop("api_server", None)
                sd["kubeconfig_file"] = self.cluster.kubeconfig_path
            leftovers = [k for k, v in job.items() if isinstance(v, str) and v.startswith("/etc/prometheus/")]
            assert not leftovers, f"{job['job_name']}: pod-only paths {leftovers}"
        config["rule_files"] = [str(p) for p in rule_files]
        config.pop("alerting", None)
        return config
