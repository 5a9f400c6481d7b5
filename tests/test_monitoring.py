"""Alert rules, scrape configuration and the Grafana dashboard, checked for real.

- promtool checks the rule file and prometheus/prometheus.yml, and runs the alert unit
  tests in tests/promtool/.
- Every metric a panel or an alert names is one the code exports, with the labels used.
- A real Prometheus scrapes the real operator (handling real requests through the Job
  controller and the fake kubelet) and an in-process runner that transcribed real audio,
  with the component labels the chart's ServiceMonitor/PodMonitor add, and every panel's
  query returns data. The GPU panels cannot have data on a machine without a GPU: their
  queries must still evaluate without error.
- The chart's copies of the dashboard and the rules are the same files as the top-level
  ones (Helm cannot read outside the chart directory).
- The rules of pint and Grafana's dashboard-linter that matter on a shared cluster, as
  tests of ours (neither tool is served by the package registries here): every
  aggregation and every join of an alert keeps `namespace` and `job` (one install), every
  alert has a `for` and a `runbook_url` whose section exists in docs/runbooks.md, every
  panel query is scoped by the dashboard's namespace and release variables, the data
  source is a variable and the dashboard is not editable. They read every panel and every
  rule, so panels and alerts added later must follow them too.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from harness.envtest import wait_for
from harness.envtest.prometheus import promtool_check_config, promtool_check_rules, promtool_test_rules

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "kubescribe.json"
RULES = ROOT / "prometheus" / "rules" / "kubescribe.rules.yaml"
SCRAPE_CONFIG = ROOT / "prometheus" / "prometheus.yml"
CHART_FILES = ROOT / "charts" / "kubescribe" / "files"
RULE_TESTS = ROOT / "tests" / "promtool" / "kubescribe.rules.test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/kubescribe/kubescribe/blob/main/docs/runbooks.md"

INHERITED_PANELS = (
    "Total transcriptions", "Success rate", "Average time", "Cache hit rate", "Transcriptions over time",
    "Processing time p50 / p95 / p99", "Queue", "Active workers", "Total errors", "Errors by type",
)
GPU_OPS_PANELS = ("GPU utilisation", "GPU memory", "RAM", "Real-time factor", "Queue wait time", "Job failures")

#: Grafana's variables, replaced by what Grafana would send for a short time range (wide
#: enough that a slow machine's test still has every change inside the window).
GRAFANA_VARIABLES = {"$__rate_interval": "10m", "$__interval": "15s", "$__range": "10m"}
#: The install the tests' static scrape targets belong to (the dashboard's variables).
INSTALL = {"namespace": "speech", "job": "ks"}


# --------------------------------------------------------------------------- helpers


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])  # panels of collapsed rows
    return [p for p in out if p["type"] != "row"]


def panel_queries(install: dict[str, str] = INSTALL) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables substituted; the dashboard's own
    variables by ``install``)."""
    out = []
    variables = {**GRAFANA_VARIABLES, **{f"${k}": v for k, v in install.items()}}
    for p in panels():
        for t in p["targets"]:
            expr = t["expr"]
            for var, value in variables.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{p['title']}: unsubstituted variable in {expr!r}"
            out.append((p["title"], expr))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def exported_families(registry) -> dict[str, tuple[str, set[str]]]:
    """Sample names a registry exports -> (family name, label names), from its metadata
    (labelled families have no samples until first used)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
    out: dict[str, tuple[str, set[str]]] = {}
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - labelnames live on collectors
        labels = set(getattr(collector, "_labelnames", ()))
        for fam in collector.describe():
            for suffix in suffixes[fam.type]:
                out[fam.name + suffix] = (fam.name, labels | ({"le"} if suffix == "_bucket" else set()))
    return out


SELECTOR = re.compile(r"\b(kubescribe_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
#: Labels the scrape adds to every series: the chart's ServiceMonitor/PodMonitor and
#: prometheus/prometheus.yml.
TARGET_LABELS = {"component", "instance", "job", "namespace", "pod", "service", "container", "endpoint", "request",
                 "request_namespace"}


# --------------------------------------------------------------------------- files


def test_chart_carries_the_same_dashboard_and_rules():
    for top, copy in ((DASHBOARD, CHART_FILES / "kubescribe.json"), (RULES, CHART_FILES / "kubescribe.rules.yaml")):
        assert copy.read_bytes() == top.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {top.relative_to(ROOT)}: edit the top-level file, then "
            f"`cp {top.relative_to(ROOT)} {copy.relative_to(ROOT)}`")


def test_promtool_checks_the_rules():
    out = promtool_check_rules([RULES]).stdout
    assert "SUCCESS" in out


def test_promtool_checks_the_scrape_config_offline():
    """kubernetes_sd_configs need a cluster only at run time; the file parses without one,
    and its rule_files entry resolves to the rule file."""
    out = promtool_check_config(SCRAPE_CONFIG).stdout
    assert "SUCCESS" in out and "1 rule files found" in out
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert (SCRAPE_CONFIG.parent / cfg["rule_files"][0]).resolve() == RULES.resolve()
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"kubescribe-operator", "kubescribe-gateway", "kubescribe-runner"}
    for job in jobs.values():
        relabels = job["relabel_configs"]
        keep = next(r for r in relabels if r["action"] == "keep")
        assert "kubescribe" in keep["regex"] and "metrics" in keep["regex"]
        component = [r for r in relabels if r.get("target_label") == "component"]
        assert component and component[0]["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]


def test_alert_unit_tests_pass():
    """promtool test rules: the alerts fire on the series they are about, and only then."""
    out = promtool_test_rules([RULE_TESTS]).stdout
    assert "SUCCESS" in out


def test_every_alert_is_documented_and_has_a_severity():
    doc = yaml.safe_load(RULES.read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 8
    names = {a["alert"] for a in alerts}
    assert {"KubescribeHighErrorRate", "KubescribeQueueBacklog", "KubescribeQueueWaitHigh",
            "KubescribeJobFailures", "KubescribeGPUsIdleWhileQueued", "KubescribeGPUsSaturated",
            "KubescribeCacheHitRateCollapse"} <= names
    for a in alerts:
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
    tested = yaml.safe_load(RULE_TESTS.read_text())
    fired = {a["alertname"] for t in tested["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert names - fired == set(), f"alerts without a firing unit test: {sorted(names - fired)}"


def test_dashboard_has_the_inherited_and_the_new_panels():
    d = dashboard()
    titles = [p["title"] for p in panels()]
    for title in INHERITED_PANELS + GPU_OPS_PANELS:
        assert title in titles, f"panel {title!r} is missing"
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert p.get("description"), f"{p['title']} has no description"


def test_dashboard_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_totals_come_from_the_operator_and_resources_from_runners():
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    for title in ("Total transcriptions", "Success rate", "Average time", "Total errors", "Errors by type",
                  "Transcriptions over time", "Processing time p50 / p95 / p99", "Queue", "Active workers",
                  "Queue wait time", "Job failures", "Real-time factor"):
        assert 'component="operator"' in by_title[title], title
    for title in ("GPU utilisation", "GPU memory", "RAM"):
        assert 'component="runner"' in by_title[title], title


def test_every_metric_in_panels_and_alerts_is_exported_with_those_labels():
    from kubescribe.gateway.http_metrics import GatewayMetrics
    from kubescribe.metrics import OperatorMetrics, RunnerMetrics

    registries = {"operator": exported_families(OperatorMetrics().registry),
                  "runner": exported_families(RunnerMetrics().registry),
                  "gateway": exported_families(GatewayMetrics().registry)}
    everything = {**registries["gateway"], **registries["runner"], **registries["operator"]}
    used = set()
    for where, expr in panel_queries() + rule_exprs():
        for name, selector in SELECTOR.findall(expr):
            matchers = dict((k, v) for k, _, v in MATCHER.findall(selector or ""))
            component = matchers.get("component")
            exported = registries[component] if component in registries else everything
            assert name in exported, f"{where}: {name} is not exported by the {component or 'any'} component"
            unknown = set(matchers) - exported[name][1] - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"
            used.add(exported[name][0])
    # Every inherited family (README, Metrics) appears on the dashboard or in an alert.
    for family in ("kubescribe_transcriptions", "kubescribe_transcription_duration_seconds",
                   "kubescribe_cache_hit_rate", "kubescribe_queue_size", "kubescribe_active_workers",
                   "kubescribe_gpu_utilization_percent", "kubescribe_ram_usage_bytes", "kubescribe_errors",
                   "kubescribe_cache_operations"):
        assert family in used, f"{family} is on no panel and in no alert"


def test_grafana_provisioning_files():
    ds = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "kubescribe.yaml").read_text())
    provider = prov["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# --------------------------------------------------------------------------- shared-cluster lint
# pint's promql/aggregate and alerts/* rules and Grafana dashboard-linter's, as tests.

INSTALL_LABELS = ("namespace", "job")


def alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook headings (lower case, spaces to dashes)."""
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{2,3} (.+)$", RUNBOOKS.read_text(), re.M)}


def test_every_aggregation_of_an_alert_keeps_namespace_and_job():
    """Two installs (or one install in a namespace with its own Alertmanager route) are
    told apart only if no aggregation sums the labels away."""
    from tests.support.promql import aggregations, label_dropping_calls

    for name, expr in rule_exprs():
        aggs = aggregations(expr)
        assert aggs or "kubescribe_" in expr, name
        for agg in aggs:
            if agg.modifier == "without":
                assert not set(agg.labels) & set(INSTALL_LABELS), f"{name}: {agg} drops an install label"
            else:
                assert set(INSTALL_LABELS) <= set(agg.labels), f"{name}: {agg.op} without `by (namespace, job)`"
        assert not label_dropping_calls(expr), f"{name}: {label_dropping_calls(expr)} lose the install's labels"


def test_every_join_of_an_alert_matches_on_namespace_and_job():
    """`and on()` pairs any install's queue with any other's GPUs."""
    from tests.support.promql import joins

    for name, expr in rule_exprs():
        for kind, labels in joins(expr):
            assert kind == "on" and set(INSTALL_LABELS) <= set(labels), f"{name}: {kind}({', '.join(labels)})"


def test_the_aggregation_lint_catches_what_it_is_for():
    """The scanner behind the two tests above sees both aggregation forms and empty joins."""
    from tests.support.promql import aggregations, joins, label_dropping_calls

    assert aggregations("sum(rate(x[5m])) by (namespace, job)")[0].labels == ("namespace", "job")
    assert aggregations("max(up{component=\"operator\"})")[0].modifier == ""
    assert [a.op for a in aggregations("histogram_quantile(0.9, sum by (le) (rate(b[5m])))")] == ["sum"]
    assert joins("a > 0 and on() b == 0") == [("on", ())]
    assert label_dropping_calls("absent(up == 1)") == ["absent"]


def test_every_alert_has_for_and_a_runbook_section():
    anchors = runbook_anchors()
    names = set()
    for a in alerts():
        names.add(a["alert"])
        assert a.get("for"), f"{a['alert']} has no `for`: one bad scrape would page"
        url = a["annotations"].get("runbook_url", "")
        assert url == f"{RUNBOOK_BASE}#{a['alert'].lower()}", f"{a['alert']}: runbook_url {url!r}"
        assert a["alert"].lower() in anchors, f"docs/runbooks.md has no section {a['alert']}"
    orphans = {x for x in anchors if x.startswith("kubescribe") and x != "kubescribe-runbooks"} - {n.lower() for n in names}
    assert not orphans, f"runbook sections for alerts that do not exist: {sorted(orphans)}"


def test_every_panel_query_is_scoped_by_the_dashboard_variables():
    """Every series selector of every panel (whoever adds the panel) names the install by
    the dashboard's variables, so one dashboard never mixes two installs."""
    from tests.support.promql import selectors

    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    for name in INSTALL_LABELS:
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}", name
        assert var["includeAll"] is False and var["multi"] is False, f"${name} must name one install"
    assert 'namespace="$namespace"' in variables["job"]["definition"]
    checked = 0
    for p in panels():
        for t in p["targets"]:
            found = selectors(t["expr"])
            assert found, f"{p['title']}: no series selector in {t['expr']!r}"
            for metric, matchers in found:
                for label in INSTALL_LABELS:
                    assert matchers.get(label) == ("=", f"${label}"), (
                        f"panel {p['title']!r}: {metric or '{...}'} is not scoped by {label}=\"${label}\"")
                checked += 1
    assert checked >= 20


def test_dashboard_datasource_is_a_variable_and_it_is_not_editable():
    d = dashboard()
    assert d["editable"] is False
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]


# --------------------------------------------------------------------------- a real Prometheus


@pytest.fixture
def runner_metrics(redis_server):
    """An in-process runner: the real task code and metrics, served like a runner pod's."""
    from kubescribe.metrics import RunnerMetrics
    from kubescribe.runner.engine import Engine
    from kubescribe.runner.resources import Nvml, start_metrics_server
    from kubescribe.store import Store

    metrics = RunnerMetrics()
    server = start_metrics_server(0, metrics, Nvml())
    store = Store(redis_server.client())
    engine = Engine(metrics=metrics)
    try:
        yield server, store, engine, metrics
    finally:
        server.stop()


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result if isinstance(r, dict))


@pytest.mark.kube
def test_prometheus_scrapes_operator_and_runner_and_every_panel_has_data(
        operator_factory, requests_api, redis_server, speech_dir, prometheus_factory, runner_metrics, kube_api):
    from kubernetes import client

    from harness.receiver import Receiver
    from kubescribe.models import parse_spec
    from kubescribe.runner.task import run_task
    from kubescribe.store import Store

    redis_server.client().flushdb()
    server, runner_store, engine, metrics = runner_metrics
    # A notification sink on loopback, which the guard allows only through the allow-list.
    op = operator_factory(gpu_budget="2", audio_url_allow_cidrs="127.0.0.0/8")
    sink = Receiver().start()
    client.CoreV1Api(kube_api).create_namespaced_secret(requests_api.namespace, {
        "metadata": {"name": "hook"}, "stringData": {"key": "whsec_a3ViZXNjcmliZS1tb25pdG9yaW5nLXRlc3Q="}})
    notify = [{"url": sink.url, "signingSecretRef": {"name": "hook", "key": "key"}}]
    prom = prometheus_factory([(f"127.0.0.1:{op.metrics_port}", {"component": "operator", **INSTALL}),
                               (f"127.0.0.1:{server.port}", {"component": "runner", **INSTALL})],
                              rule_files=[RULES])
    targets = prom.wait_for_targets_up()
    assert {t["labels"]["component"] for t in targets} == {"operator", "runner"}

    # The runner transcribes, then answers the same request from the cache.
    spec = parse_spec({"audio": {"redisKey": runner_store.put_audio((speech_dir / "library.wav").read_bytes())},
                       "model": "tiny.en", "language": "en"})
    assert run_task(runner_store, engine, spec, metrics=metrics).cached is False
    assert run_task(runner_store, engine, spec, metrics=metrics).cached is True

    # The operator: two runner Jobs, one cache hit, one Job that fails (audio missing).
    store = Store(redis_server.client())
    fox, weather = (store.put_audio((speech_dir / f"{n}.wav").read_bytes()) for n in ("fox", "weather"))
    requests_api.create("fox", {"audio": {"redisKey": fox}, "language": "en", "notify": notify})
    assert requests_api.wait_phase("fox", "Succeeded", "Failed")["phase"] == "Succeeded"
    prom.wait_for_scrapes()  # a scrape between the two, so rates see the second one
    requests_api.create("weather", {"audio": {"redisKey": weather}, "language": "en"})
    requests_api.create("missing", {"audio": {"redisKey": "kubescribe:audio:" + "7" * 64}, "device": "cpu"})
    assert requests_api.wait_phase("weather", "Succeeded", "Failed")["phase"] == "Succeeded"
    assert requests_api.wait_phase("missing", "Succeeded", "Failed")["phase"] == "Failed"
    requests_api.create("fox-again", {"audio": {"redisKey": fox}, "language": "en"})
    assert requests_api.wait_phase("fox-again", "Succeeded", "Failed", timeout=30)["cached"] is True

    prom.wait_for('sum(kubescribe_transcriptions_total{component="operator"})',
                  lambda r: r and float(r[0]["value"][1]) >= 4, timeout=30)
    prom.wait_for('sum(kubescribe_notifications_total{component="operator",outcome="delivered"})',
                  lambda r: r and float(r[0]["value"][1]) >= 1, timeout=30)
    sink.stop()
    # Runners export live gauges only; per-request figures come from the operator.
    prom.wait_for('sum(kubescribe_ram_usage_bytes{component="runner"})',
                  lambda r: r and float(r[0]["value"][1]) > 0, timeout=30)
    assert prom.query('kubescribe_transcriptions_total{component="runner"}') == []
    prom.wait_for_scrapes(2)  # the last change scraped, and one scrape more for rates

    empty_gpu = []
    for title, expr in panel_queries():
        result = prom.query(expr)  # raises on a PromQL error
        if 'component="gateway"' in expr:
            continue  # no gateway here: tests/test_gateway.py scrapes a real one for these panels
        if re.search(r"kubescribe_gpu_(utilization_percent|memory_used_bytes)", expr):
            empty_gpu.append(title)  # no GPU here: evaluated without error is all we can ask
            continue
        assert result, f"panel {title!r}: no data for {expr}"
        assert _finite(result), f"panel {title!r}: only NaN for {expr}: {result}"
    assert sorted(set(empty_gpu)) == ["GPU memory", "GPU utilisation"]

    # Figures that must be exact, from the operator.
    assert prom.query_value(
        'sum(kubescribe_transcriptions_total{component="operator",status="succeeded"})') == 3
    assert prom.query_value('sum(kubescribe_jobs_total{component="operator",outcome="failed"})') == 1
    assert prom.query_value('sum(kubescribe_errors_total{component="operator",type="audio_not_found"})') == 1
    assert prom.query_value('max(kubescribe_gpu_budget{component="operator"})') == 2
    assert prom.query_value('sum(kubescribe_ram_usage_bytes{component="runner"})') > 50e6

    # The alert rules evaluate on real series without errors, and none fires.
    def evaluated():
        rules = [r for g in prom.rules() for r in g["rules"]]
        return rules if rules and not any(r["lastEvaluation"].startswith("0001") for r in rules) else None

    rules = wait_for(evaluated, timeout=20, interval=0.25, description="rule evaluation")
    assert len(rules) == len(rule_exprs())
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
        assert r["state"] == "inactive", f"{r['name']} is {r['state']} on a healthy system"


@pytest.mark.kube
def test_hit_rate_and_file_sizes_are_exact_in_job_mode(
        operator_factory, requests_api, redis_server, speech_dir, prometheus_factory):
    """3 new requests, then 2 repeats: the dashboard's hit rate reads exactly 0.4 (one
    lookup per request), and the file-size histogram holds the 3 transcribed files,
    though each runner Job was gone long before a scrape could reach it."""
    from kubescribe.store import Store

    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="3")
    prom = prometheus_factory([(f"127.0.0.1:{op.metrics_port}", {"component": "operator", **INSTALL})])
    prom.wait_for_targets_up()
    store = Store(redis_server.client())
    names = ("fox", "weather", "library")
    keys = {n: store.put_audio((speech_dir / f"{n}.wav").read_bytes()) for n in names}
    for n in names:
        requests_api.create(n, {"audio": {"redisKey": keys[n]}, "language": "en", "device": "cpu"})
    for n in names:
        status = requests_api.wait_phase(n, "Succeeded", "Failed")
        assert status["phase"] == "Succeeded" and status["cached"] is False, status
    for n in names[:2]:
        requests_api.create(f"{n}-again", {"audio": {"redisKey": keys[n]}, "language": "en", "device": "cpu"})
        assert requests_api.wait_phase(f"{n}-again", "Succeeded", "Failed", timeout=30)["cached"] is True

    (hit_rate,) = [expr for title, expr in panel_queries() if title == "Cache hit rate"]
    prom.wait_for(hit_rate, lambda r: r and float(r[0]["value"][1]) == 0.4, timeout=30)
    prom.wait_for('sum(kubescribe_file_size_bytes_count{component="operator"})',
                  lambda r: r and float(r[0]["value"][1]) == 3, timeout=30)
    sizes = sum(len((speech_dir / f"{n}.wav").read_bytes()) for n in names)
    assert prom.query_value('sum(kubescribe_file_size_bytes_sum{component="operator"})') == sizes
    assert prom.query_value('sum(kubescribe_transcriptions_total{component="operator",status="succeeded"})') == 5
    assert prom.query_value('sum(kubescribe_cache_operations_total{component="operator",operation="get"})') == 5
