"""Status documents and conditions in the metav1.Condition shape."""

from __future__ import annotations

import itertools

import pytest

from kubescribe.operator import status as st
from kubescribe.outcomes import RunnerOutcome

REQUIRED = {"type", "status", "reason", "message", "lastTransitionTime"}


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves one second per reading, so every transition time differs."""
    ticks = (f"2024-05-01T10:00:{s:02d}Z" for s in itertools.count())
    monkeypatch.setattr(st, "now_rfc3339", lambda: next(ticks))


def by_type(conds):
    return {c["type"]: c for c in conds}


def test_new_condition_has_the_metav1_shape(clock):
    conds = st.set_condition(None, st.READY, False, "Queued", "waiting", 3)
    (c,) = conds
    assert REQUIRED <= set(c)
    assert c == {"type": "Ready", "status": "False", "reason": "Queued", "message": "waiting",
                 "lastTransitionTime": "2024-05-01T10:00:00Z", "observedGeneration": 3}


def test_status_strings_and_bools():
    assert st.set_condition([], "A", True, "R")[0]["status"] == "True"
    assert st.set_condition([], "A", False, "R")[0]["status"] == "False"
    assert st.set_condition([], "A", "Unknown", "R")[0]["status"] == "Unknown"


def test_transition_time_kept_when_status_unchanged(clock):
    first = st.set_condition(None, st.READY, False, "Queued", "waiting", 1)
    again = st.set_condition(first, st.READY, False, "Running", "transcribing", 1)
    c = by_type(again)[st.READY]
    assert c["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert (c["reason"], c["message"]) == ("Running", "transcribing")


def test_transition_time_changes_when_status_flips(clock):
    first = st.set_condition(None, st.READY, False, "Running", "", 1)
    flipped = st.set_condition(first, st.READY, True, "Succeeded", "done", 1)
    assert by_type(flipped)[st.READY]["status"] == "True"
    assert by_type(flipped)[st.READY]["lastTransitionTime"] != first[0]["lastTransitionTime"]
    back = st.set_condition(flipped, st.READY, False, "Queued", "", 2)
    assert by_type(back)[st.READY]["lastTransitionTime"] not in (
        first[0]["lastTransitionTime"], by_type(flipped)[st.READY]["lastTransitionTime"])


def test_observed_generation_updated_and_optional(clock):
    conds = st.set_condition(None, st.READY, False, "Queued", "", 1)
    conds = st.set_condition(conds, st.READY, False, "Queued", "", 5)
    assert by_type(conds)[st.READY]["observedGeneration"] == 5
    conds = st.set_condition(conds, st.READY, False, "Queued", "")  # None: left as it was
    assert by_type(conds)[st.READY]["observedGeneration"] == 5
    assert "observedGeneration" not in st.set_condition(None, "X", True, "R")[0]


def test_other_conditions_untouched_and_input_not_mutated(clock):
    original = [{"type": "Admitted", "status": "True", "reason": "JobCreated", "message": "",
                 "lastTransitionTime": "2020-01-01T00:00:00Z", "observedGeneration": 1}]
    snapshot = [dict(c) for c in original]
    out = st.set_condition(original, st.READY, True, "Succeeded", "", 1)
    assert original == snapshot
    assert [c["type"] for c in out] == ["Admitted", "Ready"]
    assert out[0] == snapshot[0]
    out2 = st.set_condition(out, "Admitted", False, "Requeued", "", 2)
    assert by_type(out)["Admitted"]["status"] == "True"  # out not mutated either
    assert [c["type"] for c in out2] == ["Admitted", "Ready"]  # order kept


def test_message_is_bounded():
    conds = st.set_condition(None, st.READY, False, "Failed", "x" * 40000)
    assert len(conds[0]["message"]) == 32000
    conds = st.set_condition(conds, st.READY, False, "Failed", "y" * 40000)
    assert len(conds[0]["message"]) == 32000


def body(status=None, generation=2):
    return {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": generation},
            "status": status or {}}


def test_queued_keeps_queued_at_within_a_generation(clock):
    q1 = st.queued(body(), cache_key="k", audio_sha="s", position=4)
    assert q1["phase"] == "Queued" and q1["observedGeneration"] == 2 and q1["queuePosition"] == 4
    assert by_type(q1["conditions"])[st.READY]["status"] == "False"
    assert by_type(q1["conditions"])[st.ADMITTED]["status"] == "False"
    q2 = st.queued(body(q1), cache_key="k", audio_sha="s")
    assert q2["queuedAt"] == q1["queuedAt"]
    q3 = st.queued(body(q1, generation=3), cache_key="k", audio_sha="s")
    assert q3["queuedAt"] != q1["queuedAt"] and q3["observedGeneration"] == 3
    for key in ("jobName", "startedAt", "completedAt", "cached", "outputs"):
        assert q1[key] is None  # merge patch: clears what an earlier run left


def test_succeeded_and_failed(clock):
    running = {"conditions": st.set_condition(None, st.READY, False, "Running", "", 2)}
    ok = st.succeeded(body(running), RunnerOutcome(ok=True, cached=False, language="en", text_preview="t" * 500,
                                                   processing_seconds=None), message="done")
    assert ok["phase"] == "Succeeded" and ok["cached"] is False and ok["language"] == "en"
    assert len(ok["textPreview"]) == 200 and "processingSeconds" not in ok
    conds = by_type(ok["conditions"])
    assert conds[st.READY]["status"] == "True" and conds[st.CACHED]["status"] == "False"
    assert conds[st.READY]["lastTransitionTime"] != running["conditions"][0]["lastTransitionTime"]
    bad = st.failed(body(running), "BadAudio", "not audio")
    assert bad["phase"] == "Failed" and bad["reason"] == "BadAudio" and bad["queuePosition"] is None
    assert by_type(bad["conditions"])[st.READY]["reason"] == "BadAudio"
    # Ready stayed False: its transition time is that of the Running condition.
    assert by_type(bad["conditions"])[st.READY]["lastTransitionTime"] == running["conditions"][0]["lastTransitionTime"]


def test_succeeded_copies_the_outputs_written(clock):
    urls = ["s3://team-out/t/ns/req.json", "s3://team-out/t/ns/req.srt"]
    ok = st.succeeded(body(), RunnerOutcome(ok=True, outputs=urls), message="done")
    assert ok["outputs"] == urls
    assert "outputs" not in st.succeeded(body(), RunnerOutcome(ok=True), message="done")
