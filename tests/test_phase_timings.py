"""Where a request's seconds go: the runner's timings in its outcome, the operator's pod
start, and the ``kubescribe_request_phase_seconds`` histogram they feed."""

import json
import os
import subprocess
import sys
import time

import pytest

from kubescribe.metrics import PHASES, Metrics, OperatorMetrics
from kubescribe.outcomes import RunnerOutcome, Timings, timings
from kubescribe.store import Store
from harness.envtest import free_port, wait_for


def _count(metrics: Metrics, phase: str) -> float:
    return metrics.registry.get_sample_value("kubescribe_request_phase_seconds_count", {"phase": phase}) or 0.0


def _sum(metrics: Metrics, phase: str) -> float:
    return metrics.registry.get_sample_value("kubescribe_request_phase_seconds_sum", {"phase": phase}) or 0.0


def test_timings_are_camel_case_milliseconds_and_small_on_the_wire():
    t = timings(started_at=1796190787.0328097, startup=0.41234, model_load=1.00049, fetch=0.0021, transcription=2.5)
    outcome = RunnerOutcome(ok=True, timings=t, text_preview="x" * 200)
    doc = json.loads(outcome.to_json())
    assert doc["timings"] == {"startedAt": 1796190787.033, "startup": 0.412, "modelLoad": 1.0, "fetch": 0.002,
                              "transcription": 2.5}
    assert len(json.dumps(doc["timings"])) < 130  # the termination message keeps 4096 bytes
    assert RunnerOutcome.model_validate(doc).timings == t


def test_phases_name_only_what_was_timed_and_never_go_negative():
    assert Timings(fetch=0.01, model_load=0.0).phases() == {"model_load": 0.0, "fetch": 0.01}
    assert Timings(startup=-0.002).phases() == {"startup": 0.0}  # clocks of two processes
    assert Timings().phases() == {}


def test_every_phase_is_exported_at_zero_from_the_start():
    m = Metrics()
    for phase in PHASES:
        assert _count(m, phase) == 0
        assert m.registry.get_sample_value("kubescribe_request_phase_seconds_count", {"phase": phase}) == 0


def test_an_outcome_with_timings_feeds_each_phase_and_keeps_the_realtime_factor():
    m = Metrics()
    outcome = RunnerOutcome(ok=True, audio_duration_seconds=10.0, processing_seconds=2.0,
                            timings=timings(started_at=1.0, startup=0.5, model_load=1.25, fetch=0.01,
                                            transcription=2.0))
    m.observe_outcome("tiny.en", outcome)
    assert {p: _sum(m, p) for p in PHASES} == {"queue": 0, "pod_start": 0, "startup": 0.5, "model_load": 1.25,
                                               "fetch": 0.01, "transcription": 2.0}
    assert m.registry.get_sample_value("kubescribe_realtime_factor_sum", {"model": "tiny.en"}) == 0.2


def test_an_outcome_without_timings_counts_no_phase():
    m = Metrics()
    m.observe_outcome("tiny.en", RunnerOutcome.failure("BadAudio", "not audio"))
    m.observe_outcome("tiny.en", RunnerOutcome(ok=True, cached=True))
    assert all(_count(m, p) == 0 for p in PHASES)


def test_pod_start_is_the_job_creation_to_the_runner_process_start():
    from kubescribe.operator.runs import pod_start

    job = {"metadata": {"name": "j", "creationTimestamp": "2026-12-02T06:00:00Z"}}
    started = 1796191200.0 + 1.75  # 2026-12-02T06:00:01.75Z
    assert pod_start(job, RunnerOutcome(ok=True, timings=Timings(started_at=started))) == 1.75
    # A node whose clock is behind the API server's: clamped, never negative.
    assert pod_start(job, RunnerOutcome(ok=True, timings=Timings(started_at=started - 5))) == 0.0
    assert pod_start(job, RunnerOutcome(ok=True, timings=Timings(fetch=0.1))) is None
    assert pod_start(job, RunnerOutcome(ok=True)) is None
    assert pod_start({"metadata": {}}, RunnerOutcome(ok=True, timings=Timings(started_at=started))) is None


def test_a_completed_job_transition_carries_the_pod_start_and_the_applier_counts_it():
    from kubescribe.operator.applier import Applier
    from kubescribe.operator.lifecycle import Transition
    from kubescribe.operator.runs import on_job

    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"model": "tiny.en"}, "status": {"phase": "Running", "jobName": "j"}}
    job = {"metadata": {"name": "j", "creationTimestamp": "2026-12-02T06:00:00Z"},
           "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    outcome = RunnerOutcome(ok=True, cache_key="k", result_key="kubescribe:result:k",
                            timings=timings(started_at=1796191202.5, startup=0.4, fetch=0.01, model_load=1.0,
                                            transcription=2.0))
    t = on_job(body, job, deleted=False, last=outcome, stored=None, stuck=None)
    assert t is not None and t.pod_start == 2.5 and t.finished is outcome

    m = OperatorMetrics()
    applier = Applier(settings=None, kube=None, store=None, metrics=m)  # count() needs only the metrics
    applier.count(t)
    applier.count(Transition(queue_wait=0.75))
    assert {p: _sum(m, p) for p in PHASES} == {"queue": 0.75, "pod_start": 2.5, "startup": 0.4, "model_load": 1.0,
                                               "fetch": 0.01, "transcription": 2.0}
    assert m.registry.get_sample_value("kubescribe_queue_wait_seconds_sum") == 0.75


def test_a_real_runner_process_reports_where_its_seconds_went(redis_server, speech_dir, tmp_path):
    """The runner Job's entry point as a process, on real Redis and the real tiny.en."""
    store = Store(redis_server.client())
    key = store.put_audio((speech_dir / "library.wav").read_bytes())
    term = tmp_path / "termination-log"
    env = dict(os.environ, KUBESCRIBE_REDIS_URL=redis_server.url, KUBESCRIBE_TERMINATION_LOG=str(term),
               KUBESCRIBE_METRICS_PORT=str(free_port()),
               KUBESCRIBE_SPEC=json.dumps({"audio": {"redisKey": key}, "device": "cpu", "cache": {"enabled": False}}))
    launched = time.time()
    proc = subprocess.run([sys.executable, "-m", "kubescribe.runner.main", "run"], env=env, capture_output=True,
                          text=True, timeout=300)
    ended = time.time()
    assert proc.returncode == 0, proc.stderr
    outcome = RunnerOutcome.model_validate_json(term.read_text())
    t = outcome.timings
    assert t is not None, term.read_text()
    # The process started after the launch (to the 10 ms of the kernel's clock ticks).
    assert launched - 0.02 <= t.started_at <= ended
    assert t.startup > 0 and t.model_load > 0 and t.fetch >= 0 and t.transcription > 0
    # The phases are disjoint parts of the process's life.
    assert t.startup + t.model_load + t.fetch + t.transcription <= ended - t.started_at
    assert set(json.loads(term.read_text())["timings"]) == {"startedAt", "startup", "modelLoad", "fetch",
                                                            "transcription"}


def test_a_transcribed_request_status_carries_the_breakdown_and_a_cache_answer_clears_it():
    from kubescribe.operator import status as st

    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1}, "status": {}}
    outcome = RunnerOutcome(ok=True, timings=timings(started_at=5.0, startup=0.4, model_load=1.0, fetch=0.01,
                                                     transcription=2.0))
    doc = st.succeeded(body, outcome, message="m", pod_start=1.5)
    assert doc["timings"] == {"podStart": 1.5, "startup": 0.4, "modelLoad": 1.0, "fetch": 0.01, "transcription": 2.0}
    pooled = RunnerOutcome(ok=True, timings=timings(model_load=0.0, fetch=0.01, transcription=2.0))
    assert st.succeeded(body, pooled, message="m")["timings"] == {"modelLoad": 0.0, "fetch": 0.01,
                                                                   "transcription": 2.0}
    assert st.succeeded(body, RunnerOutcome(ok=True, cached=True), message="m")["timings"] is None
    assert st.queued(body, cache_key=None, audio_sha=None)["timings"] is None  # a re-run starts clean


def test_the_dashboard_row_reads_the_phase_histogram():
    from tests.test_monitoring import dashboard

    d = dashboard()
    row = next(i for i, p in enumerate(d["panels"]) if p["type"] == "row" and p["title"] == "Where the time goes")
    under = d["panels"][row + 1:row + 3]
    assert [p["title"] for p in under] == ["Seconds per request by phase", "Phase p95"]
    assert all("kubescribe_request_phase_seconds" in t["expr"] for p in under for t in p["targets"])


@pytest.mark.kube
def test_a_job_mode_request_ends_with_its_breakdown_in_status_and_metrics(
        operator_factory, requests_api, redis_server, speech_dir):
    """The real operator on the real API server, the runner Job's pod run as a process."""
    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="1")
    key = Store(redis_server.client()).put_audio((speech_dir / "fox.wav").read_bytes())
    requests_api.create("timed", {"audio": {"redisKey": key}, "language": "en", "device": "cpu"})
    status = requests_api.wait_phase("timed", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    t = status["timings"]
    assert set(t) == {"podStart", "startup", "modelLoad", "fetch", "transcription"}, t
    assert t["startup"] > 0 and t["modelLoad"] > 0 and t["transcription"] > 0 and t["podStart"] >= 0
    wanted = [f'kubescribe_request_phase_seconds_count{{phase="{p}"}} 1.0' for p in PHASES]
    wait_for(lambda: (lambda text: text if all(w in text for w in wanted) else None)(op.metrics_text()),
             timeout=30, description="one observation of every phase")
