"""kubescribe as a user runs it: `helm install` on a real node, images from our Dockerfiles.

The node is a real kubelet on containerd + runc with CNI networking, kube-proxy and
CoreDNS (``harness/envtest/realnode.py``). The chart installs the operator and the in-chart
Redis from the images ``hack/build-images.sh`` built; runner pods are real containers from
the runner image, transcribing with the model baked into it. Both namespaces enforce the
``restricted`` Pod Security Standard, checked by the API server's own admission.

The tests share one release and run in file order; a test that needs other settings
upgrades the release (as a user would) and the next one sets what it needs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubescribe import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubescribe.store import Store, connect
from harness.envtest import REPO_ROOT, wait_for
from harness.envtest.helm import Helm
from harness.envtest.realnode import RealNode
from harness.speech import SENTENCES, wer, write_wav

pytestmark = [pytest.mark.kube, pytest.mark.realnode]

CHART = REPO_ROOT / "charts" / "kubescribe"
SYSTEM_NS = "kubescribe-system"
USER_NS = "transcribe"
RELEASE = "ks"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
#: Everything the chart's pods and the runner pods need to start on a 2-core node.
SMALL = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "2Gi"}}


def split_ref(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


@dataclass
class Release:
    node: RealNode
    helm: Helm
    values: dict[str, Any]
    redis_url: str  # reachable from the host through kube-proxy (the Service's ClusterIP)
    redis_password: str
    install_seconds: float

    def store(self) -> Store:
        return Store(connect(self.redis_url, self.redis_password))

    def upgrade(self, **changes: Any) -> None:
        """``helm upgrade`` with ``changes`` merged into the values; waits for the rollout."""
        values = json.loads(json.dumps(self.values))
        for dotted, value in changes.items():
            *path, leaf = dotted.split(".")
            node = values
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.helm.run("upgrade", RELEASE, str(CHART), "-n", SYSTEM_NS, "-f", self.helm.values_file(values),
                      "--wait", "--timeout=5m")
        self.values = values
        self.wait_operator_ready()

    def wait_operator_ready(self) -> dict:
        """The operator pod of the newest ReplicaSet, Ready through its probes."""
        def ready() -> dict | None:
            pods = kubectl_json(self.node, "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator")
            live = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
            if len(live) != 1:
                return None
            conds = {c["type"]: c["status"] for c in live[0]["status"].get("conditions") or []}
            return live[0] if conds.get("Ready") == "True" else None

        return wait_for(ready, timeout=180, interval=0.5, description="operator pod Ready")


def kubectl_json(node: RealNode, *args: str) -> dict:
    proc = node.kubectl(*args, "-o", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def create_namespace(node: RealNode, name: str) -> None:
    labels = ",".join(f"{k}={v}" for k, v in RESTRICTED.items())
    node.kubectl("create", "namespace", name, check=True)
    node.kubectl("label", "namespace", name, *labels.split(","), "--overwrite", check=True)
    wait_for(lambda: node.kubectl("get", "serviceaccount", "default", "-n", name).returncode == 0,
             timeout=60, description=f"ServiceAccount {name}/default")


@pytest.fixture(scope="module")
def release(real_node: RealNode, tmp_path_factory) -> Any:
    for ns in (SYSTEM_NS, USER_NS):
        create_namespace(real_node, ns)
    images = real_node.images
    op_repo, op_tag = split_ref(images["operator"])
    run_repo, run_tag = split_ref(images["runner"])
    redis_repo, redis_tag = split_ref(images["redis"])
    values = {
        "operator": {"image": {"repository": op_repo, "tag": op_tag}, "gpuBudget": 2,
                     "resyncSeconds": 3, "resources": SMALL},
        "runner": {"image": {"repository": run_repo, "tag": run_tag}, "resources": SMALL,
                   "imagePullGraceSeconds": 20},
        "redis": {"internal": {"enabled": True, "image": {"repository": redis_repo, "tag": redis_tag},
                               "resources": SMALL, "maxmemory": "256mb"}},
    }
    helm = Helm(real_node.cluster, workdir=tmp_path_factory.mktemp("helm"))
    t0 = time.monotonic()
    helm.run("install", RELEASE, str(CHART), "-n", SYSTEM_NS, "-f", helm.values_file(values),
             "--wait", "--timeout=5m")
    rel = Release(real_node, helm, values, "", "", 0.0)
    rel.wait_operator_ready()
    rel.install_seconds = time.monotonic() - t0
    svc = kubectl_json(real_node, "get", "service", f"{RELEASE}-kubescribe-redis", "-n", SYSTEM_NS)
    secret = kubectl_json(real_node, "get", "secret", f"{RELEASE}-kubescribe-redis", "-n", SYSTEM_NS)
    rel.redis_url = f"redis://{svc['spec']['clusterIP']}:6379/0"
    rel.redis_password = base64.b64decode(secret["data"]["redis-password"]).decode()
    # As the README says for cluster-wide installs with a password: the runner pods read it
    # from a Secret of the same name in their own namespace.
    copy = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": secret["data"],
            "metadata": {"name": secret["metadata"]["name"], "namespace": USER_NS}}
    real_node.kubectl("apply", "-f", "-", input=json.dumps(copy), check=True)
    print(f"\nhelm install -> operator Ready: {rel.install_seconds:.1f}s")
    yield rel
    helm.run("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout=2m", check=False)
    helm.close()


def request_body(name: str, spec: dict[str, Any]) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": USER_NS}, "spec": spec}


def create_request(rel: Release, name: str, spec: dict[str, Any]) -> None:
    proc = rel.node.kubectl("apply", "-f", "-", input=json.dumps(request_body(name, spec)))
    assert proc.returncode == 0, proc.stderr


def status_of(rel: Release, name: str) -> dict:
    return kubectl_json(rel.node, "get", f"{PLURAL}.{GROUP}", name, "-n", USER_NS).get("status") or {}


def wait_phase(rel: Release, name: str, *phases: str, timeout: float = 300) -> dict:
    return wait_for(lambda: (lambda s: s if s.get("phase") in phases else None)(status_of(rel, name)),
                    timeout=timeout, interval=0.5, description=f"{name} in {'/'.join(phases)}")


def job_pods(rel: Release, job: str, namespace: str = USER_NS) -> list[dict]:
    return kubectl_json(rel.node, "get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}")["items"]


def jobs_of(rel: Release, name: str) -> list[dict]:
    uid = kubectl_json(rel.node, "get", f"{PLURAL}.{GROUP}", name, "-n", USER_NS)["metadata"]["uid"]
    items = kubectl_json(rel.node, "get", "jobs", "-n", USER_NS)["items"]
    return [j for j in items if any(o.get("uid") == uid for o in j["metadata"].get("ownerReferences") or [])]


def upload(rel: Release, path: Path) -> str:
    return rel.store().put_audio(path.read_bytes())


@pytest.fixture(scope="module")
def long_speech(speech_dir: Path, tmp_path_factory) -> Path:
    """About 40 s of speech: long enough that a runner is still busy when a test kills it."""
    import wave

    chunks = []
    for name in ("fox", "weather", "library") * 3:
        with wave.open(str(speech_dir / f"{name}.wav")) as w:
            chunks.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767)
            chunks.append(np.zeros(8000, dtype=np.float32))
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav", np.concatenate(chunks))


# ------------------------------------------------------------------------------ the node


def test_runner_image_pods_start_restricted_on_the_real_node(real_node: RealNode):
    """Ten pods from the runner image under the restricted profile: all run, as uid 10001,
    with seccomp on and no capabilities; prints create -> Running p50/p90."""
    ns = f"pods-{uuid.uuid4().hex[:6]}"
    create_namespace(real_node, ns)
    names = [f"p{i}" for i in range(10)]
    created: dict[str, float] = {}
    for name in names:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
               "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": real_node.images["runner"],
                                        "command": ["python", "-c",
                                                    "import os,time; print(os.getuid(), open('/proc/self/status').read()"
                                                    ".split('Seccomp:')[1].split()[0], flush=True); time.sleep(30)"],
                                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                                        "securityContext": {"allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}}}]}}
        created[name] = time.monotonic()
        real_node.kubectl("apply", "-f", "-", input=json.dumps(pod), check=True)
    started: dict[str, float] = {}

    def all_running() -> bool:
        for p in kubectl_json(real_node, "get", "pods", "-n", ns)["items"]:
            if p["status"].get("phase") == "Running":
                started.setdefault(p["metadata"]["name"], time.monotonic())
        return len(started) == len(names)

    wait_for(all_running, timeout=180, interval=0.2, description="10 runner-image pods Running")
    latencies = sorted(started[n] - created[n] for n in names)
    print(f"\npod create -> Running over {len(latencies)} pods: p50 {latencies[4]:.1f}s p90 {latencies[8]:.1f}s")
    logs = wait_for(lambda: real_node.kubectl("logs", "-n", ns, "p0", timeout=30).stdout.split(), timeout=60,
                    description="p0 logs")
    assert logs == ["10001", "2"]  # the image's user; seccomp mode 2 (filter) = RuntimeDefault applied
    real_node.kubectl("delete", "namespace", ns, "--wait=false")


# ------------------------------------------------------------------------------ install


def test_helm_install_runs_the_operator_from_the_built_image_through_its_probes(release: Release):
    pod = release.wait_operator_ready()
    container = pod["spec"]["containers"][0]
    assert container["image"] == release.node.images["operator"]
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0
    # Restricted: non-root, read-only root filesystem, the ServiceAccount token mounted by
    # the kubelet (in-cluster config talks to the API server through the kubernetes Service).
    exec_ = release.node.kubectl("exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--", "python", "-c",
                                 "import os; print(os.getuid()); open('/x','w')", timeout=60)
    assert exec_.stdout.split()[0] == "10001"
    assert "Read-only file system" in exec_.stderr
    token = release.node.kubectl("exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--", "ls",
                                 "/var/run/secrets/kubernetes.io/serviceaccount/", timeout=60)
    assert "token" in token.stdout.split()
    logs = release.node.kubectl("logs", "-n", SYSTEM_NS, pod["metadata"]["name"], timeout=60).stdout
    assert "kubescribe operator: budget=2 mode=job" in logs


def test_the_namespaces_really_enforce_the_restricted_profile(release: Release):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": USER_NS},
           "spec": {"containers": [{"name": "c", "image": release.node.images["operator"],
                                    "securityContext": {"privileged": True}}]}}
    proc = release.node.kubectl("apply", "-f", "-", input=json.dumps(pod))
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr and "restricted" in proc.stderr


# ------------------------------------------------------------------------------ requests


def test_submit_wait_from_the_host_runs_a_real_runner_pod_with_the_baked_in_model(release: Release, speech_dir: Path):
    env = dict(os.environ, KUBESCRIBE_REDIS_PASSWORD=release.redis_password)
    name = f"fox-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kubescribe.cli", "submit", str(speech_dir / "fox.wav"), "--name", name,
         "-n", USER_NS, "--kubeconfig", release.node.cluster.kubeconfig_path, "--redis", release.redis_url,
         "--wait", "--timeout", "300"],
        capture_output=True, text=True, env=env, timeout=330)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert wer(SENTENCES["fox"], proc.stdout) <= 0.25, proc.stdout
    print(f"\nsubmit --wait on the real node: {elapsed:.1f}s")

    status = status_of(release, name)
    assert status["phase"] == "Succeeded" and status["cached"] is False and status["attempts"] == 1
    pods = job_pods(release, status["jobName"])
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["containers"][0]["image"] == release.node.images["runner"]
    assert pod["spec"]["nodeName"] == "kubescribe-node"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    summary = json.loads(terminated["message"])  # the runner's termination message, via the kubelet
    assert summary["ok"] is True and summary["language"] == "en"
    logs = release.node.kubectl("logs", "-n", USER_NS, pod["metadata"]["name"], timeout=60)
    assert "tiny.en" in logs.stdout + logs.stderr


def test_a_repeat_is_answered_from_the_cache_without_a_pod(release: Release, speech_dir: Path):
    key = upload(release, speech_dir / "fox.wav")
    create_request(release, "fox-again", {"audio": {"redisKey": key}})
    status = wait_phase(release, "fox-again", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["cached"] is True
    assert jobs_of(release, "fox-again") == []


@pytest.fixture
def audio_server(release: Release, speech_dir: Path):
    """An HTTP server pod in the cluster serving weather.wav, behind a Service."""
    wav = (speech_dir / "weather.wav").read_bytes()
    manifests = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "audio", "namespace": USER_NS},
         "binaryData": {"weather.wav": base64.b64encode(wav).decode()}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "audio", "namespace": USER_NS, "labels": {"app": "audio"}},
         "spec": {
             "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
             "terminationGracePeriodSeconds": 1,
             "containers": [{
                 "name": "http", "image": release.node.images["operator"],
                 "command": ["python", "-m", "http.server", "8000", "--directory", "/audio"],
                 "ports": [{"containerPort": 8000, "name": "http"}],
                 "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                 "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "audio", "mountPath": "/audio"}],
             }],
             "volumes": [{"name": "audio", "configMap": {"name": "audio"}}],
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "audio", "namespace": USER_NS},
         "spec": {"selector": {"app": "audio"}, "ports": [{"port": 80, "targetPort": "http"}]}},
    ]
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    proc = release.node.kubectl("apply", "-f", "-", input=as_list)
    assert proc.returncode == 0, proc.stderr
    release.node.kubectl("wait", "--for=condition=Ready", "pod/audio", "-n", USER_NS, "--timeout=120s", check=True,
                         timeout=130)
    yield f"http://audio.{USER_NS}.svc/weather.wav"
    release.node.kubectl("delete", "-f", "-", "--wait=false", input=as_list)


def test_an_audio_url_served_by_a_pod_is_fetched_through_service_dns(release: Release, audio_server: str):
    create_request(release, "from-url", {"audio": {"url": audio_server}})
    status = wait_phase(release, "from-url", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    text = release.store().read_result_key(status["resultKey"])["text"]
    assert wer(SENTENCES["weather"], text) <= 0.25, text


@pytest.mark.parametrize("url, refused", [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("https://kubernetes.default.svc/api", "API server"),
])
def test_the_runner_refuses_urls_that_reach_metadata_or_the_api_server(release: Release, url: str, refused: str):
    name = f"refused-{uuid.uuid4().hex[:6]}"
    create_request(release, name, {"audio": {"url": url}})
    status = wait_phase(release, name, "Failed", "Succeeded")
    assert status["phase"] == "Failed" and status["reason"] == "AudioURLForbidden", status
    assert refused in status["message"]
    assert status["attempts"] == 1  # final: the Job's podFailurePolicy does not retry it


# ------------------------------------------------------------------------------ faults


def test_deleting_the_operator_pod_mid_request_leaves_one_job_and_one_result(release: Release, long_speech: Path):
    key = upload(release, long_speech)
    create_request(release, "survives-operator", {"audio": {"redisKey": key}})
    wait_phase(release, "survives-operator", "Running")
    old = release.wait_operator_ready()["metadata"]["name"]
    release.node.kubectl("delete", "pod", old, "-n", SYSTEM_NS, "--wait=false", check=True)
    new = wait_for(lambda: (lambda p: p if p["metadata"]["name"] != old else None)(release.wait_operator_ready()),
                   timeout=180, interval=0.5, description="a replacement operator pod")
    assert new["metadata"]["name"] != old
    status = wait_phase(release, "survives-operator", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert len(jobs_of(release, "survives-operator")) == 1


def test_deleting_a_running_runner_pod_retries_and_gives_one_result(release: Release, long_speech: Path):
    store = release.store()
    key = upload(release, long_speech)
    create_request(release, "loses-pod", {"audio": {"redisKey": key}, "beamSize": 4})
    job = wait_phase(release, "loses-pod", "Running")["jobName"]

    def running_pod() -> str | None:
        for p in job_pods(release, job):
            for cs in p["status"].get("containerStatuses") or []:
                if cs["state"].get("running"):
                    return p["metadata"]["name"]
        return None

    first = wait_for(running_pod, timeout=180, interval=0.2, description="runner container running")
    release.node.kubectl("delete", "pod", first, "-n", USER_NS, "--grace-period=1", "--wait=false", check=True)
    status = wait_phase(release, "loses-pod", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    succeeded = [p["metadata"]["name"] for p in job_pods(release, job) if p["status"].get("phase") == "Succeeded"]
    assert len(succeeded) == 1 and succeeded != [first], succeeded  # a second pod did the work
    assert len(jobs_of(release, "loses-pod")) == 1
    results = [k for k in store.client.scan_iter("kubescribe:result:*")]
    assert status["resultKey"].encode() in results or status["resultKey"] in results


def test_a_missing_runner_image_fails_naming_the_image_in_bounded_time(release: Release, speech_dir: Path):
    repo, _ = split_ref(release.node.images["runner"])
    release.upgrade(**{"runner.image.tag": "does-not-exist"})
    key = upload(release, speech_dir / "library.wav")
    t0 = time.monotonic()
    create_request(release, "bad-image", {"audio": {"redisKey": key}})
    status = wait_phase(release, "bad-image", "Failed", "Succeeded", timeout=180)
    assert status["phase"] == "Failed" and status["reason"] == "ImagePullFailed", status
    assert f"{repo}:does-not-exist" in status["message"]
    print(f"\nmissing image -> Failed in {time.monotonic() - t0:.1f}s")
    wait_for(lambda: jobs_of(release, "bad-image") == [], timeout=60, description="the stuck Job deleted")


def test_a_runner_over_its_memory_limit_ends_failed_oomkilled(release: Release, speech_dir: Path):
    release.upgrade(**{"runner.image.tag": split_ref(release.node.images["runner"])[1],
                       "runner.resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                                            "limits": {"memory": "48Mi"}}})
    key = upload(release, speech_dir / "weather.wav")
    create_request(release, "oom", {"audio": {"redisKey": key}, "retries": 0, "beamSize": 3})
    status = wait_phase(release, "oom", "Failed", "Succeeded", timeout=240)
    assert status["phase"] == "Failed" and status["reason"] == "OOMKilled", status


def test_pool_mode_runs_warm_runners_as_real_pods(release: Release, speech_dir: Path):
    release.upgrade(**{"runner.resources": SMALL, "operator.mode": "pool"})
    names = []
    for sentence in ("fox", "weather", "library"):
        key = upload(release, speech_dir / f"{sentence}.wav")
        name = f"pool-{sentence}"
        # Transcribed afresh although earlier tests cached the same audio.
        create_request(release, name, {"audio": {"redisKey": key}, "cache": {"enabled": False}})
        names.append((name, sentence))
    for name, sentence in names:
        status = wait_phase(release, name, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded" and status["cached"] is False, status
        text = release.store().read_result_key(status["resultKey"])["text"]
        assert wer(SENTENCES[sentence], text) <= 0.25, text
    pool_pods = kubectl_json(release.node, "get", "pods", "-n", SYSTEM_NS, "-l", "kubescribe.io/pool")["items"]
    assert pool_pods, "no pooled runner pod ran"
    assert all(p["spec"]["containers"][0]["image"] == release.node.images["runner"] for p in pool_pods)
    assert len(pool_pods) < len(names) + 1  # warm runners took several requests


# ------------------------------------------------------------------------------ the gateway


def test_the_gateway_from_the_chart_answers_openai_and_curl_with_a_service_account_token(
        release: Release, speech_dir: Path):
    """`gateway.enabled`: the gateway Deployment runs from the operator image on the real
    node; a ServiceAccount token of the user namespace is checked by the in-cluster
    TokenReview and SubjectAccessReview; the official openai client (pod IP) and curl
    (Service IP, through kube-proxy) get the words back."""
    import openai

    release.upgrade(**{"operator.mode": "job", "gateway.enabled": True, "gateway.replicas": 1,
                       "gateway.resources": SMALL})
    pods = wait_for(lambda: [p for p in kubectl_json(release.node, "get", "pods", "-n", SYSTEM_NS, "-l",
                                                     "app.kubernetes.io/component=gateway")["items"]
                             if {c["type"]: c["status"] for c in p["status"].get("conditions") or []}.get("Ready")
                             == "True"], timeout=180, interval=0.5, description="gateway pod Ready")
    pod = pods[0]
    assert pod["spec"]["containers"][0]["image"] == release.node.images["operator"]
    assert pod["spec"]["containers"][0]["command"] == ["kubescribe-gateway"]
    node = release.node
    node.kubectl("create", "serviceaccount", "app", "-n", USER_NS, check=True)
    node.kubectl("create", "role", "transcribe", "-n", USER_NS, "--verb=create,get",
                 "--resource=transcriptionrequests.kubescribe.io", check=True)
    node.kubectl("create", "rolebinding", "app-transcribe", "-n", USER_NS, "--role=transcribe",
                 f"--serviceaccount={USER_NS}:app", check=True)
    node.kubectl("create", "serviceaccount", "stranger", "-n", USER_NS, check=True)
    token = node.kubectl("create", "token", "app", "-n", USER_NS, check=True).stdout.strip()
    stranger = node.kubectl("create", "token", "stranger", "-n", USER_NS, check=True).stdout.strip()

    client = openai.OpenAI(base_url=f"http://{pod['status']['podIP']}:8000/v1", api_key=token, max_retries=0,
                           timeout=300)
    t0 = time.monotonic()
    with (speech_dir / "weather.wav").open("rb") as f:
        first = client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
    print(f"\nopenai client -> gateway pod -> runner pod -> words: {time.monotonic() - t0:.1f}s")
    assert wer(SENTENCES["weather"], first.text) <= 0.25, first.text
    with (speech_dir / "weather.wav").open("rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "weather" in srt.lower()

    svc = kubectl_json(node, "get", "service", f"{RELEASE}-kubescribe-gateway", "-n", SYSTEM_NS)
    url = f"http://{svc['spec']['clusterIP']}:80/v1/audio/transcriptions"
    curl = ["curl", "-sS", url, "-F", f"file=@{speech_dir / 'library.wav'}", "-F", "model=whisper-1",
            "-F", "response_format=text", "-w", "\n%{http_code}"]
    ok = subprocess.run([*curl, "-H", f"Authorization: Bearer {token}"], capture_output=True, text=True, timeout=330)
    text, code = ok.stdout.rsplit("\n", 1)
    assert code == "200" and wer(SENTENCES["library"], text) <= 0.25, ok.stdout + ok.stderr
    refused = subprocess.run([*curl, "-H", f"Authorization: Bearer {stranger}"], capture_output=True, text=True,
                             timeout=60)
    body, code = refused.stdout.rsplit("\n", 1)
    assert code == "403" and "may not create transcriptionrequests" in json.loads(body)["error"]["message"]
    anonymous = subprocess.run(curl, capture_output=True, text=True, timeout=60)
    assert anonymous.stdout.rsplit("\n", 1)[1] == "401"


def test_one_request_on_tiny_en_and_one_on_base_from_the_models_volume(release: Release, speech_dir: Path):
    """The base model (the test setup's copy) on a models PersistentVolume (hostPath, bound to
    a claim in the runners' namespace) that the chart mounts read-only into runner pods; one
    request on the baked-in tiny.en and one on base, in Spanish, each in its own runner pod."""
    import shutil
    import tempfile

    from harness.speech import speak
    from tests.test_multilingual import CAFE, models_dir

    host = Path(tempfile.mkdtemp(prefix="kubescribe-models-"))
    shutil.copytree(models_dir() / "base", host / "base")
    for p in (host, host / "base", *(host / "base").iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the runner's non-root user reads them
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "kubescribe-test-models"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(host), "type": "Directory"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": USER_NS},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "kubescribe-test-models",
                    "resources": {"requests": {"storage": "1Gi"}}}}
    for obj in (pv, pvc):
        release.node.kubectl("apply", "-f", "-", input=json.dumps(obj), check=True)
    try:
        release.upgrade(**{"operator.mode": "job", "runner.modelCache.existingClaim": "models"})
        spanish = speak(CAFE["es"][1], host.parent / f"{host.name}-es.wav", speed=150, voice="es")
        create_request(release, "on-base", {"audio": {"redisKey": upload(release, spanish)}, "model": "base"})
        create_request(release, "on-tiny", {"audio": {"redisKey": upload(release, speech_dir / "library.wav")},
                                            "model": "tiny.en", "cache": {"enabled": False}})
        for name, lang, reference in (("on-base", "es", CAFE["es"][1]), ("on-tiny", "en", SENTENCES["library"])):
            status = wait_phase(release, name, "Succeeded", "Failed")
            assert status["phase"] == "Succeeded" and status["language"] == lang, status
            result = release.store().read_result_key(status["resultKey"])
            assert result["model"] == ("base" if lang == "es" else "tiny.en")
            assert wer(reference, result["text"]) <= 0.25, result["text"]
            assert len(job_pods(release, status["jobName"])) == 1
    finally:
        release.upgrade(**{"runner.modelCache.existingClaim": ""})
        release.node.kubectl("delete", "pvc", "models", "-n", USER_NS, "--wait=false")
        release.node.kubectl("delete", "pv", "kubescribe-test-models", "--wait=false")


# ------------------------------------------------------------------------------ notifications

#: A webhook receiver as a user would run one: a pod that prints every POST it gets (path,
#: headers, body) as one JSON line, for the test to read back with ``kubectl logs``.
RECEIVER = r"""
import base64, http.server, json
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": base64.b64encode(body).decode()}), flush=True)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("", 8080), Hook).serve_forever()  # one at a time: one line per POST
"""
OWN_KEY = "whsec_" + base64.b64encode(b"kubescribe-real-node-request-key").decode()
INSTALL_KEY = "whsec_" + base64.b64encode(b"kubescribe-real-node-install-key").decode()


def received_by(rel: Release, pod: str) -> list[dict]:
    proc = rel.node.kubectl("logs", pod, "-n", USER_NS, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def notified(rel: Release, name: str, sinks: set[str]) -> dict:
    def done() -> dict | None:
        status = status_of(rel, name)
        states = {r["sink"]: r["state"] for r in status.get("notifications") or []}
        return status if all(states.get(s) == "Delivered" for s in sinks) else None

    return wait_for(done, timeout=300, interval=0.5, description=f"{name} delivered to {sorted(sinks)}")


def test_a_receiver_pod_behind_a_service_gets_signed_cloudevents_from_the_operator_pod(
        release: Release, speech_dir: Path):
    """`spec.notify` with a Secret in the request's namespace (notifications.readSigningSecrets)
    and an install-wide sink (notifications.sinks, signed with notifications.signingSecret),
    both a receiver pod reached through its Service's DNS name from the operator's pod: one
    Succeeded and one Failed request, each event verified with standardwebhooks and parsed
    with the cloudevents SDK, as the README's receiver does."""
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event
    from standardwebhooks import Webhook, WebhookVerificationError

    release.node.kubectl("create", "secret", "generic", "hook", "-n", USER_NS, f"--from-literal=key={OWN_KEY}",
                         check=True)
    release.node.kubectl("create", "secret", "generic", "ks-notify", "-n", SYSTEM_NS,
                         f"--from-literal=key={INSTALL_KEY}", check=True)
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    manifests = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "receiver", "namespace": USER_NS,
                                                          "labels": {"app": "receiver"}},
         "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}},
                  "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "hook", "image": release.node.images["operator"],
                                  "command": ["python", "-c", RECEIVER],
                                  "ports": [{"containerPort": 8080, "name": "http"}],
                                  "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                  "securityContext": restricted}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "receiver", "namespace": USER_NS},
         "spec": {"selector": {"app": "receiver"}, "ports": [{"port": 80, "targetPort": "http"}]}},
    ]
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    proc = release.node.kubectl("apply", "-f", "-", input=as_list)
    assert proc.returncode == 0, proc.stderr
    try:
        release.node.kubectl("wait", "--for=condition=Ready", "pod/receiver", "-n", USER_NS, "--timeout=120s",
                             check=True, timeout=130)
        own, install = f"http://receiver.{USER_NS}.svc/own", f"http://receiver.{USER_NS}.svc/install"
        release.upgrade(**{"notifications.readSigningSecrets": True, "notifications.sinks": [{"url": install}],
                           "notifications.signingSecret.name": "ks-notify"})
        notify = [{"url": own, "signingSecretRef": {"name": "hook", "key": "key"}}]
        create_request(release, "told", {"audio": {"redisKey": upload(release, speech_dir / "fox.wav")},
                                         "notify": notify})
        create_request(release, "told-lost", {"audio": {"redisKey": "kubescribe:audio:" + "7" * 64},
                                              "notify": notify})
        ok = notified(release, "told", {own, install})
        lost = notified(release, "told-lost", {own, install})
        assert ok["phase"] == "Succeeded" and lost["phase"] == "Failed", (ok.get("reason"), ok.get("message"))
        assert {c["type"]: c["status"] for c in ok["conditions"]}["Notified"] == "True"

        events = {}
        for post in received_by(release, "receiver"):
            body = base64.b64decode(post["body"])
            Webhook(OWN_KEY if post["path"] == "/own" else INSTALL_KEY).verify(body, post["headers"], json_parse=False)
            event = from_http_event(HTTPMessage(post["headers"], body))
            assert event.get_id() == post["headers"]["webhook-id"]
            assert event.get_source() == f"/apis/{GROUP}/{VERSION}/namespaces/{USER_NS}/{PLURAL}"
            if event.get_subject() in ("told", "told-lost"):  # the install-wide sink hears every request
                events[(post["path"], event.get_subject())] = (event.get_type(), event.get_data())
        assert set(events) == {(p, n) for p in ("/own", "/install") for n in ("told", "told-lost")}, sorted(events)
        for path in ("/own", "/install"):
            kind, data = events[(path, "told")]
            data = json.loads(data) if isinstance(data, (bytes, str)) else data
            assert kind == "io.kubescribe.transcription.succeeded" and data["phase"] == "Succeeded"
            assert wer(SENTENCES["fox"], data["textPreview"]) <= 0.25, data
            kind, data = events[(path, "told-lost")]
            data = json.loads(data) if isinstance(data, (bytes, str)) else data
            assert kind == "io.kubescribe.transcription.failed" and data["reason"] == "AudioNotFound", data
        # A tampered body does not verify.
        post = next(p for p in received_by(release, "receiver") if p["path"] == "/own")  # told or told-lost
        tampered = base64.b64decode(post["body"]).replace(b"told", b"toad")
        with pytest.raises(WebhookVerificationError):
            Webhook(OWN_KEY).verify(tampered, post["headers"], json_parse=False)
    finally:
        release.node.kubectl("delete", "-f", "-", "--wait=false", input=as_list)


def test_object_storage_s3_audio_and_spec_output_on_the_real_node(release: Release, speech_dir: Path, tmp_path: Path):
    """`helm upgrade` with storage.s3 pointing at a real S3 server (versitygw on the node's
    bridge address, which pods reach); a runner pod reads `s3://` audio with the Secret's
    credentials, keeps the transcript in the install's bucket and writes `spec.output`.
    Last in the module: the release keeps its object store from here on."""
    from harness.envtest.realnode import NODE_IP
    from harness.envtest.s3 import S3Server

    s3 = S3Server(tmp_path / "s3", host=NODE_IP).start()
    try:
        client = s3.client()
        s3.create_bucket("transcripts")
        s3.create_bucket("media")
        client.put_object(Bucket="media", Key="in/fox.wav", Body=(speech_dir / "fox.wav").read_bytes())
        for ns in (SYSTEM_NS, USER_NS):
            release.node.kubectl("create", "secret", "generic", "s3-creds", "-n", ns,
                                 f"--from-literal=access-key-id={s3.access_key}",
                                 f"--from-literal=secret-access-key={s3.secret_key}", check=True)
        release.upgrade(**{"storage.s3.bucket": "transcripts", "storage.s3.endpoint": s3.endpoint,
                           "storage.s3.pathStyle": True, "storage.s3.existingSecret": "s3-creds"})

        create_request(release, "from-bucket", {"audio": {"url": "s3://media/in/fox.wav"}, "formats": ["srt"],
                                                "output": {"s3": {"bucket": "media", "prefix": "out/"}}})
        status = wait_phase(release, "from-bucket", "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", status
        assert status["outputs"] == [f"s3://media/out/{USER_NS}/from-bucket.json",
                                     f"s3://media/out/{USER_NS}/from-bucket.srt"]
        srt = client.get_object(Bucket="media", Key=f"out/{USER_NS}/from-bucket.srt")["Body"].read().decode()
        assert srt.startswith("1\n00:00:00,000 --> ")
        assert wer(SENTENCES["fox"], json.loads(
            client.get_object(Bucket="media", Key=f"out/{USER_NS}/from-bucket.json")["Body"].read())["text"]) <= 0.25

        prefix = f"kubescribe/{SYSTEM_NS}/{RELEASE}/"
        kept = [o["Key"] for o in client.list_objects_v2(Bucket="transcripts", Prefix=prefix).get("Contents", [])]
        assert f"{prefix}results/{status['cacheKey']}/result.json.gz" in kept, kept
        release.store().client.flushall()  # the cache forgets; the bucket does not
        proc = release.node.kubectl("delete", f"{PLURAL}.{GROUP}", "from-bucket", "-n", USER_NS)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: not client.list_objects_v2(Bucket="transcripts", Prefix=f"{prefix}results/").get("Contents"),
                 timeout=120, description="the transcript deleted with its request")
    finally:
        s3.close()
