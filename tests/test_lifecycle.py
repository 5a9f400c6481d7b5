"""The state machine of a request, transition by transition, with no server.

Each test is one edge of docs/architecture.md's diagram: the pure decision
(``intake``, ``runs``, ``scheduler``, ``pool_size``) is given a request, a Job or a
runner outcome and a cache answer, and returns the transition. How the applier writes
one is tests/test_applier.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from kubescribe.models import InvalidSpec
from kubescribe.operator import intake, pool_size, runs, scheduler
from kubescribe.operator.intake import NOT_ASKED, CacheAnswer
from kubescribe.operator.lifecycle import Transition, needs_reconcile, requeue, seconds_until_expiry, stale_job
from kubescribe.operator.pods import StuckPod
from kubescribe.operator.registry import Entry, entry_from_body
from kubescribe.operator.scheduler import plan
from kubescribe.outcomes import EXIT_BAD_INPUT, EXIT_TRANSIENT, REASONS, RunnerOutcome, reason
from kubescribe.streams import Finished

from tests.support.operator_parts import DONE, KEY, NOW, RESULT, job, request, running_body, spec_of


def counted(t: Transition):
    return (t.finished.ok if t.finished else None, t.finished.error_type if t.finished and not t.finished.ok else None)


# --------------------------------------------------------------------------- seen: None/Pending -> ...


def test_new_invalid_request_fails_with_invalid_spec():
    body = request(spec={"audio": {"redisKey": "k"}, "beamSize": 500, "model": "tiny.en"})
    t = intake.on_seen(body, InvalidSpec("spec.beamSize: must be <= 20"), None, None, NOT_ASKED)
    assert t.status["phase"] == "Failed" and t.status["reason"] == "InvalidSpec"
    assert t.registry == {"phase": "Failed", "observed_generation": 1}
    assert t.event.type == "Warning" and t.event.reason == "InvalidSpec"
    assert counted(t) == (False, "invalid_spec") and t.model == "tiny.en"


def test_new_request_with_redis_down_waits_pending_and_says_so_once():
    body = request()
    t = intake.on_seen(body, spec_of(body), KEY, "a" * 64, CacheAnswer("unreachable", error="refused"))
    assert t.status["phase"] == "Pending" and t.status["reason"] == "RedisUnavailable"
    assert "refused" in t.status["message"] and t.event.reason == "RedisUnavailable"
    assert t.errors == ("redis",) and not t.wake and t.finished is None
    again = intake.on_seen(request("Pending", reason_="RedisUnavailable"), spec_of(body), KEY, None,
                              CacheAnswer("unreachable", error="refused"))
    assert again.status is None and again.event is None and again.errors == ("redis",)


def test_new_request_with_a_cached_result_succeeds_without_a_job():
    body = request()
    t = intake.on_seen(body, spec_of(body), KEY, "a" * 64, CacheAnswer("hit", result=RESULT), now=NOW)
    assert t.status["phase"] == "Succeeded" and t.status["cached"] is True and t.status["reason"] == "CacheHit"
    assert t.status["resultKey"] == f"kubescribe:result:{KEY}" and t.status["language"] == "en"
    assert t.event.reason == "CacheHit" and t.admission_hit and t.cache_lookup is True
    assert t.queue_wait == 10.0 and counted(t) == (True, None) and t.finished.cached


def test_new_request_on_a_miss_is_queued_and_its_lookup_is_not_counted_yet():
    body = request()
    t = intake.on_seen(body, spec_of(body), KEY, "a" * 64, CacheAnswer("miss"))
    assert t.status["phase"] == "Queued" and t.status["cacheKey"] == KEY and t.status["observedGeneration"] == 1
    assert t.status["jobName"] is None and t.status["queuedAt"]
    assert t.registry == {"phase": "Queued", "observed_generation": 1, "cache_key": KEY, "unwritten": False,
                          "body": None}
    assert t.event.reason == "Queued" and t.cache_lookup is None and t.finished is None and t.wake


def test_what_needs_reconciling_and_a_job_on_an_old_spec():
    assert needs_reconcile(entry_from_body(request()))
    assert needs_reconcile(entry_from_body(request("Pending", reason_="RedisUnavailable")))
    assert needs_reconcile(entry_from_body(request("Running", generation=2, observed=1, job="job-r")))
    assert not needs_reconcile(entry_from_body(request("Queued")))
    assert stale_job(request("Running", generation=2, observed=1, job="job-r")) == "job-r"
    assert stale_job(request("Queued")) is None


# --------------------------------------------------------------------------- Queued -> ...


def test_queued_request_admitted_to_a_job_runs_and_counts_its_miss_once():
    body = request("Queued", cacheKey=KEY)
    t = intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name="job-r", now=NOW)
    assert t.status["phase"] == "Running" and t.status["jobName"] == "job-r" and t.status["attempts"] == 1
    assert t.status["reason"] == "JobCreated" and t.event.reason == "JobCreated"
    assert t.registry == {"phase": "Running", "job_name": "job-r", "queue_position": None}
    assert t.cache_lookup is False and t.queue_wait == 10.0 and not t.wake
    # Requeued after its Job vanished: it has attempts, and its lookup was counted.
    again = intake.on_admitted(request("Queued", cacheKey=KEY, attempts=1), spec_of(body),
                                  CacheAnswer("miss"), job_name="job-r")
    assert again.cache_lookup is None


def test_queued_request_dispatched_to_the_pool():
    body = request("Queued", cacheKey=KEY)
    t = intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name=None)
    assert t.status["phase"] == "Running" and t.status["jobName"] is None
    assert t.status["reason"] == "Dispatched" and t.event.reason == "Dispatched"
    conds = {c["type"]: c for c in t.status["conditions"]}
    assert conds["Admitted"]["status"] == "True" and conds["Ready"]["message"] == "waiting for a pooled runner"


def test_queued_request_answered_when_an_identical_one_finished():
    body = request("Queued", cacheKey=KEY)
    t = intake.on_admitted(body, spec_of(body), CacheAnswer("hit", result=RESULT), job_name=None)
    assert t.status["phase"] == "Succeeded" and t.status["cached"] is True and t.cache_lookup is True


def test_queued_request_whose_spec_no_longer_validates_fails():
    t = intake.on_admitted(request("Queued"), InvalidSpec("spec.model: bad"), NOT_ASKED, job_name=None)
    assert t.status["phase"] == "Failed" and t.status["reason"] == "InvalidSpec"


def test_queue_positions_front_first_bounded_and_identical_requests_say_why():
    entries = [Entry("ns", f"q{i}", f"uid-q{i}", 1, "Queued", 1, 0, f"2026-01-01T00:00:{i:02d}Z", 1,
                     cache_key="same" if i in (0, 1) else None) for i in range(5)]
    entries.append(Entry("ns", "run", "uid-run", 1, "Running", 1, 0, "2025-01-01T00:00:00Z", 1, cache_key="same"))
    p = plan(entries, budget=1)
    updates, more = scheduler.position_updates(entries, p, limit=2)
    assert more
    assert [(e.name, doc["queuePosition"], doc["reason"]) for e, doc in updates] == [
        ("q0", 1, "WaitingForIdentical"), ("q1", 2, "WaitingForIdentical")]


def test_pool_size_follows_the_dispatched_work_within_the_budget():
    def running(i):
        return Entry("ns", f"p{i}", f"u{i}", 1, "Running", 1, 0, "", 1)
    entries = [running(i) for i in range(9)]
    assert pool_size.desired_runners(entries, max_runners=2, per_runner=4) == 2  # 3 wanted, 2 allowed
    assert pool_size.desired_runners(entries[:4], max_runners=2, per_runner=4) == 1  # one runner, busy enough
    assert pool_size.desired_runners([], max_runners=2, per_runner=4) == 0
    finished = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert pool_size.active_pool_jobs([finished, {"status": {}}]) == 1


# --------------------------------------------------------------------------- Running (Job) -> ...


def test_job_complete_succeeds_with_the_runner_outcome():
    t = runs.on_job(running_body(), job(succeeded=1, conditions=[("Complete", "", "")]), deleted=False,
                        last=DONE, stored=None, stuck=None)
    assert t.status["phase"] == "Succeeded" and t.status["attempts"] == 1 and t.status["cached"] is False
    assert t.status["audioDurationSeconds"] == 2.0 and "Job job-r" in t.status["message"]
    assert t.job_outcome == "succeeded" and t.finished.size_bytes == 64000 and t.event.reason == "Succeeded"


def test_job_complete_without_an_outcome_uses_the_stored_result_or_fails_no_result():
    complete = job(succeeded=1, conditions=[("Complete", "", "")])
    t = runs.on_job(running_body(), complete, deleted=False, last=None, stored=DONE, stuck=None)
    assert t.status["phase"] == "Succeeded"
    t = runs.on_job(running_body(), complete, deleted=False, last=None, stored=None, stuck=None)
    assert t.status["reason"] == "NoResult" and counted(t) == (False, "internal") and t.job_outcome is None


@pytest.mark.parametrize(("cond", "last", "want_reason", "want_type", "want_text"), [
    ("DeadlineExceeded", None, "Timeout", "timeout", "timeoutSeconds=600"),
    ("PodFailurePolicy", RunnerOutcome.failure("BadAudio", "not a readable audio file"), "BadAudio",
     "bad_audio", "not a readable"),
    ("PodFailurePolicy", RunnerOutcome.failure("AudioURLForbidden", "metadata service"), "AudioURLForbidden",
     "invalid_spec", "metadata"),
    ("PodFailurePolicy", None, "BadInput", "bad_audio", "refused the input"),
    ("BackoffLimitExceeded", RunnerOutcome.failure("RedisUnavailable", "refused"), "RedisUnavailable",
     "redis", "failed 3 time(s), retries exhausted: refused"),
    ("BackoffLimitExceeded", None, "RunnerFailed", "job_failed", "retries exhausted"),
    ("SomethingElse", None, "SomethingElse", "job_failed", "the runner Job failed"),
])
def test_job_failed_names_the_reason_and_counts_its_error_type(cond, last, want_reason, want_type, want_text):
    t = runs.on_job(running_body(), job(failed=3, conditions=[("Failed", cond, "")]), deleted=False,
                        last=last, stored=None, stuck=None)
    assert t.status["phase"] == "Failed" and t.status["reason"] == want_reason
    assert want_text in t.status["message"] and t.status["attempts"] == 3
    assert counted(t) == (False, want_type) and t.job_outcome == "failed" and t.event.type == "Warning"


def test_a_runner_pod_that_can_never_start_fails_and_its_job_is_deleted():
    stuck = StuckPod("ImagePullFailed", "runner image x:typo cannot be pulled (ErrImageNeverPull)", "pod-1")
    t = runs.on_job(running_body(), job(active=1), deleted=False, last=None, stored=None, stuck=stuck)
    assert t.status["reason"] == "ImagePullFailed" and t.delete_job == "job-r"
    assert counted(t) == (False, "job_failed") and t.job_outcome == "failed" and t.status["attempts"] == 1


def test_a_deleted_job_queues_its_request_again_and_a_lost_one_too():
    t = runs.on_job(running_body(), job(active=1), deleted=True, last=None, stored=None, stuck=None)
    assert t.status["phase"] == "Queued" and t.status["reason"] == "JobDeleted" and t.status["cacheKey"] == KEY
    assert t.registry == {"phase": "Queued", "job_name": None, "queue_position": None}
    assert t.event.type == "Warning" and t.finished is None
    lost = requeue(running_body(), "JobLost", "runner Job job-r no longer exists; queued again")
    assert lost.status["reason"] == "JobLost" and lost.status["jobName"] is None


def test_a_retry_updates_attempts_and_says_why():
    t = runs.on_job(running_body(attempts=1), job(active=1, ready=1, failed=1), deleted=False,
                        last=RunnerOutcome.failure("RunnerKilled", "runner exited with code 137"), stored=None,
                        stuck=None)
    assert t.status == {"attempts": 2} and t.event.reason == "Retrying" and "code 137" in t.event.message
    assert t.finished is None and not t.wake
    quiet = runs.on_job(running_body(attempts=1), job(active=1, ready=1), deleted=False, last=None,
                            stored=None, stuck=None)
    assert quiet is None  # nothing changed


def test_a_job_event_for_another_job_or_a_finished_request_is_ignored():
    assert runs.on_job(running_body(), job(name="job-old", succeeded=1, conditions=[("Complete", "", "")]),
                           deleted=False, last=DONE, stored=None, stuck=None) is None
    finished = request("Succeeded", job="job-r")
    assert runs.on_job(finished, job(succeeded=1, conditions=[("Complete", "", "")]), deleted=False,
                           last=DONE, stored=None, stuck=None) is None


def test_a_running_healthy_job_is_quiet_and_needs_no_read_of_its_request():
    assert runs.quiet(job(active=1, ready=1)) and runs.quiet(job(active=0, ready=0))
    assert not runs.quiet(job(active=1, ready=0))  # a pod that may be stuck
    assert runs.starting(job(active=1, ready=0)) and not runs.starting(job(active=1, ready=1))
    assert not runs.starting(job(active=1, ready=0, failed=1))  # a retry to count
    assert not runs.starting(job(active=1, ready=0, conditions=[("Complete", "", "")]))
    assert not runs.quiet(job(active=1, ready=1, failed=1))  # a retry to count
    assert not runs.quiet(job(succeeded=1, conditions=[("Complete", "", "")]))
    assert not runs.quiet(job(failed=2, conditions=[("Failed", "BackoffLimitExceeded", "")]))
    # whatever the request says, on_job answers a quiet Job with nothing
    for body in (running_body(), running_body(attempts=1), request("Succeeded", job="job-r")):
        assert runs.on_job(body, job(active=1, ready=1), deleted=False, last=None, stored=None, stuck=None) is None


def test_which_job_states_need_the_pods():
    assert not runs.needs_pods(job(active=1, ready=1))
    assert runs.needs_pods(job(active=1, ready=0))
    assert runs.needs_pods(job(active=1, ready=1, failed=1))
    assert runs.needs_pods(job(conditions=[("Complete", "", "")]))


# --------------------------------------------------------------------------- termination messages


def pod(finished, *, code=0, message="", reason_="Completed"):
    return {"status": {"containerStatuses": [{"name": "runner", "state": {"terminated": {
        "exitCode": code, "message": message, "reason": reason_, "finishedAt": finished}}}]}}


def test_the_latest_runner_outcome_is_read_from_the_termination_message():
    first = pod("2026-01-01T10:00:00Z", code=75, message=RunnerOutcome.failure("RedisUnavailable", "x").to_json())
    last = pod("2026-01-01T10:01:00Z", message=DONE.to_json())
    got = runs.termination_outcome([last, first], "runner")
    assert got.ok and got.size_bytes == 64000 and got.exit_code == 0


@pytest.mark.parametrize(("code", "kubelet_reason", "text", "want"), [
    (137, "Error", "", "RunnerKilled"),
    (143, "Error", "", "RunnerKilled"),
    (137, "OOMKilled", "", "OOMKilled"),
    (1, "Error", "Traceback ... boom", "RunnerCrashed"),
])
def test_a_runner_that_left_no_outcome_is_judged_by_its_exit(code, kubelet_reason, text, want):
    got = runs.termination_outcome([pod("2026-01-01T10:00:00Z", code=code, message=text,
                                            reason_=kubelet_reason)], "runner")
    assert not got.ok and got.reason == want and got.exit_code == code
    assert f"code {code}" in got.message and (text in got.message)
    assert runs.termination_outcome([{"status": {}}], "runner") is None


# --------------------------------------------------------------------------- Running (pool) -> ...


def finished(outcome, attempts=1, generation=1):
    return Finished("uid-r", "ns", "r", generation, attempts, outcome)


def test_pooled_outcomes_succeed_or_fail_once():
    body = request("Running", cacheKey=KEY, attempts=0)
    ok = runs.on_pool_outcome(body, finished(DONE))
    assert ok.status["phase"] == "Succeeded" and "pooled runner" in ok.status["message"] and ok.job_outcome is None
    bad = runs.on_pool_outcome(body, finished(RunnerOutcome.failure("AudioNotFound", "expired")))
    assert bad.status["reason"] == "AudioNotFound" and bad.status["message"] == "expired"
    assert counted(bad) == (False, "audio_not_found")
    tried = runs.on_pool_outcome(body, finished(RunnerOutcome.failure("RedisUnavailable", "down"), attempts=3))
    assert tried.status["message"] == "failed 3 time(s), retries exhausted: down"
    assert runs.on_pool_outcome(request("Succeeded"), finished(DONE)) is None  # a repeat
    assert runs.on_pool_outcome(body, finished(DONE, generation=2)) is None  # spec changed since


def test_a_pooled_request_past_its_timeout_fails():
    started = (NOW - timedelta(seconds=700)).isoformat().replace("+00:00", "Z")
    body = request("Running", startedAt=started, attempts=1)
    t = runs.on_pool_timeout(body, NOW, claim_idle_seconds=60)
    assert t.status["reason"] == "Timeout" and counted(t) == (False, "timeout")
    assert runs.on_pool_timeout(body, NOW, claim_idle_seconds=120) is None


# --------------------------------------------------------------------------- the reason table


def test_every_runner_reason_has_its_exit_code_and_operator_reasons_have_none():
    for r in REASONS.values():
        if r.by_runner:
            assert r.exit_code == (EXIT_BAD_INPUT if r.final else EXIT_TRANSIENT), r
        else:
            assert r.exit_code is None, r
    for name in ("AudioURLForbidden", "ImagePullFailed", "RunnerStartFailed"):
        assert name in REASONS
    assert reason("WhoKnows").error_type == "job_failed" and not reason("WhoKnows").final


def test_status_patches_go_through_the_model():
    from kubescribe.operator import status as st

    with pytest.raises(ValueError):
        st.patch(phase="Finished")  # not a Phase
    with pytest.raises(ValueError):
        st.patch(notAField=1)


# --------------------------------------------------------------------------- the write budget


def test_the_first_runner_pod_costs_no_status_write_only_a_retry_does():
    started = runs.on_job(running_body(attempts=1), job(active=1), deleted=False, last=None, stored=None,
                              stuck=None)
    assert started is None
    retried = runs.on_job(running_body(attempts=1), job(active=1, failed=1), deleted=False, last=None,
                              stored=None, stuck=None)
    assert retried.status == {"attempts": 2}


def queued_entries(n):
    return [Entry("ns", f"q{i}", f"uid-q{i}", 1, "Queued", 1, 0, f"2026-01-01T00:00:{i:02d}Z", 1)
            for i in range(n)]


def test_queue_positions_are_written_only_for_the_first_n():
    entries = queued_entries(30)
    p = plan(entries, 0)
    updates, more = scheduler.position_updates(entries, p, max_position=5)
    assert [doc["queuePosition"] for _, doc in updates] == [1, 2, 3, 4, 5] and not more


def test_a_request_pushed_behind_the_shown_places_has_its_number_cleared():
    entries = [replace(e, queue_position=i + 1) for i, e in enumerate(queued_entries(3))]
    urgent = [Entry("ns", f"u{i}", f"uid-u{i}", 1, "Queued", 1, 100, f"2026-01-01T00:01:{i:02d}Z", 1)
              for i in range(2)]
    p = plan(entries + urgent, 0)
    updates, _ = scheduler.position_updates(entries + urgent, p, max_position=3)
    docs = {e.name: doc for e, doc in updates}
    assert docs["u0"]["queuePosition"] == 1 and docs["u1"]["queuePosition"] == 2
    assert docs["q0"]["queuePosition"] == 3
    assert docs["q1"] == {"queuePosition": None, "reason": "Queued",
                          "message": "waiting for a runner slot in the GPU budget"}
    assert "q2" in docs and docs["q2"]["queuePosition"] is None


def test_a_request_admitted_within_the_first_period_never_gets_a_position_write():
    now = datetime(2026, 1, 1, 0, 0, 3, tzinfo=timezone.utc)
    entries = queued_entries(3)  # created at 00:00:00, :01, :02
    p = plan(entries, 0)
    updates, _ = scheduler.position_updates(entries, p, max_position=20, min_wait=2.5, now=now)
    assert [e.name for e, _ in updates] == ["q0"]  # 3 s old; q1 and q2 are younger than 2.5 s


# --------------------------------------------------------------------------- request TTL


def finished_request(phase="Succeeded", completed="2026-01-01T00:00:00Z", ttl=None, generation=1, observed=1):
    body = request(phase, generation=generation, observed=observed, completedAt=completed)
    if ttl is not None:
        body["spec"]["ttlSecondsAfterFinished"] = ttl
    return body


AT = datetime(2026, 1, 1, 0, 1, 0, tzinfo=timezone.utc)  # 60 s after completedAt


def test_a_finished_request_expires_after_the_default_ttl():
    assert seconds_until_expiry(finished_request(), 60, AT) == 0
    assert seconds_until_expiry(finished_request("Failed"), 100, AT) == 40


def test_the_spec_ttl_wins_over_the_default_and_zero_there_means_at_once():
    assert seconds_until_expiry(finished_request(ttl=30), 86400, AT) == -30
    assert seconds_until_expiry(finished_request(ttl=0), 86400, AT) == -60
    assert seconds_until_expiry(finished_request(ttl=3600), 10, AT) == 3540


def test_a_default_of_zero_keeps_requests_for_ever_unless_the_spec_asks():
    assert seconds_until_expiry(finished_request(), 0, AT) is None
    assert seconds_until_expiry(finished_request(ttl=10), 0, AT) == -50


@pytest.mark.parametrize("phase", [None, "Pending", "Queued", "Running"])
def test_a_request_that_has_not_finished_never_expires(phase):
    body = finished_request(phase, ttl=0)
    assert seconds_until_expiry(body, 1, AT) is None


def test_a_request_edited_after_it_finished_does_not_expire_it_runs_again():
    assert seconds_until_expiry(finished_request(ttl=0, generation=2, observed=1), 1, AT) is None


def test_an_unreadable_completion_time_keeps_the_request():
    assert seconds_until_expiry(finished_request(completed="yesterday", ttl=0), 1, AT) is None


def notified(body, status=None, reason=""):
    if status is not None:
        body["status"]["conditions"] = [{"type": "Notified", "status": status, "reason": reason}]
    return body


def test_a_request_whose_event_is_not_delivered_yet_stays_past_its_ttl():
    sink = {"url": "https://a.example/", "signingSecretRef": {"name": "s", "key": "k"}}
    pending = finished_request(ttl=0)
    pending["spec"]["notify"] = [sink]
    assert seconds_until_expiry(pending, 1, AT) is None  # not tried yet
    assert seconds_until_expiry(notified(pending, "False", "Delivering"), 1, AT) is None
    assert seconds_until_expiry(notified(pending, "True", "Delivered"), 1, AT) == -60
    assert seconds_until_expiry(notified(pending, "False", "DeliveryFailed"), 1, AT) == -60
    # A sink that does not hear of this phase does not hold it.
    other = finished_request(ttl=0)
    other["spec"]["notify"] = [dict(sink, events=["Failed"])]
    assert seconds_until_expiry(other, 1, AT) == -60
    # The install's sinks hold it too.
    plain = finished_request(ttl=0)
    assert seconds_until_expiry(plain, 1, AT, frozenset({"Succeeded"})) is None
    assert seconds_until_expiry(plain, 1, AT, frozenset({"Failed"})) == -60

