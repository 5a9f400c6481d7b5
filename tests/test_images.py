"""hack/build-images.sh without building anything: what it would build, what its cache
keys depend on, and the Dockerfile facts it relies on. Fast and offline: only the
script's --help, --dry-run and --print-manifest modes run here (no buildah, no network).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_dockerfiles import hadolint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "build-images.sh"
NAMES = ("base", "operator", "runner", "redis", "pause")
PIP_ARGS = ("PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")


def _run(*args: str, root: Path = ROOT, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBESCRIBE_IMAGES_DIR=str(cache))
    return subprocess.run(["bash", str(root / "hack" / "build-images.sh"), *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=root)


def _plan(root: Path, cache: Path) -> dict[str, tuple[str, str, str]]:
    """name -> (ref, archive, state) from --dry-run."""
    proc = _run("--dry-run", root=root, cache=cache)
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(\S+)\s+(\S+)\s+(\S+)\s+\[(.*)\]$", line)
        assert m, f"unexpected --dry-run line: {line!r}"
        out[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return out


def test_help_names_every_image(tmp_path):
    proc = _run("--help", cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert re.search(rf"^\s+{name}\s", proc.stdout, re.M), f"--help does not describe {name}"
    assert _run("no-such-image", cache=tmp_path).returncode == 2


def test_dry_run_lists_refs_and_archives_without_building(tmp_path):
    plan = _plan(ROOT, tmp_path)
    assert set(plan) == set(NAMES)
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for name, (ref, archive, state) in plan.items():
        if name == "pause" and state.startswith("unknown"):
            continue  # no Go, or kubernetes' module is not in the local module cache
        assert ref.startswith("localhost/kubescribe/"), ref
        assert re.fullmatch(rf"{re.escape(str(tmp_path))}/{name}-[0-9a-f]{{64}}\.tar", archive), archive
        assert state == "to build"
    # A changed image gets a new tag: the tags carry the inputs' hash.
    assert re.fullmatch(rf"localhost/kubescribe/kubescribe-operator:{re.escape(version)}-[0-9a-f]{{12}}", plan["operator"][0])
    assert re.fullmatch(rf"localhost/kubescribe/kubescribe-runner:{re.escape(version)}-[0-9a-f]{{12}}", plan["runner"][0])
    assert re.fullmatch(r"localhost/kubescribe/redis:7-[0-9a-f]{12}", plan["redis"][0])
    assert plan["operator"][1].split("-")[-1][:12] == plan["operator"][0].rsplit("-", 1)[1]
    assert not (tmp_path / "manifest.json").exists(), "--dry-run must not write the manifest"
    assert not (tmp_path / "buildah").exists(), "--dry-run must not touch buildah storage"


def test_print_manifest_is_in_the_cache_dir(tmp_path):
    proc = _run("--print-manifest", cache=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path / "manifest.json")


def test_cache_keys_follow_what_goes_into_each_image(tmp_path):
    """A copy of the repository's build inputs: editing a file the operator image copies
    changes its tag (and the runner's, which copies the same folders), but neither redis
    nor the base; a file .dockerignore leaves out changes nothing."""
    repo = tmp_path / "repo"
    for name in ("pyproject.toml", "README.md", ".dockerignore", "Dockerfile.operator", "Dockerfile.runner"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    # Every folder the Dockerfiles copy in, so a new package folder cannot be forgotten here.
    copied = {m.group(1) for df in ("Dockerfile.operator", "Dockerfile.runner")
              for m in re.finditer(r"^COPY (\w+) \./\1$", (ROOT / df).read_text(), re.M)}
    assert {"kubescribe", "operator", "runner"} <= copied, copied
    for folder in sorted(copied | {"hack"}):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    before = _plan(repo, cache)
    assert _plan(repo, cache) == before, "the plan is deterministic"

    (repo / "operator" / "__pycache__").mkdir(exist_ok=True)
    (repo / "operator" / "__pycache__" / "junk.pyc").write_bytes(b"ignored by .dockerignore")
    assert _plan(repo, cache) == before

    with open(repo / "operator" / "jobs.py", "a") as f:
        f.write("\n# changed\n")
    after = _plan(repo, cache)
    assert after["operator"][0] != before["operator"][0]
    assert after["runner"][0] != before["runner"][0]
    assert after["redis"] == before["redis"] and after["base"] == before["base"]


def _stages(name: str) -> list[str]:
    """The Dockerfile's text split at each FROM: [preamble, stage 1, stage 2, ...]."""
    return re.split(r"^FROM ", (ROOT / name).read_text(), flags=re.M)


def test_dockerfile_defaults_stay_the_upstream_base_images():
    operator = (ROOT / "Dockerfile.operator").read_text()
    runner = (ROOT / "Dockerfile.runner").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", operator, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d\d\.\d\d$", runner, re.M)
    # The GPU image keeps torch by default; the CPU test image is the same file with
    # RUNNER_EXTRAS=runner, and only imports torch when the gpu extra is in.
    assert re.search(r"^ARG RUNNER_EXTRAS=runner,gpu$", runner, re.M)
    assert '".[${RUNNER_EXTRAS}]"' in runner
    assert re.search(r'\*,gpu,\*\) /opt/kubescribe/bin/python -I -c "import torch"', runner)


@pytest.mark.parametrize("name", ("Dockerfile.operator", "Dockerfile.runner"))
def test_pip_settings_are_build_stage_args_only(name):
    preamble, build, final = _stages(name)
    for arg in PIP_ARGS:
        assert re.search(rf"^ARG {arg}$", build, re.M), f"{name}: build stage lacks ARG {arg}"
        assert arg not in final, f"{name}: {arg} would reach the final image"
    assert "AS build" in build.splitlines()[0]


def test_redis_image_matches_what_the_chart_runs():
    text = (ROOT / "hack" / "images" / "redis.Dockerfile").read_text()
    chart = (ROOT / "charts" / "kubescribe" / "templates" / "redis.yaml").read_text()
    uid = re.search(r"runAsUser: (\d+)", chart).group(1)
    assert f"--uid {uid} " in text and f"--gid {uid} " in text
    # The chart's args go through the image's entrypoint: a shell that writes the password
    # into a config file in memory, then execs redis-server with it (and protected mode off
    # explicitly, since the entrypoint adds that only when it starts redis-server itself).
    assert re.search(r"args:\s*\n(\s*#.*\n)*\s*- sh\n\s*- -c\n", chart), "the chart starts a shell by args"
    assert "exec redis-server /run/redis-config/redis.conf" in chart
    assert re.search(r"- --protected-mode\n\s*- \"no\"", chart)
    assert "EXPOSE 6379" in text and "WORKDIR /data" in text
    assert (ROOT / "hack" / "images" / "redis-entrypoint.sh").stat().st_mode & 0o111


def test_redis_dockerfile_is_hadolint_clean():
    proc = subprocess.run([hadolint(), "--failure-threshold", "info", str(ROOT / "hack" / "images" / "redis.Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", ("hack/build-images.sh", "hack/images/redis.Dockerfile",
                                  "hack/images/redis-entrypoint.sh"))
def test_no_registry_or_mirror_address_is_written_down(path):
    """Tools use the machine's configured apt sources, pip index and Go proxy."""
    assert "://" not in (ROOT / path).read_text()
