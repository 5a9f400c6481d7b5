"""Each event source's handler alone, with no server: built from an applier, a fake API
and the one collaborator it takes (the cache, the done stream, the progress board),
never from the others."""

from __future__ import annotations

import threading

import pytest

from kubescribe.operator.health import Gauges, Health
from kubescribe.operator.job_handler import JobHandler
from kubescribe.operator.pool_outcome_handler import PoolOutcomeHandler
from kubescribe.operator.progress_reporter import ProgressReporter
from kubescribe.operator.registry import entry_from_body
from kubescribe.operator.request_handler import RequestHandler
from kubescribe.operator.retention import Retention
from kubescribe.outcomes import RunnerOutcome
from kubescribe.progress import Progress
from kubescribe.cache_layout import known_cache_key
from kubescribe.streams import Finished

from tests.support.operator_parts import (DONE, KEY, RESULT, FakeCluster, applier, job, request, running_body,
                                          running_named, spec_of)


class Counting(FakeCluster):
    """Counts the reads of requests and of pods: a handler that needs none must make none."""

    def __init__(self, bodies, existing=None, pods=()):
        super().__init__(bodies, existing)
        self.request_reads = self.pod_reads = 0
        self.pods = list(pods)

    def get_request(self, ns, name):
        self.request_reads += 1
        return super().get_request(ns, name)

    def job_pods(self, ns, name):
        self.pod_reads += 1
        return super().job_pods(ns, name)


# --------------------------------------------------------------------------- requests


def requests_of(kube, **given):
    a = applier(kube, **given)
    return a, RequestHandler(a, kube, a.store, Retention(a.store))


def test_a_new_request_on_a_miss_is_held_queued_and_wakes_admission():
    """Queued in the registry, not yet on the server: the admission pass writes its
    Queued status with its Running one, or alone if it must wait (tests/test_admitter.py)."""
    kube = FakeCluster([])
    a, handler = requests_of(kube)
    handler.on_request("ADDED", request())
    held = a.registry.get("uid-r")
    assert kube.patches == [] and (held.phase, held.unwritten, held.observed_generation) == ("Queued", True, 1)
    assert held.cache_key == known_cache_key(spec_of(request()))[0] and held.audio_sha == "a" * 64
    assert a.wakeup.is_set()
    handler.on_request("ADDED", request())  # the same version again (a resync's LIST): still held, no lookup
    assert a.registry.get("uid-r") == held and kube.patches == []


@pytest.mark.parametrize("case", ["kueue", "edited"])
def test_a_request_under_kueue_or_one_edited_after_its_first_status_is_queued_at_once(case):
    kube = FakeCluster([])
    if case == "kueue":
        a, handler = requests_of(kube, admission_engine="kueue")
        body = request()
    else:  # Queued before, then edited: its status says Queued at the old generation until rewritten
        a, handler = requests_of(kube)
        body = request("Queued", generation=2, observed=1, cacheKey=KEY)
    handler.on_request("MODIFIED", body)
    assert kube.patches[0]["phase"] == "Queued" and kube.patches[0]["observedGeneration"] == body["metadata"]["generation"]
    assert a.registry.get("uid-r").unwritten is False


def test_a_new_request_with_a_cached_result_succeeds_from_the_store():
    kube = FakeCluster([])
    a, handler = requests_of(kube)
    body = request()
    key, _ = known_cache_key(spec_of(body))
    a.store.put_result(key, RESULT)
    handler.on_request("ADDED", body)
    assert kube.patches[0]["phase"] == "Succeeded" and kube.patches[0]["cached"] is True
    assert a.store.stats().hits == 1  # counted once, by the applier


def test_a_deleted_request_leaves_the_registry_and_frees_its_slot():
    kube = FakeCluster([])
    a, handler = requests_of(kube)
    body = running_body()
    a.registry.upsert(entry_from_body(body))
    handler.on_request("DELETED", body)
    assert a.registry.get("uid-r") is None and a.wakeup.is_set() and kube.patches == []


def test_an_event_older_than_what_the_registry_holds_is_ignored():
    kube = FakeCluster([])
    a, handler = requests_of(kube)
    newer = request("Queued", cacheKey=KEY)
    newer["metadata"]["resourceVersion"] = "9"
    a.registry.upsert(entry_from_body(newer))
    handler.on_request("MODIFIED", request())  # resourceVersion 7, not reconciled yet
    assert kube.patches == [] and a.registry.get("uid-r").phase == "Queued"


# --------------------------------------------------------------------------- Jobs


def jobs_of(kube, **given):
    a = applier(kube, **given)
    return a, JobHandler(a, kube, a.store, a.settings)


def test_a_pooled_runners_job_and_a_quiet_one_cost_no_read_of_a_request():
    kube = Counting([running_body()])
    _, handler = jobs_of(kube)
    pooled = job(active=1, ready=1)
    pooled["metadata"]["ownerReferences"] = []
    handler.on_job("MODIFIED", pooled)
    handler.on_job("MODIFIED", job(active=1, ready=1))
    assert kube.request_reads == 0 and kube.patches == []


def test_a_starting_jobs_event_is_left_to_the_resync_which_finds_a_stuck_pod():
    """The watch event of a Job whose pod is not ready yet reads nothing; the resync's
    look at the same Job reads its pods and fails the request on a pod that cannot start."""
    body = running_body()
    stuck = {"metadata": {"name": "job-r-abc", "creationTimestamp": "2020-01-01T00:00:00Z"},
             "spec": {"containers": [{"name": "runner", "image": "kubescribe-runner:missing"}]},
             "status": {"containerStatuses": [{"name": "runner", "state": {"waiting": {
                 "reason": "ErrImageNeverPull", "message": "image not present"}}}]}}
    kube = Counting([body], pods=[stuck])
    a, handler = jobs_of(kube)
    a.registry.upsert(entry_from_body(body))
    handler.on_job("MODIFIED", job(active=1, ready=0))
    assert kube.request_reads == 0 and kube.pod_reads == 0 and kube.patches == []
    handler.on_job("MODIFIED", job(active=1, ready=0), watched=False)
    assert kube.request_reads == 1 and kube.pod_reads == 1
    assert kube.patches[0]["phase"] == "Failed" and kube.patches[0]["reason"] == "ImagePullFailed", kube.patches


def test_a_failed_job_fails_its_request():
    kube = FakeCluster([running_body()])
    a, handler = jobs_of(kube)
    a.registry.upsert(entry_from_body(running_body()))
    handler.on_job("MODIFIED", job(failed=3, conditions=[("Failed", "BackoffLimitExceeded", "")]))
    assert kube.patches[0]["phase"] == "Failed" and a.registry.get("uid-r").phase == "Failed"
    assert a.metrics.registry.get_sample_value("kubescribe_jobs_total", {"outcome": "failed"}) == 1


def test_a_job_of_a_request_finished_on_its_spec_is_not_looked_at():
    kube = Counting([request("Succeeded")])
    a, handler = jobs_of(kube)
    a.registry.upsert(entry_from_body(request("Succeeded")))
    handler.on_job("DELETED", job(succeeded=1, conditions=[("Complete", "", "")]))
    assert kube.request_reads == 0


def test_a_vanished_job_queues_its_request_again():
    body = running_named("lost")
    kube = FakeCluster([body], existing={})
    _, handler = jobs_of(kube)
    handler.check_job(body, "job-lost")
    assert kube.reads == ["job-lost"] and kube.patches[0]["reason"] == "JobLost"


def test_a_workload_of_another_controllers_job_costs_no_call():
    kube = FakeCluster([])
    _, handler = jobs_of(kube, admission_engine="kueue")
    handler.on_workload_event("MODIFIED", {"metadata": {"namespace": "ns", "name": "w", "ownerReferences": [
        {"kind": "Job", "apiVersion": "batch/v1", "name": "someone-elses", "uid": "u"}]}})
    handler.on_workload_event("DELETED", {"metadata": {"namespace": "ns", "name": "w"}})
    assert kube.reads == []


# --------------------------------------------------------------------------- the pool's done stream


class DoneStream:
    """The done stream: this consumer's pending entries, then new ones; stops the
    consumer once everything was read."""

    def __init__(self, pending, new, stop):
        self.pending, self.new, self.stop = list(pending), list(new), stop
        self.acked, self.asked = [], []

    def outcomes(self, consumer, *, pending, block_ms):
        self.asked.append(pending)
        if pending:
            got, self.pending = self.pending, []
            return got
        got, self.new = self.new, []
        if not got:
            self.stop.set()
        return got

    def ack_outcome(self, entry_id):
        self.acked.append(entry_id)


def test_pending_outcomes_are_applied_first_then_new_ones_each_acknowledged():
    body = request("Running", cacheKey=KEY, attempts=0)
    kube = FakeCluster([body])
    a = applier(kube, mode="pool")
    stop = threading.Event()
    failed = RunnerOutcome.failure("AudioNotFound", "expired")
    stream = DoneStream([("1-0", Finished("uid-r", "ns", "r", 1, 1, DONE))],
                        [("2-0", None), ("3-0", Finished("uid-x", "ns", "x", 1, 1, failed))], stop)
    PoolOutcomeHandler(a, kube, stream).consume(stop)
    assert stream.asked[:2] == [True, True] and stream.asked[2] is False
    assert stream.acked == ["1-0", "2-0", "3-0"]  # an unreadable entry and a gone request are acknowledged too
    assert [p["phase"] for p in kube.patches] == ["Succeeded"]


# --------------------------------------------------------------------------- progress


class Board:
    def __init__(self, reports):
        self.reports = reports

    def progress(self, uids):
        return {u: self.reports[u] for u in uids if u in self.reports}


def test_progress_is_written_when_it_moves_and_its_gauge_leaves_with_the_request():
    kube = FakeCluster([])
    a = applier(kube)
    a.registry.upsert(entry_from_body(running_body()))
    board = Board({"uid-r": Progress(30, 60)})
    reporter = ProgressReporter(a, kube, board, a.metrics, period=0)
    reporter.report()
    reporter.report()  # the same report: no second write
    assert kube.patches == [{"progress": 50}]
    gauge = {"namespace": "ns", "name": "r"}
    assert a.metrics.registry.get_sample_value("kubescribe_request_progress_ratio", gauge) == 0.5
    a.registry.remove("uid-r")
    reporter.report()
    assert a.metrics.registry.get_sample_value("kubescribe_request_progress_ratio", gauge) is None


# --------------------------------------------------------------------------- gauges and health


def test_gauges_count_the_registry_and_read_the_hit_rate_from_the_shared_counts():
    a = applier(FakeCluster([]))
    for b in (running_body(), {**request("Queued"), "metadata": {**request()["metadata"], "uid": "uid-q"}}):
        a.registry.upsert(entry_from_body(b))
    a.store.record_lookup(True)
    a.store.record_lookup(False)
    Gauges(a.registry, a.store, a.metrics).refresh()
    value = a.metrics.registry.get_sample_value
    assert value("kubescribe_queue_size") == 1 and value("kubescribe_active_workers") == 1
    assert value("kubescribe_requests", {"phase": "Running"}) == 1
    assert value("kubescribe_cache_hit_rate") == 0.5


class Pings:
    def __init__(self, fails=None):
        self.fails = fails

    def ping(self):
        if self.fails:
            raise OSError(self.fails)
        return True


@pytest.mark.parametrize("alive, store, kube, want", [
    ((True, "ok"), Pings(), Pings(), (True, "admission loop running; Redis and the API server answer")),
    ((False, "admission loop last ran 200s ago"), Pings(), Pings(), (False, "admission loop last ran 200s ago")),
    ((True, "ok"), Pings("refused"), Pings(), (False, "Redis does not answer: refused")),
    ((True, "ok"), Pings(), Pings("timed out"), (False, "the API server does not answer: timed out")),
])
def test_readiness_needs_the_admission_loop_redis_and_the_api_server(alive, store, kube, want):
    health = Health(lambda: alive, store, kube)
    assert health.ready() == want and health.healthy() == alive
