"""The two quick-start commands as a new user on a stock Debian or Ubuntu runs them.

`make demo` with Debian's own /usr/bin/python3 (PEP 668: it refuses installs into the
system interpreter) in a fresh copy of the repository transcribes the sample through a
project venv, and nothing reaches the system interpreter; `make test` installs Python
packages only into that venv; no script runs Python with the repository root on sys.path,
where operator/ hides the standard library's ``operator``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, not ignored), no venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def scripts() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "Makefile", *sorted((ROOT / "hack").glob("*.sh"))]}


def test_make_demo_with_debians_own_python_transcribes_the_sample_in_a_venv(tmp_path):
    if not DEBIAN_PYTHON.exists() or shutil.which("make") is None:
        pytest.fail("the quick-start test needs Debian's /usr/bin/python3 and make: apt-get install python3 "
                    "python3-venv make (hack/setup.sh debs installs them)")
    clone = fresh_copy(tmp_path / "clone")
    proc = subprocess.run(["make", "demo", f"PY={DEBIAN_PYTHON}"], cwd=clone, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"quick brown fox", proc.stdout, re.I), proc.stdout
    assert "00:00:00,000 -->" in proc.stdout  # srt, as the quick start says
    venv = clone / ".venv"
    assert (venv / ".kubescribe-python").read_text().strip() == str(DEBIAN_PYTHON.resolve())
    # The demo installs the runner's packages only, and nothing into Debian's interpreter.
    assert [p.name.split("-")[2] for p in venv.glob(".kubescribe-installed-*")] == ["runner"]
    system = subprocess.run([str(DEBIAN_PYTHON), "-I", "-c", "import kubescribe"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert system.returncode != 0 and "No module named 'kubescribe'" in system.stderr
    venv_python = venv / "bin" / "python"
    # The venv sees the repository's benchmarks and tests after the standard library.
    probe = subprocess.run([str(venv_python), "-P", "-c", "import operator, benchmarks; print(operator.__file__)"],
                           cwd=clone, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert "/operator/" not in probe.stdout and probe.stdout.strip().endswith("operator.py"), probe.stdout

    # A second run reuses the venv: no second venv, no second install.
    again = subprocess.run(["make", "demo", f"PY={DEBIAN_PYTHON}"], cwd=clone, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "creating" not in again.stderr and "installing" not in again.stderr, again.stderr


def test_make_test_installs_python_packages_only_into_the_venv(tmp_path):
    clone = fresh_copy(tmp_path / "clone")
    dry = subprocess.run(["make", "-n", "test", "demo", "bench", "crds", "lint"], cwd=clone, capture_output=True,
                         text=True, check=True).stdout
    texts = {"make -n": dry, **scripts()}
    for name, text in texts.items():
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"\bpip3?\b.*\binstall\b", code):
                assert '"$VENV/bin/python" -I -m pip install' in code, (name, line)
            assert "--user" not in code and "--break-system-packages" not in code, (name, line)


def test_no_script_runs_python_with_the_repository_root_on_sys_path():
    """Every Python the Makefile and hack/ start runs with -P or -I (or is a venv console script)."""
    offenders = []
    for name, text in scripts().items():
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            for match in re.finditer(r"""("?\$\{?PY\}?"?|"\$\$py"|\bpython3\b|[\w./$"{}]*bin/python"?)((?:\s+-[A-Za-z]+)*)\s+(-m\b|-c\b|-\s|-$)""", code):
                flags = match.group(2).split()
                if not any(f in ("-P", "-I") or (f.startswith("-") and not f.startswith("--") and ("P" in f or "I" in f))
                           for f in flags):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "Python started without -P/-I:\n" + "\n".join(offenders)
