"""kube-score and kube-linter on the chart, against the answers in its README.

Both linters run on the all-options render (every optional object on: the gateway with
Ingress, HPA and PodDisruptionBudget, the in-chart Redis, NetworkPolicies and all
monitoring objects) and on a runner Job as the operator builds it (runner Jobs are not
part of the release, but they are what the chart's values configure). Every finding must
have a row in the README's "Linter findings answered" table naming its check and its
object, and every row must name findings that still fire: the table can neither miss a
finding nor keep one that is gone.

kube-linter runs with every built-in check but ``schema-validation``, which downloads
JSON schemas (``helm lint --strict`` and the install tests check the objects against a
real API server instead). kube-score checks against Kubernetes 1.29, the chart's oldest.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from kubescribe.models import parse_spec
from kubescribe.operator.jobs import build_job
from kubescribe.settings import OperatorSettings
from harness.envtest import find_tool
from harness.envtest.helm import Helm
from tests.test_chart import ALL_ON, CHART, GATEWAY_ALL_ON

README = CHART / "README.md"
RELEASE = "ks"
PREFIX = f"{RELEASE}-kubescribe"
#: Every optional object on.
ALL_OPTIONS = {
    **ALL_ON,
    **GATEWAY_ALL_ON,
    "monitoring": {**ALL_ON["monitoring"], "serviceMonitor": {"enabled": True}},
    "networkPolicy": {"enabled": True},
}
#: kube-score grades: 1 critical, 5 warning, 10 ok.
KUBE_SCORE_OK = 10

Finding = tuple[str, str, str]  # (tool, check, object as Kind/name without the release prefix)


def short_name(kind: str, name: str) -> str:
    if name == PREFIX:
        return f"{kind}/kubescribe"
    return f"{kind}/{name.removeprefix(PREFIX + '-')}"


def runner_job() -> dict:
    body = {"metadata": {"name": "talk", "namespace": "media", "uid": str(uuid.uuid4()), "generation": 1}}
    job = build_job(body, parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}}),
                    OperatorSettings(instance=RELEASE))
    job = {"apiVersion": "batch/v1", "kind": "Job", **job}
    job["metadata"]["name"] = f"{PREFIX}-runner"  # its name is per request; the table calls it Job/runner
    return job


def kube_score(path: Path) -> set[Finding]:
    proc = subprocess.run([find_tool("kube-score"), "score", "--kubernetes-version", "v1.29", "--output-format",
                           "json", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings
    found = set()
    for obj in json.loads(proc.stdout):
        for check in obj["checks"]:
            if not check["skipped"] and check["grade"] < KUBE_SCORE_OK:
                found.add(("kube-score", check["check"]["id"],
                           short_name(obj["type_meta"]["kind"], obj["object_meta"]["name"])))
    return found


def kube_linter(path: Path) -> set[Finding]:
    proc = subprocess.run([find_tool("kube-linter"), "lint", "--format", "json", "--add-all-built-in",
                           "--exclude", "schema-validation", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1) and proc.stdout, proc.stderr  # 1: findings
    found = set()
    for report in json.loads(proc.stdout)["Reports"] or []:
        obj = report["Object"]["K8sObject"]
        found.add(("kube-linter", report["Check"], short_name(obj["GroupVersionKind"]["Kind"], obj["Name"])))
    return found


def readme_answers() -> list[tuple[set[tuple[str, str]], set[str], str]]:
    """The table's rows: ({(tool, check)}, {objects, or "all"}, answer)."""
    text = README.read_text()
    section = text.split("## Linter findings answered", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("finding", "---"):
            continue
        checks = set()
        for tool, ids in re.findall(r"(kube-score|kube-linter)((?:\s*(?:,|/|and)?\s*`[^`]+`)+)", cells[0]):
            checks |= {(tool, i) for i in re.findall(r"`([^`]+)`", ids)}
        objects = set(re.findall(r"`([A-Za-z]+/[a-z0-9-]+)`", cells[1])) or ({"all"} if cells[1] == "all" else set())
        assert checks and objects and cells[2], f"a table row without checks, objects or answer: {line}"
        rows.append((checks, objects, cells[2]))
    assert rows, "no table under '## Linter findings answered'"
    return rows


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> set[Finding]:
    workdir = tmp_path_factory.mktemp("lint")
    helm = Helm(None)
    try:
        render = helm.template(RELEASE, CHART, namespace="media", values=ALL_OPTIONS).stdout
    finally:
        helm.close()
    (workdir / "chart").mkdir()
    (workdir / "chart" / "all-options.yaml").write_text(render)
    (workdir / "job").mkdir()
    (workdir / "job" / "runner-job.yaml").write_text(yaml.safe_dump(runner_job(), sort_keys=False))
    found: set[Finding] = set()
    for part in ("chart", "job"):  # apart: the runner policy selects pods that exist only at run time
        path = workdir / part
        found |= kube_score(next(path.iterdir())) | kube_linter(path)
    return found


def test_every_linter_finding_is_answered_in_the_chart_readme(findings):
    rows = readme_answers()
    unanswered = sorted(
        f for f in findings
        if not any((f[0], f[1]) in checks and ("all" in objects or f[2] in objects) for checks, objects, _ in rows))
    assert not unanswered, (
        "findings the chart README's 'Linter findings answered' table does not answer (add the object to a "
        "row, or fix the chart):\n" + "\n".join(f"  {t} {c} {o}" for t, c, o in unanswered))


def test_every_row_of_the_readme_table_still_fires(findings):
    stale = []
    for checks, objects, _ in readme_answers():
        for tool, check in sorted(checks):
            hits = {o for t, c, o in findings if (t, c) == (tool, check)}
            if not hits or ("all" not in objects and not hits & objects):
                stale.append(f"{tool} {check}: fires on none of {', '.join(sorted(objects))}")
        if "all" not in objects:
            quiet = {o for o in objects if not any((t, c) in checks and o == obj for t, c, obj in findings)}
            if quiet:
                stale.append(f"{', '.join(sorted(quiet))}: none of {sorted(c for _, c in checks)} fires on it")
    assert not stale, "rows of the chart README's linter table that no longer hold:\n" + "\n".join(stale)
