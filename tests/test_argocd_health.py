"""The Argo CD health check of TranscriptionRequests, run by a real Lua 5.1 interpreter.

Argo CD runs health scripts with gopher-lua (Lua 5.1) and a global ``obj`` holding the
resource; lupa's ``lua51`` runtime is the same language, so what passes here is what
Argo CD evaluates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gitops" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "gitops" / "argocd" / "argocd-cm.yaml"
KEY = "resource.customizations.health.kubescribe.io_TranscriptionRequest"


def _to_lua(lua, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(obj: dict) -> dict[str, str]:
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    # Argo CD runs the script as a chunk and reads the table it returns.
    result = lua.execute(SCRIPT.read_text())
    return dict(result.items())


def request(status: dict | None = None, generation: int = 1) -> dict:
    obj = {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
           "metadata": {"name": "talk", "namespace": "media", "generation": generation},
           "spec": {"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}, "model": "tiny.en"}}
    if status is not None:
        obj["status"] = status
    return obj


def ready(status: str, reason: str, message: str = "") -> list[dict]:
    return [{"type": "Ready", "status": status, "reason": reason, "message": message,
             "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}]


def test_no_status_is_progressing():
    assert health(request()) == {"status": "Progressing", "message": "Waiting for the kubescribe operator"}
    assert health(request({}))["status"] == "Progressing"


@pytest.mark.parametrize(("phase", "message"), [
    ("Pending", "cannot reach Redis to look up the result cache; retrying"),
    ("Queued", "position 2 in the queue"),
    ("Running", "runner Job kubescribe-talk-1234abcd created"),
])
def test_pending_queued_running_are_progressing(phase, message):
    got = health(request({"phase": phase, "observedGeneration": 1, "message": message,
                          "conditions": ready("False", phase, message)}))
    assert got == {"status": "Progressing", "message": f"{phase}: {message}"}


def test_succeeded_is_healthy():
    got = health(request({"phase": "Succeeded", "observedGeneration": 1, "cached": False,
                          "reason": "Transcribed", "message": "transcribed by Job kubescribe-talk-1234abcd",
                          "conditions": ready("True", "Succeeded")}))
    assert got == {"status": "Healthy", "message": "transcribed by Job kubescribe-talk-1234abcd"}
    cached = health(request({"phase": "Succeeded", "observedGeneration": 1, "cached": True}))
    assert cached == {"status": "Healthy", "message": "Answered from the result cache"}


def test_failed_is_degraded_with_the_reason_and_message():
    got = health(request({"phase": "Failed", "observedGeneration": 1, "reason": "BadAudio",
                          "message": "not a readable audio file",
                          "conditions": ready("False", "BadAudio", "not a readable audio file")}))
    assert got == {"status": "Degraded", "message": "BadAudio: not a readable audio file"}
    assert health(request({"phase": "Failed", "observedGeneration": 1}))["status"] == "Degraded"


def test_stale_observed_generation_is_progressing_whatever_the_phase():
    for phase in ("Succeeded", "Failed"):
        got = health(request({"phase": phase, "observedGeneration": 1, "message": "old result"}, generation=2))
        assert got == {"status": "Progressing", "message": "Waiting for the operator to handle generation 2"}
    # A phase without any observedGeneration cannot be trusted either.
    assert health(request({"phase": "Succeeded"}))["status"] == "Progressing"


def test_unknown_phase_is_unknown():
    assert health(request({"phase": "Archived", "observedGeneration": 1}))["status"] == "Unknown"


def test_argocd_cm_snippet_carries_the_same_script():
    doc = yaml.safe_load(ARGOCD_CM.read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    assert doc["data"][KEY] == SCRIPT.read_text(), "gitops/argocd/argocd-cm.yaml drifted from health.lua"
