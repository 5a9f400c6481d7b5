"""Layering, enforced by import-linter with the contracts in pyproject.toml: the shared
core imports no operator, runner or CLI code; the operator and the runner never import
each other; the CLI is a layer of its own on top; no import cycles. The test harness
(harness/) imports neither the tests nor the benchmarks; benchmarks reach test processes
only through it; product code imports none of the three.

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
#: Top-level packages beside kubescribe in the import graph (pyproject's root_packages).
BESIDE = ("harness", "tests", "benchmarks")


def installed_layout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "samples")
    pkg = dest / "kubescribe"
    shutil.copytree(ROOT / "kubescribe", pkg, ignore=ignore)
    for name, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=ignore)
    for name in BESIDE:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "promtool"))
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
    """The copy holds every mapped package and the harness, tests and benchmarks, so a
    contract cannot pass on an empty graph."""
    tree = installed_layout(tmp_path / "src")
    script = ("import grimp; g = grimp.build_graph('kubescribe', 'harness', 'tests', 'benchmarks'); "
              "print('\\n'.join(sorted(g.modules)))")
    proc = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(tree)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    for module in ("kubescribe.operator.applier", "kubescribe.runner.pool", "kubescribe.cli.main",
                   "kubescribe.gateway.app", "kubescribe.outcomes", "harness.process", "harness.envtest.cluster",
                   "tests.fixtures.core", "benchmarks.common"):
        assert module in modules, module


def test_the_harness_contracts_are_declared():
    """Without these contracts the checks below would pass on nothing: the graph holds the
    harness, tests and benchmarks, and each rule keeping them apart is in pyproject.toml."""
    import tomllib

    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(linter["root_packages"]) >= {"kubescribe", *BESIDE}, linter.get("root_packages")
    forbidden = {(tuple(c["source_modules"]), frozenset(c["forbidden_modules"]))
                 for c in linter["contracts"] if c["type"] == "forbidden"}
    assert (("kubescribe",), frozenset({"harness", "tests", "benchmarks"})) in forbidden
    assert (("harness",), frozenset({"tests", "benchmarks", "pytest"})) in forbidden
    assert (("benchmarks",), frozenset({"tests"})) in forbidden


def broken_by(tmp_path, path: str, line: str) -> str:
    """lint-imports' report on the installed layout with ``line`` added to ``path``; it
    must fail."""
    tree = installed_layout(tmp_path / "src")
    target = tree / path
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


def test_the_harness_importing_the_tests_is_caught(tmp_path):
    """harness/ is what tests and benchmarks share; it never reaches back into them."""
    report = broken_by(tmp_path, "harness/process.py", "from tests.support import promql")
    assert "harness.process -> tests.support.promql" in report, report


def test_product_code_importing_the_harness_is_caught(tmp_path):
    report = broken_by(tmp_path, "kubescribe/store.py", "from harness import speech")
    assert "kubescribe.store -> harness.speech" in report, report


def test_a_broken_layer_is_caught(tmp_path):
    """The core importing the operator fails the check."""
    report = broken_by(tmp_path, "kubescribe/models.py", "from kubescribe.operator import jobs")
    assert "kubescribe.models -> kubescribe.operator.jobs" in report, report


def test_the_gateway_importing_the_operator_is_caught(tmp_path):
    """The gateway talks to the operator only through TranscriptionRequests."""
    report = broken_by(tmp_path, "kubescribe/gateway/app.py", "from kubescribe.operator import jobs")
    assert "kubescribe.gateway.app -> kubescribe.operator.jobs" in report, report


def test_the_operators_api_calls_importing_a_decision_is_caught(tmp_path):
    """kube.py (I/O) takes Kueue's names from kueue_api.py, never from the decisions."""
    report = broken_by(tmp_path, "kubescribe/operator/kube.py", "from kubescribe.operator import kueue")
    assert "kubescribe.operator.kube -> kubescribe.operator.kueue" in report, report


def test_no_top_level_operator_package_is_installed():
    """The standard library's `operator` must stay the one Python finds."""
    origin = importlib.util.find_spec("operator").origin
    assert origin is not None and origin.startswith(sysconfig.get_paths()["stdlib"]), origin
    import kubescribe.operator.jobs  # noqa: F401  (the operator lives in the namespace)
    import kubescribe.runner.engine  # noqa: F401


# -- room sizes and names ------------------------------------------------------------------------
#: The declarative schemas: one field after another, read as a list, not a room to split.
SCHEMAS = {"kubescribe/models.py", "kubescribe/settings.py"}
MAX_FILE_LINES, MAX_CLASS_LINES = 350, 250


def product_files() -> list[Path]:
    return sorted(p for d in ("kubescribe", *MAPPED.values()) for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_product_room_grows_too_big():
    """A file above 350 lines or a class above 250 has become a hub again: split it."""
    import ast

    too_big = []
    for path in product_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if rel not in SCHEMAS and len(text.splitlines()) > MAX_FILE_LINES:
            too_big.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_big.append(f"{rel}: class {node.name}, {node.end_lineno - node.lineno + 1} lines")
    assert len(product_files()) > 50
    assert not too_big, too_big


def test_no_two_product_modules_share_a_name():
    """A module's name says what it decides, once: `models` in the core and in the CLI would
    make every import of one a question of which (entry points and packages excepted)."""
    seen: dict[str, list[str]] = {}
    for path in product_files():
        if path.stem not in ("__init__", "main", "__main__"):
            seen.setdefault(path.stem, []).append(path.relative_to(ROOT).as_posix())
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
