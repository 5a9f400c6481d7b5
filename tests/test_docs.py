"""The README and docs/architecture.md say what the code does: the reason table, the
operator's settings, and the decisions the state machine names."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from kubescribe.outcomes import REASONS
from kubescribe.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def test_the_readme_reason_table_is_the_code_table():
    block = README.split("<!-- reasons:begin -->")[1].split("<!-- reasons:end -->")[0]
    rows = [ln for ln in block.strip().splitlines()[2:]]
    expected = [f"| `{r.name}` | {r.error_type} | {'no' if r.final else 'yes'} | "
                f"{r.exit_code if r.exit_code is not None else ''} | {r.help} |".replace("|  |", "| |")
                for r in REASONS.values()]
    assert rows == expected


def test_every_operator_setting_is_in_the_readme():
    for name, field in OperatorSettings.model_fields.items():
        env = field.validation_alias or f"KUBESCRIBE_{name.upper()}"
        assert f"| `{env}` |" in README, env


def test_the_state_machine_names_decisions_that_exist():
    named = set(re.findall(r"`((?:intake|runs|lifecycle|pods|scheduler|pool_size|kueue|progress_writes|cache_lookup)"
                           r"\.(?!py`)[a-z_]+)`", ARCHITECTURE))
    assert len(named) >= 10, named
    for dotted in named:
        module, func = dotted.split(".")
        assert hasattr(importlib.import_module(f"kubescribe.operator.{module}"), func), dotted


#: The operator's rooms (docs/architecture.md, One path through the operator): class -> module.
ROOMS = {"Applier": "applier", "RequestHandler": "request_handler", "JobHandler": "job_handler",
         "PoolOutcomeHandler": "pool_outcome_handler", "Resync": "resync", "ProgressReporter": "progress_reporter",
         "Admitter": "admitter", "Gauges": "health", "Health": "health"}


def test_the_operator_rooms_the_architecture_names_exist_with_their_methods():
    named = set(re.findall(rf"`((?:{'|'.join(ROOMS)})\.[a-z_]+)`", ARCHITECTURE))
    assert len(named) >= 8, named
    for dotted in named:
        cls, method = dotted.split(".")
        assert hasattr(getattr(importlib.import_module(f"kubescribe.operator.{ROOMS[cls]}"), cls), method), dotted
    for cls, module in ROOMS.items():
        assert f"`{module}.py`" in ARCHITECTURE, module


def test_no_document_outside_the_repository_is_cited():
    for path in [*ROOT.glob("kubescribe/*.py"), *ROOT.glob("operator/*.py"), *ROOT.glob("runner/*.py"),
                 *ROOT.glob("cli/*.py")]:
        text = path.read_text()
        assert "DESIGN.md" not in text, path
        for cited in re.findall(r"docs/[\w.-]+\.md", text):
            assert (ROOT / cited).exists(), (path, cited)


def test_every_gateway_setting_is_in_the_readme():
    from kubescribe.settings import GatewaySettings

    for name, field in GatewaySettings.model_fields.items():
        env = field.validation_alias or f"KUBESCRIBE_{name.upper()}"
        assert f"`{env}`" in README, env
    for route in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/transcriptions/{name}/events",
                  "/v1/transcriptions/{name}/analysis", "/api/admin/cache/stats", "/api/admin/cache/clear",
                  "/health", "/readyz"):
        assert f"`{route}" in README or f"`GET {route}" in README or f"`POST {route}" in README, route
