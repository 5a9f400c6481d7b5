"""etcd + kube-apiserver + kube-controller-manager as local processes.

Everything the operator talks to is the real thing: the API server validates the CRD's
structural schema and CEL rules, RBAC authorizes every request, the Job controller
retries pods and applies ``podFailurePolicy``, and the garbage collector deletes a Job
when the TranscriptionRequest that owns it goes away. Nothing runs pods except the
fake kubelet (see ``kubelet.py``), which handles runner Jobs only.

Certificates come from ``harness.certs``, processes are ``harness.process.ManagedProcess``
and the audit log is read by ``audit.py``.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from harness.certs import ClusterPki, cluster_pki
from harness.envtest import find_tool, free_port, wait_for
from harness.process import ManagedProcess, ProcessError, http_ok

# Controllers the tests need, and why (names as in `kube-controller-manager --help`):
# job-controller                runner Jobs: pods, retries, backoffLimit, podFailurePolicy,
#                               conditions
# garbage-collector-controller  a deleted TranscriptionRequest takes its Job (ownerReferences)
#                               with it
# ttl-after-finished-controller Jobs with ttlSecondsAfterFinished disappear as in a cluster
# namespace-controller          deleting a test namespace really empties and removes it
# serviceaccount-controller     every namespace gets its "default" ServiceAccount; without it
#                               the ServiceAccount admission plugin rejects Job pods
# serviceaccount-token-controller, root-ca-certificate-publisher-controller
#                               the token Secrets and kube-root-ca.crt ConfigMaps pods expect
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "job-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kubescribe-admin"


class ClusterStartError(ProcessError):
    """A control-plane process did not come up; the message carries its log tail."""


def write_kubeconfig(
    path: Path | str,
    *,
    server: str,
    ca_path: Path | str,
    user_name: str,
    user: dict[str, Any],
    namespace: Optional[str] = None,
    context_name: str = "kubescribe-envtest",
) -> str:
    """Write a one-cluster, one-user kubeconfig and return its path."""
    context: dict[str, Any] = {"cluster": "envtest", "user": user_name}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": context_name, "context": context}],
        "current-context": context_name,
        "preferences": {},
    }
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return str(path)


def make_namespace(core, prefix: str) -> str:
    """A fresh test namespace, returned once its default ServiceAccount exists (pods and
    TokenRequests need it)."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"kubescribe.io/test": "true"}}})
    wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=30, interval=0.05,
             description=f"ServiceAccount {ns}/default", ignore=(Exception,))
    return ns


def local_healthz_ok(port: int) -> bool:
    """``https://127.0.0.1:<port>/healthz`` answers 200: the probe of a control-plane
    component that serves it with a self-signed certificate (not verified: loopback only)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    return http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure)


# --------------------------------------------------------------------------- cluster


class KubeCluster:
    """A real, single-machine Kubernetes control plane for tests.

    Args:
        controllers: kube-controller-manager controllers to run (``DEFAULT_CONTROLLERS``);
            pass ``()`` to run without the controller manager at all.
        apiserver_args: extra kube-apiserver flags, e.g. ``["--feature-gates=..."]``.
        controller_manager_args: extra kube-controller-manager flags.
        startup_timeout: seconds each component may take to report ready.
        workdir: where data, certificates, kubeconfigs and logs go; a fresh temporary
            directory (removed by ``stop()``) when not given.
        keep_workdir: leave the working directory in place after ``stop()`` for post-mortem
            reading of the logs; also switched on by ``KUBESCRIBE_ENVTEST_KEEP=1``.
        verbosity: klog ``--v`` for the Kubernetes components' logs.
        crds: CRD manifests (files or directories) applied, and awaited Established,
            before the controller manager starts. The garbage collector reads API
            discovery at start and then only every 30 s, so a Job owned by a custom
            resource of a CRD installed later is collected up to ~30 s late; CRDs
            installed here are known to it from the start.
        host: the address the API server binds and advertises. Loopback (the default)
            for a control plane alone; a real node's pods reach the API server through
            the ``kubernetes`` Service, whose endpoint must be this address, so the
            real-node fixture passes its bridge address.
        service_cidr: ``--service-cluster-ip-range``; the first address is the
            ``kubernetes`` Service and is in the serving certificate.
        api_port: the API server's port; a free one when not given.
        audit_policy: an ``audit.k8s.io/v1`` Policy (as a dict) to run the API server
            with; its log (JSON lines) is ``audit_log_path`` and ``audit_events()``
            reads it. ``WRITES_AUDIT_POLICY`` records who wrote requests, Jobs and Events.

    Use as a context manager or call ``start()`` / ``stop()``. After ``start()``:
    ``server_url``, ``kubeconfig_path``, ``ca_path``, ``api_client()``, ``kubectl()``,
    ``service_account_kubeconfig()``, and ``startup_seconds`` (per-component timings).
    """

    def __init__(
        self,
        *,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        startup_timeout: float = 90.0,
        workdir: Optional[os.PathLike[str] | str] = None,
        keep_workdir: Optional[bool] = None,
        verbosity: int = 1,
        crds: Sequence[os.PathLike[str] | str] = (),
        host: str = "127.0.0.1",
        service_cidr: str = SERVICE_CLUSTER_IP_RANGE,
        api_port: Optional[int] = None,
        audit_policy: Optional[dict[str, Any]] = None,
    ) -> None:
        self.audit_policy = audit_policy
        self.crds = [str(p) for p in crds]
        self.host = host
        self.service_cidr = service_cidr
        self.api_port = api_port
        self.controllers = tuple(controllers)
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.startup_timeout = startup_timeout
        self.verbosity = verbosity
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-envtest-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if keep_workdir is None:
            keep_workdir = os.environ.get("KUBESCRIBE_ENVTEST_KEEP", "") not in ("", "0", "false")
        self.keep_workdir = keep_workdir
        self.logs_dir = self.workdir / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.audit_log_path = self.logs_dir / "audit.log"

        self.etcd: Optional[ManagedProcess] = None
        self.apiserver: Optional[ManagedProcess] = None
        self.controller_manager: Optional[ManagedProcess] = None
        self.etcd_url = ""
        self.server_url = ""
        self.kubeconfig_path = ""
        self.ca_path = ""
        self.admin_cert_path = ""
        self.admin_key_path = ""
        self.pki: Optional[ClusterPki] = None
        self.startup_seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._sa_kubeconfigs = 0
        self._admin_ssl: Optional[ssl.SSLContext] = None

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "KubeCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "KubeCluster":
        etcd_bin = find_tool("etcd")
        apiserver_bin = find_tool("kube-apiserver")
        cm_bin = find_tool("kube-controller-manager") if self.controllers else ""
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self.pki = cluster_pki(self.workdir / "pki", host=self.host, service_cidr=self.service_cidr,
                                   admin_user=ADMIN_USER)
            self.ca_path = str(self.pki.ca_cert)
            self.admin_cert_path = str(self.pki.admin_cert)
            self.admin_key_path = str(self.pki.admin_key)
            self.startup_seconds["certificates"] = time.monotonic() - t0

            t = time.monotonic()
            self._start_etcd(etcd_bin)
            self.startup_seconds["etcd"] = time.monotonic() - t

            t = time.monotonic()
            self._start_apiserver(apiserver_bin)
            self.startup_seconds["kube-apiserver"] = time.monotonic() - t

            if self.crds:
                t = time.monotonic()
                self._install_crds()
                self.startup_seconds["crds"] = time.monotonic() - t

            if self.controllers:
                t = time.monotonic()
                self._start_controller_manager(cm_bin)
                self.startup_seconds["kube-controller-manager"] = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Terminate every process (SIGTERM, then SIGKILL) and remove the temp dir."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for proc in (self.controller_manager, self.apiserver, self.etcd):
            if proc is not None:
                proc.stop()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- components

    def _start_etcd(self, binary: str) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.etcd = ManagedProcess(
            "etcd",
            [
                binary,
                "--name=envtest",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                "--initial-cluster-state=new",
                # Test data is thrown away: skipping fsync is what makes etcd quick on
                # a shared disk (controller-runtime's envtest does the same).
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.logs_dir / "etcd.log",
            error=ClusterStartError,
        )
        self.etcd.start()

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                return b'"health":"true"' in resp.read()

        self._await("etcd", healthy, self.etcd)

    def _start_apiserver(self, binary: str) -> None:
        assert self.pki is not None
        port = self.api_port or free_port(self.host)
        self.server_url = f"https://{self.host}:{port}"
        loopback = ipaddress.ip_address(self.host).is_loopback
        audit: list[str] = []
        if self.audit_policy is not None:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(self.audit_policy, sort_keys=False))
            # Blocking mode: an event is in the file when its request has returned, so a
            # test reads a complete log without waiting for a batch to flush.
            audit = [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log_path}",
                     "--audit-log-format=json", "--audit-log-mode=blocking",
                     # rotated at 100 MB all the same when 0; iter_audit_events reads rotations too
                     "--audit-log-maxsize=100000"]
        self.apiserver = ManagedProcess(
            "kube-apiserver",
            [
                binary,
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--allow-privileged=true",
                # On loopback the "kubernetes" Service's endpoint would be 127.0.0.1, which
                # Endpoints validation rejects; without a reconciler the apiserver does not
                # retry that write every few seconds. Nothing in-cluster dials it there.
                *(["--endpoint-reconciler-type=none"] if loopback else []),
                # logs/exec: the API server calls the kubelet with the admin identity.
                f"--kubelet-client-certificate={self.pki.admin_cert}",
                f"--kubelet-client-key={self.pki.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--v={self.verbosity}",
                *audit,
                *self.apiserver_args,
            ],
            self.logs_dir / "kube-apiserver.log",
            error=ClusterStartError,
        )
        self.apiserver.start()

        def ready() -> bool:
            # 500 while post-start hooks (RBAC bootstrap roles, priority levels...) finish
            return self._admin_get("/readyz") == 200

        self._await("kube-apiserver", ready, self.apiserver)

        self.kubeconfig_path = write_kubeconfig(
            self.workdir / "admin.kubeconfig",
            server=self.server_url,
            ca_path=self.pki.ca_cert,
            user_name=ADMIN_USER,
            user={"client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)},
        )

    def _install_crds(self) -> None:
        for path in self.crds:
            proc = self.kubectl("apply", "--server-side", "-f", path, timeout=self.startup_timeout + 10)
            if proc.returncode != 0:
                raise ClusterStartError(f"kubectl apply --server-side -f {path} failed:\n{proc.stderr}")
            self.wait_established("-f", path, timeout=self.startup_timeout)

    def wait_established(self, *targets: str, timeout: float) -> None:
        """``kubectl wait --for=condition=Established`` on CRDs, until ``timeout``.

        kubectl's wait fails at once, instead of waiting, on a CRD created a moment ago
        whose status the API server has not written yet (".status.conditions accessor
        error: <nil>"); that is retried here, anything else is a ClusterStartError."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            proc = self.kubectl("wait", "--for=condition=Established", f"--timeout={left}s", *targets,
                                timeout=left + 10)
            if proc.returncode == 0:
                return
            if "accessor error" not in proc.stderr or time.monotonic() >= deadline:
                raise ClusterStartError(f"kubectl wait --for=condition=Established {' '.join(targets)} failed:\n"
                                        f"{proc.stderr}")
            time.sleep(0.2)  # its status is on the way: the next wait sees it

    def _start_controller_manager(self, binary: str) -> None:
        assert self.pki is not None
        port = free_port()
        self.controller_manager = ManagedProcess(
            "kube-controller-manager",
            [
                binary,
                f"--kubeconfig={self.kubeconfig_path}",
                # No --authentication/--authorization-kubeconfig: its own HTTPS endpoint
                # only serves the /healthz probe below (always allowed), and delegated
                # authentication would look for a request-header CA this cluster lacks.
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                "--cluster-name=kubescribe-envtest",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                f"--v={self.verbosity}",
                *self.controller_manager_args,
            ],
            self.logs_dir / "kube-controller-manager.log",
            error=ClusterStartError,
        )
        self.controller_manager.start()

        def healthy() -> bool:
            return local_healthz_ok(port)

        self._await("kube-controller-manager", healthy, self.controller_manager)

        if {"serviceaccount", "serviceaccount-controller"} & set(self.controllers):
            # The controllers run once "default/default" exists: the ServiceAccount
            # controller has synced and created it, so Job pods will be admitted.
            def default_sa() -> bool:
                    return self._admin_get("/api/v1/namespaces/default/serviceaccounts/default") == 200

            self._await("kube-controller-manager (default ServiceAccount)", default_sa, self.controller_manager)

    def _admin_get(self, path: str) -> int:
        """HTTP status of an admin GET; the probe behind the readiness waits."""
        assert self.pki is not None
        if self._admin_ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
            self._admin_ssl = ctx
        try:
            with urllib.request.urlopen(f"{self.server_url}{path}", context=self._admin_ssl, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def _await(self, what: str, probe: Any, proc: ManagedProcess) -> None:
        proc.wait_ready(probe, timeout=self.startup_timeout, description=f"{what} to become ready",
                        ignore=(OSError, urllib.error.URLError, ssl.SSLError))

    # ----------------------------------------------------------------- clients

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` authenticated as cluster admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig_path)

    def kubectl(
        self,
        *args: str,
        kubeconfig: Optional[str] = None,
        input: Optional[str] = None,
        check: bool = False,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``kubectl`` against this cluster (as admin unless ``kubeconfig``)."""
        kubectl = shutil.which("kubectl")
        if not kubectl:
            raise RuntimeError("kubectl is not on PATH")
        return subprocess.run(
            [kubectl, f"--kubeconfig={kubeconfig or self.kubeconfig_path}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 3600,
        path: Optional[os.PathLike[str] | str] = None,
    ) -> str:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The token comes from the TokenRequest API, exactly what a pod's projected token
        is, so whatever this kubeconfig may do is what the ServiceAccount's RBAC allows.
        """
        from kubernetes import client

        api = self.api_client()
        try:
            req = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[SERVICE_ACCOUNT_ISSUER], expiration_seconds=expiration_seconds)
            )
            resp = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, req)
            token = resp.status.token
        finally:
            api.close()
        with self._lock:
            self._sa_kubeconfigs += 1
            n = self._sa_kubeconfigs
        target = Path(path) if path else self.workdir / f"sa-{namespace}-{name}-{n}.kubeconfig"
        return write_kubeconfig(
            target,
            server=self.server_url,
            ca_path=self.ca_path,
            user_name=f"system:serviceaccount:{namespace}:{name}",
            user={"token": token},
            namespace=namespace,
        )

    def audit_events(self) -> list[dict[str, Any]]:
        """Every event in the audit log so far (needs ``audit_policy``)."""
        return list(self.iter_audit_events())

    def iter_audit_events(self) -> Iterator[dict[str, Any]]:
        """The audit log's events, oldest first, one at a time: the files the API server
        rotated away (``audit-<time>.log`` beside it) and then the current one."""
        import json

        if self.audit_policy is None:
            raise RuntimeError("this KubeCluster was started without audit_policy")
        path = self.audit_log_path
        rotated = sorted(p for p in path.parent.glob(f"{path.stem}-*{path.suffix}") if p != path)
        for p in [*rotated, path]:
            if not p.exists():
                continue
            with open(p, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

    def log_path(self, component: str) -> Path:
        """``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return self.logs_dir / f"{component}.log"

    def __repr__(self) -> str:
        return f"KubeCluster(server_url={self.server_url!r}, workdir={str(self.workdir)!r})"


if __name__ == "__main__":  # pragma: no cover - manual use: python -m harness.envtest.cluster
    with KubeCluster(keep_workdir=True) as c:
        print(f"export KUBECONFIG={c.kubeconfig_path}", file=sys.stderr)
        print({k: round(v, 2) for k, v in c.startup_seconds.items()}, file=sys.stderr)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
