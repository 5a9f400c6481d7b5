"""The chart's monitoring objects through the real Prometheus Operator, on the real node.

Two releases are installed side by side, each in its own namespace (``ks`` in
``speech-a``, ``night`` in ``speech-b``), with the chart's ServiceMonitor, PodMonitor,
PrometheusRule and dashboard and the chart's default ``monitoring.labels``. A
``Prometheus`` object selects monitors and rules the way a default kube-prometheus-stack
does (``release: kube-prometheus-stack``). The real Prometheus Operator turns them into a
scrape configuration and rule files; the real Prometheus runs that configuration on the
host (``harness/envtest/promoperator.py`` says why and how) and scrapes the real operator
and runner pods at their pod IPs.

Checked: operator metrics arrive through the ServiceMonitor and runner metrics through
the PodMonitor, labelled with their install's ``namespace`` and ``job``; the
PrometheusRule's alerts are loaded; every query of each release's own dashboard returns
data for that release and nothing of the other; and a stopped operator of one release
fires ``KubescribeOperatorDown`` for that release only.

NetworkPolicies are not exercised here: the node's bridge CNI does not enforce them
(tests/test_chart.py checks their selectors and ports against the pods' labels).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from kubescribe import API_VERSION, GROUP, KIND, PLURAL
from kubescribe.store import Store, connect
from harness.envtest import REPO_ROOT, wait_for
from harness.envtest.helm import Helm
from harness.envtest.prometheus import PrometheusServer
from harness.envtest.promoperator import UNSCHEDULABLE, PrometheusOperator
from harness.envtest.realnode import RealNode
from tests.test_realnode import SMALL, create_namespace, kubectl_json, long_speech, split_ref  # noqa: F401

pytestmark = [pytest.mark.kube, pytest.mark.realnode]

CHART = REPO_ROOT / "charts" / "kubescribe"
RULES = REPO_ROOT / "prometheus" / "rules" / "kubescribe.rules.yaml"
PROM_NS = "monitoring"
PROM_NAME = "k8s"
#: (release, namespace) of the two installs.
A = ("ks", "speech-a")
B = ("night", "speech-b")
GRAFANA = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "10m"}


OPERATOR_DOWN_FOR = "20s"


def chart_values(node: RealNode, namespace: str) -> dict[str, Any]:
    op_repo, op_tag = split_ref(node.images["operator"])
    run_repo, run_tag = split_ref(node.images["runner"])
    redis_repo, redis_tag = split_ref(node.images["redis"])
    return {
        # Each install serves its own namespace: two cluster-wide operators would both
        # take every request.
        "watchNamespace": namespace,
        "operator": {"image": {"repository": op_repo, "tag": op_tag}, "gpuBudget": 2, "resyncSeconds": 3,
                     "resources": SMALL},
        "runner": {"image": {"repository": run_repo, "tag": run_tag}, "resources": SMALL},
        "redis": {"internal": {"enabled": True, "image": {"repository": redis_repo, "tag": redis_tag},
                               "resources": SMALL, "maxmemory": "128mb"}},
        # monitoring.labels stays the chart's default: release: kube-prometheus-stack.
        "monitoring": {"serviceMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "1s"},
                       "podMonitor": {"enabled": True, "interval": "1s", "scrapeTimeout": "1s"},
                       # The file's for: 5m stays in promtool's tests; here a shorter one
                       # (monitoring.prometheusRule.alertFor) shows the real Prometheus
                       # moving the alert from pending to firing without a five-minute wait.
                       "prometheusRule": {"enabled": True, "alertFor": {"KubescribeOperatorDown": OPERATOR_DOWN_FOR}},
                       "dashboard": {"enabled": True}},
    }


def prometheus_object() -> dict[str, Any]:
    selector = {"matchLabels": {"release": "kube-prometheus-stack"}}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
            "metadata": {"name": PROM_NAME, "namespace": PROM_NS},
            "spec": {"serviceMonitorSelector": selector, "serviceMonitorNamespaceSelector": {},
                     "podMonitorSelector": selector, "podMonitorNamespaceSelector": {},
                     "ruleSelector": selector, "ruleNamespaceSelector": {},
                     "scrapeInterval": "1s", "evaluationInterval": "1s",
                     "nodeSelector": UNSCHEDULABLE}}


def dashboard_queries(node: RealNode, release: str, namespace: str) -> tuple[dict, list[tuple[str, str]]]:
    """The release's own dashboard, from its ConfigMap, with its preselected variables."""
    cm = kubectl_json(node, "get", "configmap", f"{release}-kubescribe-dashboard", "-n", namespace)
    (text,) = cm["data"].values()
    dash = json.loads(text)
    variables = {f"${v['name']}": v["current"]["value"] for v in dash["templating"]["list"] if v.get("current")}
    variables.pop("$datasource", None)
    assert variables == {"$namespace": namespace, "$job": release}
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for var, value in {**GRAFANA, **variables}.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return dash, out


def finite_samples(result: list[dict]) -> list[float]:
    return [float(v) for r in result for _, v in r["values"] if math.isfinite(float(v))]


@pytest.fixture(scope="module")
def stack(real_node: RealNode, tmp_path_factory) -> Any:
    """The Prometheus Operator, the two releases, and the host Prometheus on its config."""
    node = real_node
    operator = PrometheusOperator(node.cluster, tmp_path_factory.mktemp("promop")).start()
    helm = Helm(node.cluster, workdir=tmp_path_factory.mktemp("helm"))
    prom = None
    try:
        node.kubectl("create", "namespace", PROM_NS, check=True)
        node.kubectl("apply", "-f", "-", input=json.dumps(prometheus_object()), check=True)
        for release, ns in (A, B):
            create_namespace(node, ns)
            helm.run("install", release, str(CHART), "-n", ns, "-f", helm.values_file(chart_values(node, ns)),
                     "--wait", "--timeout=5m")
        # The operator picks every monitor and the rules up: one scrape job per monitor.
        want = {f"serviceMonitor/{ns}/{rel}-kubescribe-operator/0" for rel, ns in (A, B)} | \
               {f"podMonitor/{ns}/{rel}-kubescribe-runner/0" for rel, ns in (A, B)}
        config = operator.generated_config(
            PROM_NS, PROM_NAME, until=lambda c: want <= {j["job_name"] for j in c.get("scrape_configs") or []})
        workdir = tmp_path_factory.mktemp("prometheus")
        rules = wait_for(lambda: operator.rule_files(PROM_NS, PROM_NAME, workdir / "rules") or None, timeout=60,
                         description="rule files of the Prometheus object")
        prom = PrometheusServer(config=operator.host_config(config, rules), workdir=workdir / "server").start()
        yield node, operator, helm, prom, config
    finally:
        if prom is not None:
            prom.stop()
        for release, ns in (A, B):
            helm.run("uninstall", release, "-n", ns, "--wait", "--timeout=2m", check=False)
            node.kubectl("delete", "namespace", ns, "--wait=false")
        node.kubectl("delete", "namespace", PROM_NS, "--wait=false")
        helm.close()
        operator.stop()


def release_store(node: RealNode, release: str, ns: str) -> Store:
    import base64

    svc = kubectl_json(node, "get", "service", f"{release}-kubescribe-redis", "-n", ns)
    secret = kubectl_json(node, "get", "secret", f"{release}-kubescribe-redis", "-n", ns)
    return Store(connect(f"redis://{svc['spec']['clusterIP']}:6379/0",
                         base64.b64decode(secret["data"]["redis-password"]).decode()))


def create_request(node: RealNode, ns: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": ns}, "spec": spec}
    node.kubectl("apply", "-f", "-", input=json.dumps(body), check=True)


def wait_done(node: RealNode, ns: str, name: str) -> dict:
    def done() -> dict | None:
        status = kubectl_json(node, "get", f"{PLURAL}.{GROUP}", name, "-n", ns).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(done, timeout=300, interval=0.5, description=f"{ns}/{name} finished")


def test_the_operator_generates_a_scrape_job_per_monitor_with_the_install_labels(stack):
    _, _, _, _, config = stack
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for release, ns in (A, B):
        for monitor in (f"serviceMonitor/{ns}/{release}-kubescribe-operator/0",
                        f"podMonitor/{ns}/{release}-kubescribe-runner/0"):
            relabels = jobs[monitor]["relabel_configs"]
            assert {"target_label": "namespace", "replacement": ns, "action": "replace"}.items() <= \
                next(r for r in relabels if r.get("target_label") == "namespace" and r.get("replacement") == ns).items()
            assert any(r.get("target_label") == "job" and r.get("source_labels") ==
                       ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"] for r in relabels), monitor


def test_both_operators_are_scraped_through_their_service_monitors(stack):
    _, _, _, prom, _ = stack

    seen_last: list = []

    def operators_up() -> list | None:
        targets = [t for t in prom.targets() if t["labels"].get("component") == "operator"]
        seen_last[:] = [(t["scrapePool"], t["health"], t.get("lastError")) for t in prom.targets()]
        up = [t for t in targets if t["health"] == "up"]
        return up if len(up) == 2 else None

    try:
        targets = wait_for(operators_up, timeout=120, interval=0.5, description="both operator targets up")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; targets: {seen_last}; dropped: {len(prom.targets('dropped'))}") from None
    seen = {(t["labels"]["namespace"], t["labels"]["job"]): t for t in targets}
    assert set(seen) == {(A[1], A[0]), (B[1], B[0])}
    for (ns, release), t in seen.items():
        assert t["scrapePool"] == f"serviceMonitor/{ns}/{release}-kubescribe-operator/0"
        assert t["labels"]["instance"].startswith("10.244.")  # the pod IP on the node's bridge
    for release, ns in (A, B):
        prom.wait_for(f'kubescribe_gpu_budget{{namespace="{ns}",job="{release}",component="operator"}}',
                      lambda r: r and float(r[0]["value"][1]) == 2, timeout=30)


def test_the_prometheus_rule_alerts_are_loaded(stack):
    import yaml

    _, _, _, prom, _ = stack
    want = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}

    def loaded() -> list | None:
        rules = [r for g in prom.rules() for r in g["rules"] if r["type"] == "alerting"]
        return rules if {r["name"] for r in rules} >= want and all(r["health"] == "ok" for r in rules) else None

    rules = wait_for(loaded, timeout=60, interval=0.5, description="the PrometheusRule's alerts, evaluated")
    # One PrometheusRule per release, each with every alert.
    assert sorted(r["name"] for r in rules) == sorted(list(want) * 2)
    for r in rules:
        assert r["annotations"]["runbook_url"].endswith("#" + r["name"].lower())
    # ... and each scoped to its own install (the chart writes namespace and job into
    # every selector), so no alert is evaluated twice for one install.
    for release, ns in (A, B):
        scoped = [r for r in rules if f'namespace="{ns}"' in r["query"] and f'job="{release}"' in r["query"]]
        assert sorted(r["name"] for r in scoped) == sorted(want)


def repeated(wav: Path, times: int, out: Path) -> Path:
    """``wav`` ``times`` over, as one recording."""
    import wave

    import numpy as np

    from harness.speech import write_wav

    with wave.open(str(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32767
    return write_wav(out, np.tile(samples, times))


def test_runner_metrics_arrive_through_the_pod_monitor_and_each_dashboard_shows_its_own_install(
        stack, speech_dir: Path, long_speech: Path):  # noqa: F811 - long_speech is a fixture
    node, _, _, prom, _ = stack
    release, ns = A
    t0 = time.time()
    store = release_store(node, release, ns)
    # Six times the 40 s recording, decoded one window at a time with beam search: a
    # runner that lives only seconds can end before Prometheus's pod discovery (which
    # applies updates every 5 s) has made its pod a target, and a CI run once lost that race.
    long_key = store.put_audio(repeated(long_speech, 6, long_speech.parent / "six.wav").read_bytes())
    fox_key = store.put_audio((speech_dir / "fox.wav").read_bytes())
    create_request(node, ns, "long", {"audio": {"redisKey": long_key}, "language": "en", "device": "cpu",
                                      "decoding": "sequential", "beamSize": 5})
    # A runner pod of release A, scraped through the PodMonitor while it transcribes.
    runner = f'kubescribe_ram_usage_bytes{{namespace="{ns}",job="{release}",component="runner"}}'
    found = prom.wait_for(runner, lambda r: r and float(r[0]["value"][1]) > 50e6, timeout=240)
    assert found[0]["metric"]["request_namespace"] == ns and found[0]["metric"]["request"] == "long"
    pools = {t["scrapePool"] for t in prom.targets() if t["labels"].get("component") == "runner"}
    assert pools == {f"podMonitor/{ns}/{release}-kubescribe-runner/0"}
    assert wait_done(node, ns, "long")["phase"] == "Succeeded"
    create_request(node, ns, "fox", {"audio": {"redisKey": fox_key}, "language": "en", "device": "cpu"})
    create_request(node, ns, "missing", {"audio": {"redisKey": "kubescribe:audio:" + "7" * 64}, "device": "cpu"})
    assert wait_done(node, ns, "fox")["phase"] == "Succeeded"
    assert wait_done(node, ns, "missing")["phase"] == "Failed"
    create_request(node, ns, "fox-again", {"audio": {"redisKey": fox_key}, "language": "en", "device": "cpu"})
    assert wait_done(node, ns, "fox-again")["cached"] is True
    total = f'sum(kubescribe_transcriptions_total{{namespace="{ns}",job="{release}",component="operator"}})'
    prom.wait_for(total, lambda r: r and float(r[0]["value"][1]) == 4, timeout=30)
    # increase() cannot count a series' first sample: when all four land between two
    # scrapes, "Total transcriptions" reads 0. One more success after Prometheus has seen
    # the series gives the panel an increase whatever the scrape timing.
    create_request(node, ns, "fox-third", {"audio": {"redisKey": fox_key}, "language": "en", "device": "cpu"})
    assert wait_done(node, ns, "fox-third")["cached"] is True
    prom.wait_for(total, lambda r: r and float(r[0]["value"][1]) == 5, timeout=30)

    # Every query of release A's dashboard has data over the test's time range (GPU panels
    # excepted: no GPU here; the gateway row, since these releases run no gateway:
    # tests/test_gateway.py gives those panels data; and the notification row, since these
    # releases configure no sink: tests/test_monitoring.py delivers an event for it. All must
    # evaluate without error).
    _, queries = dashboard_queries(node, release, ns)
    # A range query evaluates at start, start + step, ... up to end, so its last point can fall
    # up to a step before the scrape that saw the fifth transcription. The range ends on a
    # whole second after that scrape and starts a whole number of steps before its end.
    end = math.ceil(time.time())
    t0 = end - 2 * math.ceil((end - t0) / 2)
    no_gpu, no_gateway, no_sink = [], [], []
    for title, expr in queries:
        result = prom.query_range(expr, t0, end, step="2s")  # raises on a PromQL error
        if re.search(r"kubescribe_gpu_(utilization_percent|memory_used_bytes)", expr):
            no_gpu.append(title)
            continue
        if 'component="gateway"' in expr:
            no_gateway.append(title)
            continue
        if "kubescribe_notification" in expr:
            no_sink.append(title)
            continue
        if not finite_samples(result):  # a scrape or rule evaluation behind: allow a minute
            wait_for(lambda: finite_samples(prom.query_range(expr, t0, time.time(), step="2s")), timeout=60,
                     interval=1, description=f"panel {title!r} of {ns}/{release}: data for {expr}")
    assert sorted(set(no_gpu)) == ["GPU memory", "GPU utilisation"]
    assert len(set(no_gateway)) == 5
    assert sorted(set(no_sink)) == ["Notification delivery p50 / p95", "Notifications by outcome"]

    # Release B's dashboard shows B: its operator, none of A's requests.
    _, b_queries = dashboard_queries(node, *B)
    by_title = dict(b_queries)
    assert max(finite_samples(prom.query_range(by_title["Total transcriptions"], t0, end, step="2s"))) == 0
    assert finite_samples(prom.query_range(by_title["Active workers"], t0, end, step="2s"))
    assert not prom.query_range(by_title["RAM"], t0, end, step="2s")
    # (increase() cannot count a series' first sample, so the panel reads less than 5; the
    # range's last point, after fox-third was scraped, reads at least 1.)
    a_total = dict(queries)["Total transcriptions"]
    assert max(finite_samples(prom.query_range(a_total, t0, end, step="2s"))) > 0


def test_a_stopped_operator_fires_operator_down_for_its_release_only(stack):
    """With the chart's alertFor override of 20 s, the pending alert fires after it, for B only."""
    node, _, _, prom, _ = stack
    release, ns = B
    prom.wait_for(f'up{{namespace="{ns}",job="{release}",component="operator"}} == 1', timeout=60)
    node.kubectl("scale", "deployment", f"{release}-kubescribe-operator", "-n", ns, "--replicas=0", check=True)
    alerts = 'ALERTS{alertname="KubescribeOperatorDown"}'
    pending = prom.wait_for(alerts, lambda r: r and r[0]["metric"]["alertstate"] == "pending", timeout=120)
    firing = prom.wait_for(alerts, lambda r: r and r[0]["metric"]["alertstate"] == "firing", timeout=120, interval=1)
    for result in (pending, firing):
        assert [(r["metric"]["namespace"], r["metric"]["job"], r["metric"]["severity"]) for r in result] == \
            [(ns, release, "critical")]
    # Release A's operator is up all along and alerts nothing.
    assert prom.query_value(f'up{{namespace="{A[1]}",job="{A[0]}",component="operator"}}') == 1
