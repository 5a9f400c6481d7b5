"""A real single-node Kubernetes: the control plane plus kubelet on containerd + runc.

``KubeCluster`` (etcd, kube-apiserver, kube-controller-manager with every default
controller) bound to a bridge this fixture creates, then kube-scheduler, containerd with
its CRI plugin, the kubelet, kube-proxy (iptables mode) and CoreDNS, all as local
processes. Pods are real containers from OCI images imported into containerd (built from
our Dockerfiles by ``hack/build-images.sh``); they get addresses on the bridge, reach
Services through kube-proxy's rules and resolve ``*.svc`` names through CoreDNS.

Network containment: everything lives on the bridge ``ksbr0`` (node 10.244.0.1, pods
10.244.0.0/24, Services 10.97.0.0/24). A guard rule drops forwarded pod traffic to any
address outside the pod range, the bridge plugin does no masquerading, and CoreDNS has
no upstream, so nothing a pod sends leaves the machine.

One setting is specific to the VMs this runs on: they lack CAP_SYS_RESOURCE, so a
negative ``oom_score_adj`` (the CRI asks -998 for the pause container) kills runc init;
containerd's ``restrict_oom_score_adj`` clamps it.

Everything the fixture changes on the host (bridge, iptables chains, sysctls the kubelet
sets, paths the kubelet hard-codes, network namespaces) is undone by ``stop()``.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from harness.envtest import REPO_ROOT, find_tool, wait_for
from harness.envtest.cluster import KubeCluster, local_healthz_ok
from harness.process import ManagedProcess, http_ok

IMAGES_SCRIPT = REPO_ROOT / "hack" / "build-images.sh"

NODE_NAME = "kubescribe-node"
BRIDGE = "ksbr0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.97.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
GUARD_COMMENT = "kubescribe-realnode-guard"
#: The FORWARD rule that keeps pod traffic on the pod range (checked, inserted, deleted).
GUARD_RULE = ("FORWARD", "-s", POD_CIDR, "!", "-d", POD_CIDR, "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP")
# Fixed ports below the ephemeral range (32768-60999), so they never collide with the
# random ports the other tests take.
API_PORT = 26443
KUBELET_PORT = 20250
KUBELET_HEALTHZ_PORT = 20248
SCHEDULER_PORT = 20259
PROXY_HEALTHZ_PORT = 20256
PROXY_METRICS_PORT = 20249
COREDNS_HEALTH_PORT = 20280
COREDNS_READY_PORT = 20281
NETPOL_HEALTH_PORT = 20291
#: What kube-router's firewall adds to the filter table and the kernel's ipsets: removed
#: by ``stop_network_policies()`` (kube-router leaves them when it exits).
NETPOL_CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
NETPOL_IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "kube-router-")

CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"
# The kubelet sets these at start (protectKernelDefaults: false) and the bridge plugin
# turns on forwarding; they are put back as they were.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
)
# Controllers: every default one. Deployments, ReplicaSets, EndpointSlices (kube-proxy,
# CoreDNS), Jobs, the garbage collector, TTL, namespaces, ServiceAccounts.
CONTROLLERS = ("*",)
GPU_RESOURCE = "nvidia.com/gpu"
#: One real node per machine (fixed bridge, ports and kubelet paths): a second test run
#: waits on this lock for the first to finish instead of tearing its network down.
LOCK_PATH = Path("/run/lock/kubescribe-realnode.lock")
LOCK_TIMEOUT = float(os.environ.get("KUBESCRIBE_REALNODE_LOCK_TIMEOUT", "3600"))


class RealNodeError(RuntimeError):
    """The real node could not start; the message says what is missing or which log to read."""


#: The images a real node's pods run (the base is only a build input).
IMAGES_NEEDED = ("operator", "runner", "redis", "pause")


def image_manifest() -> dict[str, dict[str, str]]:
    """``{name: {"ref": ..., "archive": ...}}`` of the images ``hack/build-images.sh`` built."""
    proc = subprocess.run(["bash", str(IMAGES_SCRIPT), "--print-manifest"], capture_output=True, text=True, timeout=30)
    path = Path(proc.stdout.strip()) if proc.returncode == 0 else None
    if path is None or not path.is_file():
        raise RealNodeError(
            f"no image manifest ({IMAGES_SCRIPT} --print-manifest: {proc.stdout.strip() or proc.stderr.strip()}); "
            "build the images once with `make images` (hack/build-images.sh all)"
        )
    manifest = json.loads(path.read_text())
    missing = [n for n, e in manifest.items() if not Path(e["archive"]).is_file()]
    missing += [n for n in IMAGES_NEEDED if n not in manifest]  # not built for the current source
    if missing:
        raise RealNodeError(f"no image of the current source for {', '.join(missing)}; run `make images`")
    return manifest


def _modprobe(module: str) -> None:
    """Load a module where that is possible; a VM kernel often has it built in."""
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", module], capture_output=True)


def preflight() -> list[str]:
    """What this machine lacks for a real node; empty when it has everything."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("must run as root (containerd, runc, bridge and iptables need it)")
    for name in ("containerd", "ctr", "iptables", "ip"):
        if not shutil.which(name):
            problems.append(f"{name} not on PATH (hack/setup.sh installs it)")
    for path in (RUNC, *(f"{CNI_BIN_DIR}/{p}" for p in ("bridge", "host-local", "portmap", "loopback"))):
        if not os.access(path, os.X_OK):
            problems.append(f"{path} missing (Debian packages runc and containernetworking-plugins)")
    for tool in ("kubelet", "kube-scheduler", "kube-proxy", "coredns"):
        try:
            find_tool(tool)
        except Exception as exc:  # ToolNotFoundError
            problems.append(str(exc).split(". ")[0] + " (hack/build-test-binaries.sh builds it)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        _modprobe("overlay")
        if "overlay" not in Path("/proc/filesystems").read_text():
            problems.append("no overlay filesystem in this kernel (containerd's overlayfs snapshotter)")
    if not Path("/proc/sys/net/bridge").is_dir():
        _modprobe("br_netfilter")
        if not Path("/proc/sys/net/bridge").is_dir():
            problems.append("no br_netfilter (/proc/sys/net/bridge): kube-proxy cannot see bridged pod traffic")
    return problems


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RealNodeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class RealNode:
    """The control plane, one real node, and the images it can run.

    Args:
        images: ``{name: {"ref", "archive"}}`` to import into containerd (``image_manifest()``);
            ``pause`` is the sandbox image and is required.
        crds: CRD manifests installed before the controller manager starts.
        gpus: ``nvidia.com/gpu`` the node advertises (no device plugin: pods get the count
            for scheduling and run on CPU).
        workdir: all state; a fresh temporary directory when not given (removed by
            ``stop()`` unless ``KUBESCRIBE_ENVTEST_KEEP=1``).

    After ``start()``: ``cluster`` (the ``KubeCluster``: ``kubectl()``, ``api_client()``,
    ``kubeconfig_path``), ``images`` (name → image reference), ``startup_seconds``.
    """

    def __init__(
        self,
        images: dict[str, dict[str, str]],
        *,
        crds: Sequence[os.PathLike[str] | str] = (),
        workdir: Optional[os.PathLike[str] | str] = None,
        startup_timeout: float = 120.0,
        gpus: int = 4,
    ) -> None:
        if "pause" not in images:
            raise RealNodeError("the image set has no 'pause' image (hack/build-images.sh builds it)")
        self.image_archives = images
        self.images = {name: entry["ref"] for name, entry in images.items()}
        self.crds = list(crds)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-realnode-"))
        self.keep = os.environ.get("KUBESCRIBE_ENVTEST_KEEP", "") not in ("", "0", "false")
        self.logs_dir = self.workdir / "logs"
        self.startup_timeout = startup_timeout
        self.gpus = gpus
        self.cluster: Optional[KubeCluster] = None
        self.procs: dict[str, ManagedProcess] = {}
        self.startup_seconds: dict[str, float] = {}
        self._sysctls_before: dict[str, str] = {}
        self._netns_before: set[str] = set()
        self._stopped = False
        self._lock_fd: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle

    def _acquire_machine_lock(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)

        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            wait_for(take, timeout=LOCK_TIMEOUT, interval=1.0,
                     description=f"the real-node lock {LOCK_PATH} (another test run holds the node)")
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _release_machine_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> "RealNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "RealNode":
        problems = preflight()
        if problems:
            raise RealNodeError("the real node cannot start on this machine: " + "; ".join(problems))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_machine_lock()
        t0 = time.monotonic()
        try:
            self._step("network", self._network_up)
            self.cluster = KubeCluster(
                controllers=CONTROLLERS,
                workdir=self.workdir / "control-plane",
                keep_workdir=True,  # ours to remove, with the rest of workdir
                host=NODE_IP,
                service_cidr=SERVICE_CIDR,
                api_port=API_PORT,
                crds=self.crds,
                controller_manager_args=[f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false"],
                startup_timeout=self.startup_timeout,
            )
            self._step("control-plane", self.cluster.start)
            self._step("kube-scheduler", self._start_scheduler)
            self._step("containerd", self._start_containerd)
            self._step("images", self._import_images)
            self._step("coredns", self._start_coredns)
            self._step("kubelet", self._start_kubelet)
            self._step("kube-proxy", self._start_kube_proxy)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = time.monotonic() - t0
        return self

    def _step(self, name: str, fn: Any) -> None:
        t = time.monotonic()
        fn()
        self.startup_seconds[name] = round(time.monotonic() - t, 2)

    def stop(self) -> None:
        """Pods away through the API, then every process, mount and host change undone."""
        if self._stopped:
            return
        self._stopped = True
        self._delete_workloads()
        self.stop_network_policies()
        for name in ("kube-proxy", "kubelet", "coredns"):
            self._stop_proc(name)
        self._kill_containers()
        self._stop_proc("containerd")
        self._kill_shims()
        self._stop_proc("kube-scheduler")
        if self.cluster is not None:
            self.cluster.stop()
        self._unmount()
        self._network_down()
        self._restore_sysctls()
        self._remove_hardcoded_paths()
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._release_machine_lock()

    # ------------------------------------------------------------------ network

    def _network_up(self) -> None:
        for key in SYSCTLS:
            path = Path("/proc/sys") / key
            if path.exists():
                self._sysctls_before[key] = path.read_text().strip()
        self._netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        if f"{NODE_IP}/24" not in _run("ip", "-o", "addr", "show", "dev", BRIDGE).stdout:
            _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Bridged pod-to-pod and pod-to-Service traffic must pass iptables, or kube-proxy's
        # DNAT never sees it.
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")
        if _run("iptables", "-C", *GUARD_RULE, check=False).returncode != 0:
            _run("iptables", "-I", GUARD_RULE[0], "1", *GUARD_RULE[1:])

    def _network_down(self) -> None:
        while _run("iptables", "-D", *GUARD_RULE, check=False).returncode == 0:
            pass
        try:
            _run(find_tool("kube-proxy"), "--cleanup", check=False)
        except Exception:
            pass
        # The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and any left over.
        for binary in ("iptables", "ip6tables"):
            if not shutil.which(binary):
                continue
            for table in ("filter", "nat", "mangle"):
                rules = _run(binary, "-t", table, "-S", check=False).stdout.splitlines()
                for rule in rules:
                    parts = rule.split()
                    if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1].startswith("KUBE-") \
                            and not parts[1].startswith("KUBE-"):
                        _run(binary, "-t", table, "-D", *parts[1:], check=False)
                chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
                for chain in chains:
                    _run(binary, "-t", table, "-F", chain, check=False)
                for chain in chains:
                    _run(binary, "-t", table, "-X", chain, check=False)
        links = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines()
        for line in links:
            name = line.split(": ")[1].split("@")[0]
            _run("ip", "link", "del", name, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        if os.path.isdir("/run/netns"):
            for ns in set(os.listdir("/run/netns")) - self._netns_before:
                _run("umount", "-l", f"/run/netns/{ns}", check=False)
                try:
                    os.unlink(f"/run/netns/{ns}")
                except OSError:
                    pass

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctls_before.items():
            path = Path("/proc/sys") / key
            try:
                if path.read_text().strip() != value:
                    path.write_text(value)
            except OSError:
                pass

    # ------------------------------------------------------------------ components

    def _spawn(self, name: str, argv: Sequence[str], env: Optional[dict[str, str]] = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.logs_dir / f"{name}.log", env=env, error=RealNodeError).start()
        self.procs[name] = proc
        return proc

    def _await(self, name: str, probe: Any, timeout: Optional[float] = None) -> None:
        # OSError (connection refused, TLS not up yet) means "not yet", as in KubeCluster.
        self.procs[name].wait_ready(probe, timeout=timeout or self.startup_timeout,
                                    description=f"{name} to become ready")

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None:
            proc.stop(grace=10)

    def _start_scheduler(self) -> None:
        assert self.cluster is not None
        kc = self.cluster.kubeconfig_path
        self._spawn("kube-scheduler", [
            find_tool("kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={SCHEDULER_PORT}", f"--cert-dir={self.workdir / 'scheduler-certs'}", "--v=1",
        ])
        self._await("kube-scheduler", lambda: local_healthz_ok(SCHEDULER_PORT))

    @property
    def containerd_socket(self) -> str:
        return str(self.workdir / "run" / "containerd.sock")

    def _containerd_config(self) -> str:
        w = self.workdir
        return f"""version = 2
root = "{w}/containerd/root"
state = "{w}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images['pause']}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # These VMs lack CAP_SYS_RESOURCE: the -998 oom_score_adj the CRI asks for the pause
  # container makes runc init die ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{RUNC}"
        Root = "{w}/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{w}/cni/net.d"
    max_conf_num = 1
"""

    def _cni_config(self) -> dict[str, Any]:
        # No "loopback" in the chain: containerd's CRI runs it itself for lo.
        return {
            "cniVersion": "1.0.0",
            "name": "kubescribe-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing is NATed off the bridge
                    "hairpinMode": True,  # a pod can reach itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "rangeStart": "10.244.0.10",
                                     "rangeEnd": "10.244.0.250", "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _start_containerd(self) -> None:
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        netd = self.workdir / "cni" / "net.d"
        netd.mkdir(parents=True, exist_ok=True)
        (netd / "10-kubescribe.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        config = self.workdir / "containerd.toml"
        config.write_text(self._containerd_config())
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._await("containerd", lambda: _run("ctr", "-a", self.containerd_socket, "version", check=False).returncode == 0, 60)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, in the CRI's ``k8s.io`` namespace."""
        return _run("ctr", "-a", self.containerd_socket, "-n", "k8s.io", *args, check=check, timeout=timeout)

    def _import_images(self) -> None:
        for name, entry in self.image_archives.items():
            t = time.monotonic()
            self.ctr("images", "import", entry["archive"])
            refs = set(self.ctr("images", "ls", "-q").stdout.split())
            if entry["ref"] not in refs:
                raise RealNodeError(f"importing {entry['archive']} did not give image {entry['ref']} (have: {sorted(refs)})")
            self.startup_seconds[f"import {name}"] = round(time.monotonic() - t, 2)

    def _start_coredns(self) -> None:
        assert self.cluster is not None
        corefile = self.workdir / "Corefile"
        # No forward plugin: a name outside cluster.local gets no answer from anywhere else.
        corefile.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.cluster.kubeconfig_path}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        self._spawn("coredns", [find_tool("coredns"), "-conf", str(corefile)])
        self._await("coredns", lambda: http_ok(f"http://127.0.0.1:{COREDNS_READY_PORT}/ready"), 60)

    def _kubelet_config(self) -> dict[str, Any]:
        assert self.cluster is not None
        w = self.workdir
        resolv = w / "resolv.conf"
        # Pods with dnsPolicy Default get this: no resolver that leaves the machine.
        resolv.write_text("nameserver 127.0.0.1\n")
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": self.cluster.ca_path}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "failCgroupV1": False,
            "podLogsDir": str(w / "pod-logs"),
            "resolvConf": str(resolv),
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [NODE_IP],
            # Host disk use must not put the node under DiskPressure and evict test pods.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 110,
            "serializeImagePulls": False,
            # Status reaches the API server quickly, so tests wait less.
            "nodeStatusUpdateFrequency": "5s",
        }

    def _start_kubelet(self) -> None:
        assert self.cluster is not None
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config(), sort_keys=False))
        self._spawn("kubelet", [
            find_tool("kubelet"), f"--config={config}", f"--kubeconfig={self.cluster.kubeconfig_path}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}", "--v=1",
        ])
        self._await("kubelet", lambda: http_ok(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"))

        def ready() -> bool:
            proc = self.cluster.kubectl(  # type: ignore[union-attr]
                "get", "node", NODE_NAME, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')
            return proc.stdout.strip() == "True"

        self._await("kubelet", ready)
        if self.gpus:
            # A GPU node as the scheduler sees it: nvidia.com/gpu advertised the way the
            # docs' "advertise extended resources" does, with no device plugin behind it.
            # Runner pods ask for GPUs by default and must schedule; they run the CPU path.
            patch = {"status": {"capacity": {GPU_RESOURCE: str(self.gpus)}}}
            self.cluster.kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge",
                                 "-p", json.dumps(patch), check=True)
            self._await("kubelet", lambda: self.cluster.kubectl(  # type: ignore[union-attr]
                "get", "node", NODE_NAME, "-o", "jsonpath={.status.allocatable.nvidia\\.com/gpu}").stdout.strip()
                == str(self.gpus))

    def _start_kube_proxy(self) -> None:
        assert self.cluster is not None
        self._spawn("kube-proxy", [
            find_tool("kube-proxy"), f"--kubeconfig={self.cluster.kubeconfig_path}",
            f"--hostname-override={NODE_NAME}", "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}",
            f"--bind-address={NODE_IP}", f"--healthz-bind-address=127.0.0.1:{PROXY_HEALTHZ_PORT}",
            f"--metrics-bind-address=127.0.0.1:{PROXY_METRICS_PORT}", f"--nodeport-addresses={NODE_IP}/32",
            "--iptables-localhost-nodeports=false",
            # Leave the host's conntrack sysctls alone.
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--v=1",
        ])
        self._await("kube-proxy", lambda: http_ok(f"http://127.0.0.1:{PROXY_HEALTHZ_PORT}/healthz"), 60)

    # ------------------------------------------------------------------ NetworkPolicy

    def start_network_policies(self) -> None:
        """Enforce NetworkPolicies on the pod bridge with kube-router's firewall alone (as
        k3s embeds it: iptables chains per pod and per policy, ipsets of the peers); its
        router and service proxy stay off, kube-proxy and the bridge keep their jobs. The
        bridge CNI enforces none by itself. Needs the ``ipset`` command (Debian ipset).
        """
        assert self.cluster is not None
        if "kube-router" in self.procs and self.procs["kube-router"].running:
            return
        if not shutil.which("ipset"):
            raise RealNodeError("ipset not on PATH (Debian package ipset): kube-router's firewall needs it")
        self._spawn("kube-router", [
            find_tool("kube-router"), f"--kubeconfig={self.cluster.kubeconfig_path}",
            f"--hostname-override={NODE_NAME}", "--run-firewall=true", "--run-router=false",
            "--run-service-proxy=false", "--enable-cni=false", "--enable-pod-egress=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}", f"--health-port={NETPOL_HEALTH_PORT}",
            "--metrics-port=0", "--v=1",
        ])
        # Healthy once its first sync ran; later policies reach the rules asynchronously, as
        # in any cluster, so callers wait for their effect.
        self._await("kube-router", lambda: http_ok(f"http://127.0.0.1:{NETPOL_HEALTH_PORT}/healthz"), 90)

    def stop_network_policies(self) -> None:
        """Stop kube-router and remove its chains, the jumps to them and its ipsets."""
        proc = self.procs.pop("kube-router", None)
        if proc is None:
            return
        proc.stop(grace=10)
        saved = _run("iptables-save", "-t", "filter", check=False).stdout.splitlines()
        chains = [line[1:].split()[0] for line in saved
                  if line.startswith(":") and line[1:].startswith(NETPOL_CHAIN_PREFIXES)]
        for line in saved:  # the jumps from the built-in chains
            parts = shlex.split(line)
            if parts[:1] == ["-A"] and parts[1] not in chains and "-j" in parts \
                    and parts[parts.index("-j") + 1] in chains:
                _run("iptables", "-t", "filter", "-D", *parts[1:], check=False)
        for chain in chains:
            _run("iptables", "-t", "filter", "-F", chain, check=False)
        for chain in chains:
            _run("iptables", "-t", "filter", "-X", chain, check=False)
        for name in _run("ipset", "list", "-n", check=False).stdout.split():
            if name.startswith(NETPOL_IPSET_PREFIXES):
                _run("ipset", "destroy", name, check=False)

    # ------------------------------------------------------------------ teardown

    def _delete_workloads(self) -> None:
        """Delete every pod through the API so the kubelet stops containers and tears down
        their networks itself; bounded, the forced clean-up below handles the rest."""
        if self.cluster is None or not self.cluster.server_url or "kubelet" not in self.procs \
                or not self.procs["kubelet"].running:
            return
        kubectl = self.cluster.kubectl
        for kind in ("deployments", "statefulsets", "daemonsets", "jobs", "replicasets"):
            kubectl("delete", kind, "--all", "--all-namespaces", "--wait=false", timeout=30)
        kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", timeout=30)
        kubectl("wait", "--for=delete", "pods", "--all", "--all-namespaces", "--timeout=60s", timeout=70)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in glob.glob("/sys/fs/cgroup/*/kubepods*/**/cgroup.procs", recursive=True) + \
                glob.glob("/sys/fs/cgroup/kubepods*/**/cgroup.procs", recursive=True):
            try:
                pids.update(int(p) for p in Path(procs).read_text().split())
            except (OSError, ValueError):
                pass
        return pids

    def _kill_containers(self) -> None:
        """Whatever container processes are left (a pod that would not die) are killed."""
        for pid in self._cgroup_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _kill_shims(self) -> None:
        for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                argv = Path(cmdline).read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.containerd_socket.encode() in argv:
                try:
                    os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
                except OSError:
                    pass
        # Empty pod cgroups, deepest first, so the next node starts clean.
        dirs = glob.glob("/sys/fs/cgroup/*/kubepods*/**/", recursive=True) + \
            glob.glob("/sys/fs/cgroup/kubepods*/**/", recursive=True)
        for d in sorted(dirs, key=len, reverse=True):
            try:
                os.rmdir(d)
            except OSError:
                pass

    def _unmount(self) -> None:
        prefix = str(self.workdir) + "/"
        targets = _run("findmnt", "-rn", "-o", "TARGET", check=False).stdout.splitlines()
        for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
            _run("umount", "-l", target, check=False)

    def _remove_hardcoded_paths(self) -> None:
        prefix = str(self.workdir) + "/"
        for link in glob.glob("/var/log/containers/*.log"):
            try:
                if os.readlink(link).startswith(prefix):
                    os.unlink(link)
            except OSError:
                pass
        shutil.rmtree("/var/lib/kubelet/device-plugins", ignore_errors=True)
        for d in ("/var/log/containers", "/var/lib/kubelet", "/var/log/pods", "/var/lib/cni/results",
                  "/var/lib/cni", "/run/containerd/s", "/run/containerd"):
            try:
                os.rmdir(d)
            except OSError:
                pass

    # ------------------------------------------------------------------ helpers

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, **kwargs)

    def api_client(self) -> Any:
        assert self.cluster is not None
        return self.cluster.api_client()

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def __repr__(self) -> str:
        return f"RealNode(node={NODE_NAME!r}, server={self.cluster.server_url if self.cluster else ''!r})"


if __name__ == "__main__":  # pragma: no cover - manual use: python -m harness.envtest.realnode
    import sys

    with RealNode(image_manifest(), crds=[REPO_ROOT / "crds"]) as node:
        print(f"export KUBECONFIG={node.cluster.kubeconfig_path}", file=sys.stderr)  # type: ignore[union-attr]
        print(node.startup_seconds, file=sys.stderr)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
