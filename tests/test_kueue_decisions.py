"""Kueue as the admission engine, decision by decision, with no server.

The operator hands every queued request to Kueue as a suspended Job in a LocalQueue,
shows what Kueue says while the Job waits (one write per distinct reason), and moves the
request to Running only when Kueue unsuspends the Job. The end-to-end proof against a
real Kueue is ``tests/test_kueue.py``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kubescribe.models import InvalidSpec, parse_spec
from kubescribe.operator import kueue
from kubescribe.operator.jobs import build_job
from kubescribe.operator.kueue_api import LABEL_QUEUE_NAME
from kubescribe.operator.registry import Entry
from kubescribe.operator.scheduler import plan
from kubescribe.settings import OperatorSettings, describe_invalid

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
KEY = "c" * 64
SPEC = {"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}, "model": "tiny.en"}


def request(phase="Queued", *, job=None, reason="Queued", message="", spec=None, **status):
    st = {"phase": phase, "observedGeneration": 1, "reason": reason, "message": message, "cacheKey": KEY, **status}
    if job:
        st["jobName"] = job
    return {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
            "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r", "generation": 1,
                         "creationTimestamp": "2026-01-01T11:59:50Z", "resourceVersion": "7"},
            "spec": spec or dict(SPEC), "status": st}


def job(name="kubescribe-r-1", *, suspend=True):
    return {"metadata": {"name": name, "namespace": "ns", "uid": "job-uid",
                         "ownerReferences": [{"kind": "TranscriptionRequest", "name": "r", "uid": "uid-r"}]},
            "spec": {"suspend": suspend}, "status": {}}


def workload(*conditions, name="job-kubescribe-r-1-abcde"):
    return {"metadata": {"name": name, "namespace": "ns"},
            "status": {"conditions": [dict(zip(("type", "status", "reason", "message"), c)) for c in conditions]}}


def entry(name, phase="Queued", *, job_name=None, priority=0, created="2026-01-01T00:00:00Z", slots=1, key=None):
    return Entry(namespace="ns", name=name, uid=f"uid-{name}", generation=1, phase=phase, observed_generation=1,
                 priority=priority, created=created, slots=slots, cache_key=key, job_name=job_name)


# -- which queue -------------------------------------------------------------------------

def test_the_request_names_its_local_queue():
    assert kueue.queue_name(parse_spec({**SPEC, "queueName": "team-a"}), "default") == "team-a"


def test_without_a_queue_name_the_namespace_default_queue_is_used():
    assert kueue.queue_name(parse_spec(SPEC), "default") == "default"
    assert kueue.queue_name(parse_spec(SPEC), "gpu") == "gpu"


@pytest.mark.parametrize("bad", ["Team-A", "team_a", "-a", "a" * 64, ""])
def test_a_queue_name_must_be_a_dns_label(bad):
    with pytest.raises(InvalidSpec):
        parse_spec({**SPEC, "queueName": bad})


def test_the_queue_name_does_not_change_the_cache_key():
    assert parse_spec({**SPEC, "queueName": "team-a"}).output_params() == parse_spec(SPEC).output_params()


# -- the Job ---------------------------------------------------------------------------------

def test_under_kueue_the_job_is_created_suspended_in_its_queue():
    body = request()
    j = build_job(body, parse_spec(SPEC), OperatorSettings(), kueue_queue="team-a")
    assert j["spec"]["suspend"] is True
    assert j["metadata"]["labels"][LABEL_QUEUE_NAME] == "team-a"
    # the pods are Kueue's business only through their Job
    assert LABEL_QUEUE_NAME not in j["spec"]["template"]["metadata"]["labels"]


def test_without_kueue_the_job_is_neither_suspended_nor_labelled():
    j = build_job(request(), parse_spec(SPEC), OperatorSettings())
    assert "suspend" not in j["spec"] and LABEL_QUEUE_NAME not in j["metadata"]["labels"]


# -- settings ----------------------------------------------------------------------------------

def test_kubescribe_admits_by_default():
    assert OperatorSettings().admission_engine == "kubescribe"
    assert OperatorSettings().kueue_default_queue == "default"


def test_the_admission_engine_is_the_operators_setting_alone():
    from kubescribe.settings import CliSettings, RunnerSettings

    assert "admission_engine" not in RunnerSettings.model_fields and RunnerSettings().spec is None
    assert "admission_engine" not in CliSettings.model_fields and CliSettings().redis_url


def test_kueue_cannot_admit_a_runner_pool():
    with pytest.raises(ValueError) as exc:
        OperatorSettings(admission_engine="kueue", mode="pool")
    assert describe_invalid(exc.value) == ("invalid setting KUBESCRIBE_ADMISSION_ENGINE=kueue needs KUBESCRIBE_MODE=job: "
                                           "Kueue admits one Job per request, not a pool of runners")


# -- the plan ----------------------------------------------------------------------------------

def test_every_queued_request_is_handed_to_kueue_at_once_whatever_it_asks():
    entries = [entry(f"r{i}", slots=4) for i in range(10)]
    p = plan(kueue.planning_view(entries), kueue.UNLIMITED)
    assert len(p.admit) == 10 and p.positions == {}


def test_a_request_already_waiting_in_kueue_is_not_handed_over_twice():
    entries = [entry("waits", job_name="kubescribe-waits-1"), entry("new")]
    p = plan(kueue.planning_view(entries), kueue.UNLIMITED)
    assert [e.name for e in p.admit] == ["new"]


def test_an_identical_request_waits_for_the_one_in_kueue_instead_of_taking_quota():
    entries = [entry("first", job_name="kubescribe-first-1", key=KEY), entry("same", key=KEY)]
    p = plan(kueue.planning_view(entries), kueue.UNLIMITED)
    assert p.admit == [] and p.waiting_for_identical == {"uid-same"}


# -- handed over ---------------------------------------------------------------------------------

def test_submitted_stays_queued_with_its_job_and_counts_the_cache_miss():
    t = kueue.on_submitted(request(), job_name="kubescribe-r-1", queue="team-a")
    assert "phase" not in t.status  # still Queued: nothing runs before Kueue admits it
    assert t.status["jobName"] == "kubescribe-r-1" and t.status["reason"] == kueue.WAITING
    assert "team-a" in t.status["message"]
    admitted = {c["type"]: c for c in t.status["conditions"]}["Admitted"]
    assert admitted["status"] == "False" and admitted["reason"] == kueue.WAITING
    assert t.registry == {"job_name": "kubescribe-r-1", "queue_position": None}
    assert t.cache_lookup is False and t.event.reason == "SubmittedToKueue"


# -- what Kueue says -----------------------------------------------------------------------------

def test_before_kueue_makes_a_workload_the_status_says_so():
    assert kueue.workload_reason(None) == "Kueue has not created a Workload for the Job yet"


def test_quota_not_reserved_shows_kueues_own_message():
    wl = workload(("QuotaReserved", "False", "Pending",
                   "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
                   "in flavor gpu, 1 more needed"))
    assert kueue.workload_reason(wl) == (
        "Workload job-kubescribe-r-1-abcde pending in Kueue: couldn't assign flavors to pod set main: "
        "insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more needed")


def test_quota_reserved_but_not_admitted_waits_for_admission_checks():
    wl = workload(("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "False", "", ""))
    assert "waiting for Kueue's admission checks" in kueue.workload_reason(wl)


def test_eviction_wins_over_older_conditions():
    wl = workload(("QuotaReserved", "True", "", ""), ("Evicted", "True", "Preempted", "preempted by team-b"))
    assert kueue.workload_reason(wl) == ("Workload job-kubescribe-r-1-abcde evicted by Kueue (Preempted): "
                                         "preempted by team-b")


def test_waiting_writes_the_status_once_per_distinct_reason():
    wl = workload(("QuotaReserved", "False", "Pending", "insufficient quota"))
    t = kueue.on_job(request(job="kubescribe-r-1", reason=kueue.WAITING), job(), deleted=False, workload=wl)
    assert t is not None and t.status["message"].endswith("insufficient quota") and t.event is None
    again = request(job="kubescribe-r-1", reason=kueue.WAITING, message=t.status["message"])
    assert kueue.on_job(again, job(), deleted=False, workload=wl) is None


def test_an_admitted_workload_writes_nothing_the_unsuspended_job_does():
    wl = workload(("QuotaReserved", "True", "", ""), ("Admitted", "True", "Admitted", ""))
    assert kueue.on_job(request(job="kubescribe-r-1", reason=kueue.WAITING), job(), deleted=False, workload=wl) is None


def test_a_spec_change_while_waiting_in_kueue_deletes_the_old_job():
    from kubescribe.operator.lifecycle import stale_job

    assert stale_job(request(job="kubescribe-r-1", reason=kueue.WAITING)) == "kubescribe-r-1"
    assert stale_job(request()) is None


def test_unsuspended_by_kueue_the_request_starts_running():
    t = kueue.on_job(request(job="kubescribe-r-1", reason=kueue.WAITING), job(suspend=False), deleted=False,
                     workload=None)
    assert t.status["phase"] == "Running" and t.status["reason"] == kueue.ADMITTED
    assert t.registry["phase"] == "Running" and t.queue_wait is not None
    assert {c["type"]: c for c in t.status["conditions"]}["Admitted"]["status"] == "True"


def test_a_waiting_jobs_deletion_queues_the_request_again_for_a_new_job():
    t = kueue.on_job(request(job="kubescribe-r-1", reason=kueue.WAITING), job(), deleted=True, workload=None)
    assert t.status["phase"] == "Queued" and t.status["jobName"] is None and t.status["reason"] == "JobDeleted"
    assert t.registry["job_name"] is None


def test_suspended_again_by_kueue_a_running_request_waits_on_the_same_job():
    wl = workload(("Evicted", "True", "Preempted", "preempted"))
    t = kueue.on_job(request("Running", job="kubescribe-r-1", reason=kueue.ADMITTED), job(), deleted=False,
                     workload=wl)
    assert t.status["phase"] == "Queued" and t.status["jobName"] == "kubescribe-r-1"
    assert t.registry == {"phase": "Queued", "job_name": "kubescribe-r-1"}
    assert t.event.type == "Warning" and "Preempted" in t.status["message"]


def test_jobs_kueue_has_nothing_to_do_with_are_left_to_the_runner_outcomes():
    running = request("Running", job="kubescribe-r-1", reason="AdmittedByKueue")
    assert kueue.on_job(running, job(suspend=False), deleted=False, workload=None) is None
    other = request(job="kubescribe-other-1", reason=kueue.WAITING)
    assert kueue.on_job(other, job(), deleted=False, workload=None) is None
