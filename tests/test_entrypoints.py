"""The programs' entry points fail in one line with a documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubescribe import __version__


def run(tmp_path, module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUBESCRIBE_") and k != "KUBECONFIG"}
    clean.update(HOME=str(tmp_path), **env)
    # cwd outside the repository: its operator/ folder would shadow the standard library's.
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=clean)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_the_operator_tells_its_version_and_usage(tmp_path):
    proc = run(tmp_path, "kubescribe.operator.main", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"kubescribe-operator {__version__}"
    usage = run(tmp_path, "kubescribe.operator.main", "--help")
    assert usage.returncode == 0 and "KUBESCRIBE_" in usage.stdout


def test_a_bad_operator_setting_names_the_variable(tmp_path):
    proc = run(tmp_path, "kubescribe.operator.main", KUBESCRIBE_GPU_BUDGET="0")
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("kubescribe-operator: invalid setting KUBESCRIBE_GPU_BUDGET='0'")


def test_the_operator_without_cluster_credentials_exits_instead_of_waiting(tmp_path):
    proc = run(tmp_path, "kubescribe.operator.main", KUBECONFIG=str(tmp_path / "missing.kubeconfig"))
    assert proc.returncode == 2
    line = one_line(proc)
    assert "no Kubernetes credentials" in line and "set KUBECONFIG" in line


@pytest.mark.parametrize("command", ["run", "pool"])
def test_a_bad_runner_setting_is_bad_input_not_a_retry(tmp_path, command):
    proc = run(tmp_path, "kubescribe.runner.main", command, KUBESCRIBE_METRICS_PORT="nine")
    assert proc.returncode == 65  # the podFailurePolicy fails the Job at once: a retry cannot help
    assert one_line(proc).startswith("kubescribe-runner: invalid setting KUBESCRIBE_METRICS_PORT='nine'")


def test_the_gateway_tells_its_version_and_usage(tmp_path):
    proc = run(tmp_path, "kubescribe.gateway.main", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"kubescribe-gateway {__version__}"
    usage = run(tmp_path, "kubescribe.gateway.main", "--help")
    assert usage.returncode == 0 and "KUBESCRIBE_" in usage.stdout


def test_a_bad_gateway_setting_names_the_variable(tmp_path):
    proc = run(tmp_path, "kubescribe.gateway.main", KUBESCRIBE_GATEWAY_MAX_UPLOAD_BYTES="lots")
    assert proc.returncode == 2
    assert one_line(proc).startswith("kubescribe-gateway: invalid setting KUBESCRIBE_GATEWAY_MAX_UPLOAD_BYTES='lots'")


def test_the_gateway_without_cluster_credentials_or_with_a_bad_key_file_exits(tmp_path):
    proc = run(tmp_path, "kubescribe.gateway.main", KUBECONFIG=str(tmp_path / "missing.kubeconfig"))
    assert proc.returncode == 2
    assert one_line(proc).startswith("kubescribe-gateway: no Kubernetes credentials from kubeconfig")
    keys = tmp_path / "keys.json"
    keys.write_text("{not json")
    proc = run(tmp_path, "kubescribe.gateway.main", KUBESCRIBE_GATEWAY_API_KEYS_FILE=str(keys))
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"kubescribe-gateway: KUBESCRIBE_GATEWAY_API_KEYS_FILE={keys}: not a valid")
