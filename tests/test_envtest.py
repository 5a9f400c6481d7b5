"""The test environment itself: each part is real and does what the other tests rely on."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from harness.envtest import ToolNotFoundError, find_tool, free_port, tool_dirs, wait_for
from harness.envtest.cluster import ClusterStartError, KubeCluster
from harness.envtest.kubelet import FakeKubelet
from harness.envtest.prometheus import promtool_check_config, promtool_check_rules

pytestmark = pytest.mark.kube

GROUP = "envtest.kubescribe.io"
WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {{status: {{}}}}
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [replicas]
              x-kubernetes-validations:
                - rule: "!has(self.maxReplicas) || self.maxReplicas >= self.replicas"
                  message: maxReplicas must be at least replicas
              properties:
                replicas: {{type: integer, minimum: 1}}
                maxReplicas: {{type: integer}}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""


# --------------------------------------------------------------------------- helpers


def _status_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except Exception:
        return str(exc.body)


def _job(name: str, command: list[str], **spec: Any) -> dict:
    container: dict[str, Any] = {"name": "main", "image": "kubescribe-runner:test"}
    if command:
        container["command"] = command
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": spec.pop("backoffLimit", 0),
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            **spec,
        },
    }


def _job_conditions(batch: client.BatchV1Api, ns: str, name: str) -> dict[str, dict]:
    job = batch.read_namespaced_job_status(name, ns)
    return {c.type: c.to_dict() for c in (job.status.conditions or []) if c.status == "True"}


def _wait_job_condition(batch: client.BatchV1Api, ns: str, name: str, cond: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: _job_conditions(batch, ns, name).get(cond),
        timeout=timeout,
        description=f"Job {ns}/{name} condition {cond}",
    )


def _job_pods(core: client.CoreV1Api, ns: str, name: str) -> list[dict]:
    resp = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}", _preload_content=False)
    return json.loads(resp.data)["items"]


def _terminated(pod: dict) -> Optional[dict]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0]["state"].get("terminated") if statuses else None


@pytest.fixture(scope="module")
def widget_crd(kube_cluster: KubeCluster, kube_api: Any) -> Any:
    """The Widget CRD, installed with the real kubectl and Established."""
    kube_cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD, check=True)
    ext = client.ApiextensionsV1Api(kube_api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"widgets.{GROUP}")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=30, description="Widget CRD Established")
    yield f"widgets.{GROUP}"
    kube_cluster.kubectl("delete", "crd", f"widgets.{GROUP}", "--wait=false")


# --------------------------------------------------------------------------- binaries


def test_missing_binary_fails_with_build_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBESCRIBE_TOOLS_PATH", str(tmp_path))
    tool_dirs.cache_clear()
    try:
        with pytest.raises(ToolNotFoundError, match="hack/build-test-binaries.sh"):
            find_tool("kube-apiserver")
    finally:
        monkeypatch.undo()
        tool_dirs.cache_clear()
    assert Path(find_tool("kube-apiserver")).is_file()


def test_startup_failure_reports_the_component_log() -> None:
    cluster = KubeCluster(controllers=(), apiserver_args=["--no-such-flag"])
    workdir = cluster.workdir
    with pytest.raises(ClusterStartError, match="no-such-flag"):
        cluster.start()
    assert cluster.etcd is not None and not cluster.etcd.running
    assert not workdir.exists()


# --------------------------------------------------------------------------- API server


def test_api_server_enforces_crd_schema_and_cel_rules(widget_crd: str, kube_api: Any, kube_namespace: str) -> None:
    custom = client.CustomObjectsApi(kube_api)

    def widget(name: str, **spec: Any) -> dict:
        return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}

    created = custom.create_namespaced_custom_object(GROUP, "v1", kube_namespace, "widgets", widget("good", replicas=2, maxReplicas=3))
    assert created["metadata"]["uid"]

    cases = {
        "below-minimum": (widget("below-minimum", replicas=0), "should be greater than or equal to 1"),
        "missing": (widget("missing"), "spec.replicas: Required value"),
        "cel": (widget("cel", replicas=3, maxReplicas=1), "maxReplicas must be at least replicas"),
    }
    for name, (body, expected) in cases.items():
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(GROUP, "v1", kube_namespace, "widgets", body)
        assert info.value.status == 422, name
        assert expected in _status_message(info.value), name

    listed = custom.list_namespaced_custom_object(GROUP, "v1", kube_namespace, "widgets")
    assert [w["metadata"]["name"] for w in listed["items"]] == ["good"]


def test_kubectl_and_service_account_kubeconfig_enforce_rbac(kube_cluster: KubeCluster, kube_api: Any, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(ns, {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    })
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    })
    kubeconfig = kube_cluster.service_account_kubeconfig(ns, "reader")

    who = kube_cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig, check=True)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
    assert kube_cluster.kubectl("get", "configmaps", kubeconfig=kubeconfig).returncode == 0
    denied = kube_cluster.kubectl("get", "secrets", kubeconfig=kubeconfig)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr

    sa_api = config.new_client_from_config(config_file=kubeconfig)
    try:
        sa_core = client.CoreV1Api(sa_api)
        sa_core.list_namespaced_config_map(ns)
        with pytest.raises(ApiException) as info:
            sa_core.list_namespaced_config_map("default")
        assert info.value.status == 403
    finally:
        sa_api.close()


# --------------------------------------------------------------------------- helm


def test_helm_lint_install_and_uninstall(helm: Any, kube_api: Any, kube_namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "envtest-chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(textwrap.dedent("""\
        apiVersion: v2
        name: envtest-chart
        description: A one-ConfigMap chart that proves helm works against the test cluster.
        type: application
        version: 0.1.0
        appVersion: "1.0.0"
        icon: https://kubescribe.io/icon.png
    """))
    (chart / "values.yaml").write_text("# -- What the ConfigMap says.\ngreeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-greeting
          labels:
            app.kubernetes.io/name: {{ .Chart.Name }}
            app.kubernetes.io/instance: {{ .Release.Name }}
            app.kubernetes.io/managed-by: {{ .Release.Service }}
            helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
        data:
          greeting: {{ .Values.greeting | quote }}
          kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
    """))

    lint = helm.lint(chart, strict=True)
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    docs = helm.template_docs("offline", chart, namespace=kube_namespace, values={"greeting": "hey"})
    assert docs[0]["data"]["greeting"] == "hey"

    helm.install("envtest", chart, kube_namespace, {"greeting": "hi"})
    core = client.CoreV1Api(kube_api)
    cm = core.read_namespaced_config_map("envtest-greeting", kube_namespace)
    assert cm.data["greeting"] == "hi"
    # Capabilities come from the real API server's discovery, not helm's defaults.
    assert cm.data["kubeVersion"] == "v1.34.4"
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"

    helm.uninstall("envtest", kube_namespace)
    with pytest.raises(ApiException) as info:
        core.read_namespaced_config_map("envtest-greeting", kube_namespace)
    assert info.value.status == 404


# --------------------------------------------------------------------------- prometheus


def test_prometheus_scrapes_a_python_exporter_and_evaluates_rules(prometheus_factory: Any, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{
        "name": "envtest",
        "rules": [
            {"record": "job:envtest_widgets:sum", "expr": "sum by (job) (envtest_widgets_total)"},
            {
                "alert": "EnvtestTooManyWidgets",
                "expr": "job:envtest_widgets:sum > 100",
                "for": "1m",
                "labels": {"severity": "warning"},
                "annotations": {"summary": "More than 100 widgets were made."},
            },
        ],
    }]}))
    promtool_check_rules([rules])

    registry = CollectorRegistry()
    widgets = Counter("envtest_widgets", "Widgets made by the test exporter.", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        widgets.inc(3)
        prom = prometheus_factory([(f"127.0.0.1:{port}", {"component": "envtest"})], rule_files=[rules])
        promtool_check_config(prom.config_path)

        targets = prom.wait_for_targets_up(timeout=30)
        assert targets[0]["labels"]["component"] == "envtest"
        result = prom.wait_for(
            'envtest_widgets_total{job="kubescribe", component="envtest"}',
            lambda r: r and float(r[0]["value"][1]) == 3.0,
            timeout=30,
        )
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{port}"

        widgets.inc(2)
        prom.wait_for("job:envtest_widgets:sum", lambda r: r and float(r[0]["value"][1]) == 5.0, timeout=30)
        assert prom.query_value('sum(envtest_widgets_total{component="envtest"})') == 5.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- Jobs


def test_job_controller_completes_and_fails_jobs_run_by_fake_kubelet(fake_kubelet: FakeKubelet, kube_api: Any, kube_namespace: str) -> None:
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace

    batch.create_namespaced_job(ns, _job("ok", ["python", "-c", "import sys; sys.exit(0)"]))
    batch.create_namespaced_job(ns, _job(
        "exit3",
        ["python", "-c", "import sys; sys.exit(3)"],
        backoffLimit=2,
        podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]},
    ))

    complete = _wait_job_condition(batch, ns, "ok", "Complete")
    assert complete["type"] == "Complete"
    ok = batch.read_namespaced_job_status("ok", ns).status
    assert ok.succeeded == 1 and not ok.failed

    failed = _wait_job_condition(batch, ns, "exit3", "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    status = batch.read_namespaced_job_status("exit3", ns).status
    assert status.failed == 1, "podFailurePolicy FailJob must stop retries despite backoffLimit 2"
    pods = _job_pods(core, ns, "exit3")
    assert len(pods) == 1
    terminated = _terminated(pods[0])
    assert terminated is not None and terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert pods[0]["status"]["phase"] == "Failed"
    assert pods[0]["spec"]["nodeName"] == fake_kubelet.node_name


def test_fake_kubelet_passes_env_and_reports_termination_message(fake_kubelet: FakeKubelet, kube_api: Any, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    batch = client.BatchV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_secret(ns, {"metadata": {"name": "redis"}, "stringData": {"password": "s3cret"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}, "data": {"model": "tiny.en"}})
    script = textwrap.dedent("""\
        import os, sys
        for key in ("PLAIN", "PASSWORD", "MODEL", "POD_NAME", "POD_NAMESPACE", "COMBINED"):
            print(f"{key}={os.environ.get(key)}")
        print("argv", sys.argv[1:])
        with open(os.environ["KUBESCRIBE_TERMINATION_LOG"], "w") as fh:
            fh.write('{"result": "done"}')
    """)
    batch.create_namespaced_job(ns, _job(
        "env",
        ["python", "-c", script],
        container={
            "args": ["--model", "$(MODEL)", "$$(MODEL)"],
            "env": [
                {"name": "PLAIN", "value": "plain-value"},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}},
                {"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "model"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "COMBINED", "value": "$(POD_NAMESPACE)/$(MODEL)"},
                {"name": "KUBESCRIBE_TERMINATION_LOG", "value": "/dev/termination-log"},
            ],
        },
    ))
    _wait_job_condition(batch, ns, "env", "Complete")
    pod = _job_pods(core, ns, "env")[0]
    name = pod["metadata"]["name"]
    terminated = _terminated(pod)
    assert terminated is not None
    assert terminated["reason"] == "Completed" and terminated["exitCode"] == 0
    assert terminated["message"] == '{"result": "done"}'

    logs = fake_kubelet.logs(name, ns)
    for line in (
        "PLAIN=plain-value", "PASSWORD=s3cret", "MODEL=tiny.en", f"POD_NAME={name}",
        f"POD_NAMESPACE={ns}", f"COMBINED={ns}/tiny.en", "argv ['--model', 'tiny.en', '$(MODEL)']",
    ):
        assert line in logs, f"{line!r} not in:\n{logs}"


def test_fake_kubelet_command_override(fake_kubelet: FakeKubelet, kube_api: Any, kube_namespace: str) -> None:
    batch = client.BatchV1Api(kube_api)
    ns = kube_namespace

    def override(pod: dict) -> Optional[list[str]]:
        if pod["metadata"]["namespace"] != ns:
            return None
        return [sys.executable, "-c", "print('substituted runner')"]

    with fake_kubelet.override_command(override):
        batch.create_namespaced_job(ns, _job("image-entrypoint", []))  # no command at all
        _wait_job_condition(batch, ns, "image-entrypoint", "Complete")
    run = fake_kubelet.runs(ns)[0]
    assert "substituted runner" in fake_kubelet.logs(run.name, ns)


def test_deleting_a_job_kills_its_process(fake_kubelet: FakeKubelet, kube_api: Any, kube_namespace: str) -> None:
    batch = client.BatchV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    batch.create_namespaced_job(ns, _job("sleeper", ["python", "-c", "import time; time.sleep(600)"]))

    run = wait_for(lambda: next((r for r in fake_kubelet.running() if r.namespace == ns), None), timeout=30, description="sleeper running")
    pod = wait_for(
        lambda: next((p for p in _job_pods(core, ns, "sleeper") if p["status"].get("phase") == "Running"), None),
        timeout=30,
        description="pod phase Running",
    )
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]

    batch.delete_namespaced_job("sleeper", ns, propagation_policy="Background")
    assert run.done.wait(30), "process still running after its Job was deleted"
    assert run.kill_reason == "deleted" and run.exit_code == 128 + 15  # SIGTERM, like a container
    wait_for(lambda: not _job_pods(core, ns, "sleeper"), timeout=60, description="sleeper pod deleted")


def test_job_active_deadline_stops_the_process(fake_kubelet: FakeKubelet, kube_api: Any, kube_namespace: str) -> None:
    batch = client.BatchV1Api(kube_api)
    ns = kube_namespace
    batch.create_namespaced_job(ns, _job("slow", ["python", "-c", "import time; time.sleep(600)"], activeDeadlineSeconds=2))
    failed = _wait_job_condition(batch, ns, "slow", "Failed", timeout=60)
    assert failed["reason"] == "DeadlineExceeded"
    run = wait_for(lambda: next((r for r in fake_kubelet.runs(ns) if r.done.is_set()), None), timeout=30, description="process stopped")
    assert run.exit_code is not None and run.exit_code != 0


# --------------------------------------------------------------------------- garbage collection


def test_garbage_collector_deletes_dependents(kube_api: Any, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    ns = kube_namespace
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}, "data": {}})
    core.create_namespaced_config_map(ns, {
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "data": {},
    })
    core.delete_namespaced_config_map("owner", ns)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", ns)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(dependent_gone, timeout=60, description="dependent ConfigMap garbage-collected")


def test_deleting_a_custom_resource_deletes_its_job(widget_crd: str, kube_api: Any, kube_namespace: str) -> None:
    """The operator's case: a Job owned by a custom resource goes when the resource goes.

    The garbage collector learns about new CRDs when it re-reads discovery (every 30 s),
    so the deadline is generous.
    """
    custom = client.CustomObjectsApi(kube_api)
    batch = client.BatchV1Api(kube_api)
    ns = kube_namespace
    owner = custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", {
        "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "owner"}, "spec": {"replicas": 1},
    })
    job = _job("owned", ["python", "-c", "pass"], suspend=True)
    job["metadata"]["ownerReferences"] = [{
        "apiVersion": f"{GROUP}/v1", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }]
    batch.create_namespaced_job(ns, job)
    custom.delete_namespaced_custom_object(GROUP, "v1", ns, "widgets", "owner")

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("owned", ns)
        except ApiException as exc:
            return exc.status == 404
        return False

    started = time.monotonic()
    wait_for(job_gone, timeout=90, interval=0.25, description="Job owned by a Widget garbage-collected")
    assert time.monotonic() - started < 90
