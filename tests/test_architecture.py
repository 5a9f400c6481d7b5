"""Layering: the shared core never imports the operator, the runner or the CLI, and the
operator and the runner never import each other.

Checked on the source with ``ast`` (import-linter cannot follow setuptools' package-dir
mapping of the top-level operator/ and runner/ folders into the kubescribe namespace).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "core": sorted(p for p in (ROOT / "kubescribe").glob("*.py") if p.name not in ("cli.py",)),
    "operator": sorted((ROOT / "operator").rglob("*.py")),
    "runner": sorted((ROOT / "runner").rglob("*.py")),
}
FORBIDDEN = {
    "core": ("kubescribe.operator", "kubescribe.runner", "kubescribe.cli", "kopf", "kubernetes", "faster_whisper"),
    "operator": ("kubescribe.runner", "kubescribe.cli", "faster_whisper", "ctranslate2", "torch"),
    "runner": ("kubescribe.operator", "kubescribe.cli", "kopf"),
}


def imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_layers_are_respected():
    problems = []
    for layer, files in LAYERS.items():
        assert files, layer
        for path in files:
            for name in imports(path):
                for bad in FORBIDDEN[layer]:
                    if name == bad or name.startswith(bad + "."):
                        problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {name}")
    assert not problems, "\n".join(problems)


def test_no_top_level_operator_package_is_installed():
    """The standard library's `operator` must stay the one Python finds."""
    import importlib.util
    import sysconfig

    origin = importlib.util.find_spec("operator").origin
    assert origin is not None and origin.startswith(sysconfig.get_paths()["stdlib"]), origin
    import kubescribe.operator.jobs  # noqa: F401  (the operator lives in the namespace)
    import kubescribe.runner.engine  # noqa: F401
