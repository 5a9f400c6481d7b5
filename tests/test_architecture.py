"""Layering, enforced by import-linter with the contracts in pyproject.toml: the shared
core imports no operator, runner or CLI code; the operator and the runner never import
each other; the CLI is a layer of its own on top; no import cycles.

grimp builds its graph from a package's directory, and setuptools' package-dir maps the
top-level operator/, runner/, gateway/ and cli/ folders into the kubescribe namespace; so the
check runs on a copy of the source laid out as it is installed.
"""

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"operator": "operator", "runner": "runner", "gateway": "gateway", "cli": "cli"}


def installed_layout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "samples")
    pkg = dest / "kubescribe"
    shutil.copytree(ROOT / "kubescribe", pkg, ignore=ignore)
    for name, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=ignore)
    return dest


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports with the contracts of pyproject.toml, on the copy at ``tree``."""
    # Through this interpreter, not a `lint-imports` found on PATH: that may be a shim
    # (pyenv's is a bash script) or another Python's.
    run = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", run, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree.parent,
                          env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)


def test_import_linter_contracts_hold(tmp_path):
    proc = lint_imports(installed_layout(tmp_path / "src"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def test_the_check_sees_the_operator_runner_and_cli(tmp_path):
    """The copy holds every mapped package, so a contract cannot pass on an empty graph."""
    tree = installed_layout(tmp_path / "src")
    script = ("import grimp; g = grimp.build_graph('kubescribe'); "
              "print('\\n'.join(sorted(g.modules)))")
    proc = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(tree)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    for module in ("kubescribe.operator.applier", "kubescribe.runner.pool", "kubescribe.cli.main",
                   "kubescribe.gateway.app", "kubescribe.outcomes"):
        assert module in modules, module


def test_a_broken_layer_is_caught(tmp_path):
    """The core importing the operator fails the check."""
    tree = installed_layout(tmp_path / "src")
    models = tree / "kubescribe" / "models.py"
    models.write_text(models.read_text() + "\nfrom kubescribe.operator import jobs  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0 and "kubescribe.models -> kubescribe.operator.jobs" in proc.stdout, proc.stdout


def test_the_gateway_importing_the_operator_is_caught(tmp_path):
    """The gateway talks to the operator only through TranscriptionRequests."""
    tree = installed_layout(tmp_path / "src")
    app = tree / "kubescribe" / "gateway" / "app.py"
    app.write_text(app.read_text() + "\nfrom kubescribe.operator import jobs  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0 and "kubescribe.gateway.app -> kubescribe.operator.jobs" in proc.stdout, proc.stdout


def test_the_operators_api_calls_importing_a_decision_is_caught(tmp_path):
    """kube.py (I/O) takes Kueue's names from kueue_api.py, never from the decisions."""
    tree = installed_layout(tmp_path / "src")
    kube = tree / "kubescribe" / "operator" / "kube.py"
    kube.write_text(kube.read_text() + "\nfrom kubescribe.operator import kueue  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0 and "kubescribe.operator.kube -> kubescribe.operator.kueue" in proc.stdout, proc.stdout


def test_no_top_level_operator_package_is_installed():
    """The standard library's `operator` must stay the one Python finds."""
    origin = importlib.util.find_spec("operator").origin
    assert origin is not None and origin.startswith(sysconfig.get_paths()["stdlib"]), origin
    import kubescribe.operator.jobs  # noqa: F401  (the operator lives in the namespace)
    import kubescribe.runner.engine  # noqa: F401
