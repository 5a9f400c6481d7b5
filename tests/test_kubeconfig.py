"""One credential loader for the CLI, the operator and the gateway (kubescribe.kubeconfig):
its precedence, tokens that expire renewed through the official loader, one-line errors.
The exec plugin is a real program the official client runs, as kubectl would."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
import yaml

from kubescribe import kubeconfig


def write_kubeconfig(path: Path, server: str, user: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
    }))
    return path


def exec_plugin(tmp_path: Path, expiry: str) -> dict:
    """A credential plugin that hands out tok-1, tok-2, ... and says when each expires."""
    counter = tmp_path / "issued"
    counter.write_text("0")
    script = tmp_path / "plugin.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(( $(cat {counter}) + 1 )); echo $n > {counter}\n'
        'printf \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        f'"status":{{"token":"tok-%s","expirationTimestamp":"{expiry}"}}}}\' $n\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
                     "interactiveMode": "Never"}}


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """A mounted ServiceAccount where the official in-cluster loader reads it."""
    from kubernetes.config import incluster_config

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return sa


@pytest.fixture
def home(tmp_path, monkeypatch):
    """~/.kube/config of a user, and no KUBECONFIG."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    path = write_kubeconfig(tmp_path / ".kube" / "config", "https://home.test:6443", {"token": "home"})
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path


def test_the_precedence_is_flag_then_kubeconfig_then_the_pod_then_home(tmp_path, monkeypatch, pod, home):
    flag = write_kubeconfig(tmp_path / "flag", "https://flag.test:6443", {"token": "flag"})
    env = write_kubeconfig(tmp_path / "env", "https://env.test:6443", {"token": "env"})
    monkeypatch.setenv("KUBECONFIG", str(env))
    assert kubeconfig.load(kubeconfig=str(flag)).host == "https://flag.test:6443"
    assert kubeconfig.load().host == "https://env.test:6443"
    monkeypatch.delenv("KUBECONFIG")
    cfg = kubeconfig.load()
    assert kubeconfig.source() == "in-cluster" and cfg.host == "https://10.96.0.1:443"
    assert kubeconfig.bearer_token(cfg) == "sa-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert kubeconfig.source() == "default kubeconfig"
    assert kubeconfig.bearer_token(kubeconfig.load()) == "home"


def test_an_exec_plugins_token_is_renewed_once_it_has_expired(tmp_path, monkeypatch):
    path = write_kubeconfig(tmp_path / "kc", "https://exec.test:6443", exec_plugin(tmp_path, "2000-01-01T00:00:00Z"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    cfg = kubeconfig.load()
    first, second = kubeconfig.bearer_token(cfg), kubeconfig.bearer_token(cfg)
    assert first.startswith("tok-") and second.startswith("tok-") and first != second


def test_an_exec_plugins_token_is_kept_while_valid(tmp_path, monkeypatch):
    path = write_kubeconfig(tmp_path / "kc", "https://exec.test:6443", exec_plugin(tmp_path, "2999-01-01T00:00:00Z"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    cfg = kubeconfig.load()
    assert kubeconfig.bearer_token(cfg) == kubeconfig.bearer_token(cfg) == "tok-1"


def test_the_gateway_renews_an_expired_token(tmp_path, monkeypatch):
    from kubescribe.gateway import kubeclient

    path = write_kubeconfig(tmp_path / "kc", "https://exec.test:6443", exec_plugin(tmp_path, "2000-01-01T00:00:00Z"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kubeclient, "TOKEN_CHECK_SECONDS", 0.0)
    client = kubeclient.KubeClient(kubeclient.load_credentials())
    try:
        seen = {client._headers()["Authorization"] for _ in range(3)}
    finally:
        asyncio.run(client.close())
    assert len(seen) == 3 and all(h.startswith("Bearer tok-") for h in seen), seen


def test_kopf_logs_in_with_the_same_loader(tmp_path, monkeypatch, pod):
    import kopf

    from kubescribe.operator.main import login

    env = write_kubeconfig(tmp_path / "env", "https://env.test:6443", {"token": "env"})
    monkeypatch.setenv("KUBECONFIG", str(env))
    info = login(settings=kopf.OperatorSettings())
    # kopf's own login_via_client would take the pod's ServiceAccount first
    assert (info.server, info.token) == ("https://env.test:6443", "env")
    monkeypatch.delenv("KUBECONFIG")
    assert login(settings=kopf.OperatorSettings()).token == "sa-token"


def test_no_credentials_is_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(kubeconfig.NoCredentials) as err:
        kubeconfig.load()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "missing") in message and "KUBECONFIG" in message


def test_the_cli_says_it_in_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "kubescribe.cli", "result", "nothing", "-n", "default", "--kubeconfig",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no Kubernetes credentials" in proc.stderr
