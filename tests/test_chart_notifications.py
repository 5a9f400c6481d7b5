"""The chart's notification values: install-wide sinks and the signing key reach the
operator as settings it parses back; reading Secrets is opt-in (get, never list); the
operator's NetworkPolicy opens the sinks' ranges only when listed; the schema refuses a
sink that is not an http(s) URL."""

from __future__ import annotations


import pytest

from kubescribe.settings import OperatorSettings
from tests.test_chart import deployment_env, kinds, offline_helm, render, settings_from  # noqa: F401 (a fixture)

SINKS = [{"url": "http://broker-ingress.knative-eventing.svc.cluster.local/media/default"},
         {"url": "https://hooks.example.com/k", "events": ["Failed"], "mode": "binary"}]


def secret_rules(docs, kind="ClusterRole"):
    role = kinds(docs)[(kind, "ks-kubescribe-operator")]
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def test_the_operator_reads_no_secret_unless_asked(offline_helm):
    assert secret_rules(render(offline_helm)) == []
    on = {"notifications": {"readSigningSecrets": True}}
    expected = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert secret_rules(render(offline_helm, on)) == expected
    assert secret_rules(render(offline_helm, {**on, "watchNamespace": "work"}), "Role") == expected


def test_install_wide_sinks_and_key_reach_the_operator_settings(offline_helm, monkeypatch):
    values = {"notifications": {"sinks": SINKS, "signingSecret": {"name": "notify-key", "key": "whsec"},
                                "workers": 8, "timeoutSeconds": 2.5, "maxAttempts": 4, "backoffSeconds": 60,
                                "backoffCapSeconds": 3600}}
    env = deployment_env(render(offline_helm, values))
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    refs = {e["name"]: e["valueFrom"] for e in env if "valueFrom" in e}
    assert refs["KUBESCRIBE_NOTIFY_SIGNING_KEY"] == {"secretKeyRef": {"name": "notify-key", "key": "whsec"}}
    s = settings_from(monkeypatch, plain)
    assert [x.model_dump(exclude_unset=True) for x in s.notify_sinks] == SINKS
    assert (s.notify_workers, s.notify_timeout_seconds, s.notify_max_attempts) == (8, 2.5, 4)
    assert (s.notify_backoff_seconds, s.notify_backoff_cap_seconds) == (60, 3600)
    default = {e["name"] for e in deployment_env(render(offline_helm))}
    assert "KUBESCRIBE_NOTIFY_SIGNING_KEY" not in default and "KUBESCRIBE_NOTIFY_SINKS" in default


def test_the_gateway_gets_the_install_key_for_its_callers_keys(offline_helm):
    values = {"gateway": {"enabled": True}, "notifications": {"signingSecret": {"name": "notify-key"}}}
    dep = kinds(render(offline_helm, values))[("Deployment", "ks-kubescribe-gateway")]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBESCRIBE_NOTIFY_SIGNING_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "notify-key", "key": "key"}}


def test_the_operator_policy_opens_sink_ranges_only_when_listed(offline_helm):
    base = {"networkPolicy": {"enabled": True, "apiServerCidrs": ["172.18.0.2/32"]}}
    closed = kinds(render(offline_helm, base))[("NetworkPolicy", "ks-kubescribe-operator")]["spec"]["egress"]
    assert not [e for e in closed if any("ipBlock" in t and t["ipBlock"]["cidr"] == "10.20.0.0/16"
                                         for t in e.get("to", []))]
    values = {"networkPolicy": {**base["networkPolicy"], "notifyEgressCidrs": ["10.20.0.0/16"],
                                "notifyEgressPorts": [8443]}}
    egress = kinds(render(offline_helm, values))[("NetworkPolicy", "ks-kubescribe-operator")]["spec"]["egress"]
    assert egress[-1] == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 8443, "protocol": "TCP"}]}


@pytest.mark.parametrize("sink", [{"url": "ftp://x/y"}, {"url": "https://x/", "events": ["Running"]},
                                  {"url": "https://x/", "colour": "blue"}])
def test_the_schema_refuses_a_bad_sink(offline_helm, sink):
    with pytest.raises(Exception):
        render(offline_helm, {"notifications": {"sinks": [sink]}})


def test_a_bad_install_sink_is_a_settings_error(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("KUBESCRIBE_NOTIFY_SINKS", '[{"events": ["Succeeded"]}]')
    with pytest.raises(ValidationError, match="url"):
        OperatorSettings()
    monkeypatch.setenv("KUBESCRIBE_NOTIFY_SINKS", '[{"url": "ftp://x/y"}]')
    with pytest.raises(ValidationError, match="url"):
        OperatorSettings()
