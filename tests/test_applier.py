"""The applier alone, with no server: how a decision's Transition is written (status
first, then registry, Job deletion, counts, Event, wake-up), and the one place where a
404 stops everything."""

from __future__ import annotations

import json

import pytest

from kubescribe.metrics import OperatorMetrics
from kubescribe.operator import intake, runs
from kubescribe.operator.applier import Applier
from kubescribe.operator.intake import CacheAnswer
from kubescribe.operator.pods import StuckPod
from kubescribe.operator.registry import entry_from_body
from kubescribe.store import MemoryStore

from tests.support.operator_parts import (DONE, KEY, RESULT, FakeKube, applier, job, request, running_body, settings,
                                          spec_of)


def test_apply_writes_the_status_then_registry_counts_and_event():
    kube = FakeKube()
    a = applier(kube)
    body = running_body()
    a.registry.upsert(entry_from_body(body))
    stuck = StuckPod("ImagePullFailed", "cannot be pulled", "p")
    assert a.apply(body, runs.on_job(body, job(active=1), deleted=False, last=None, stored=None, stuck=stuck))
    assert kube.patches[0]["phase"] == "Failed" and kube.events == ["ImagePullFailed"] and kube.deleted == ["job-r"]
    assert a.registry.get("uid-r").phase == "Failed" and a.wakeup.is_set()
    value = a.metrics.registry.get_sample_value
    assert value("kubescribe_transcriptions_total", {"status": "failed", "model": "tiny.en"}) == 1
    assert value("kubescribe_errors_total", {"type": "job_failed"}) == 1
    assert value("kubescribe_jobs_total", {"outcome": "failed"}) == 1


def test_a_list_read_before_a_status_write_cannot_roll_the_registry_back():
    """The registry takes the patched object's resourceVersion, so a resync page listed
    just before the Queued write does not make the request look new again."""

    class VersionedKube(FakeKube):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def patch_status(self, ns, name, doc):
            super().patch_status(ns, name, doc)
            meta = {**self.body["metadata"], "resourceVersion": "7"}
            return {**self.body, "metadata": meta, "status": {**(self.body.get("status") or {}), **doc}}

    body = request()
    body["metadata"]["resourceVersion"] = "5"
    a = applier(VersionedKube(body))
    a.registry.upsert(entry_from_body(body))
    assert a.apply(body, intake.on_seen(body, spec_of(body), KEY, None, CacheAnswer("miss")))
    assert a.registry.get("uid-r").phase == "Queued" and a.registry.get("uid-r").resource_version == 7
    stale = dict(body)
    stale["metadata"] = {**body["metadata"], "resourceVersion": "6"}  # listed before the write
    a.registry.merge([entry_from_body(stale)])
    assert a.registry.get("uid-r").phase == "Queued"


def test_apply_stops_at_a_404_no_registry_change_no_event_no_count():
    kube = FakeKube(exists=False)
    a = applier(kube)
    body = request("Queued", cacheKey=KEY)
    a.registry.upsert(entry_from_body(body))
    t = intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name="job-r")
    assert a.apply(body, t) is False
    assert kube.events == [] and a.registry.get("uid-r") is None
    assert a.store.stats().lookups == 0


def test_one_lookup_per_request_in_the_shared_hit_rate():
    """Three new requests then two repeats: 3 misses when they start, 2 hits: 0.4."""
    a = applier(FakeKube())
    for i in range(3):
        body = request("Queued", cacheKey=KEY)
        a.apply(body, intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name=f"j{i}"))
    for _ in range(2):
        body = request()
        a.apply(body, intake.on_seen(body, spec_of(body), KEY, None, CacheAnswer("hit", result=RESULT)))
    assert a.store.stats().hit_rate == pytest.approx(0.4)
    value = a.metrics.registry.get_sample_value
    assert value("kubescribe_cache_operations_total", {"operation": "get", "result": "miss"}) == 3
    assert value("kubescribe_cache_operations_total", {"operation": "get", "result": "hit"}) == 2


class Recording:
    """A Redis client that notes the name of every command it is given."""

    def __init__(self, inner):
        self.inner, self.commands = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def command(*args, **kwargs):
            self.commands.append(name)
            return attr(*args, **kwargs)

        return command


def test_counting_a_lookup_costs_one_redis_command_and_reads_no_gauge():
    """The lookup is counted while the request's lock is held: one HINCRBY, not the
    HGETALL and GET that refreshing the hit-rate gauge there used to add. The gauge is
    read before a scrape (health.Gauges.refresh)."""
    metrics = OperatorMetrics()  # as in main: the store and the applier count into the same metrics
    store = MemoryStore(metrics=metrics)
    store.client = Recording(store.client)
    a = Applier(settings(), FakeKube(), store, metrics)
    body = request("Queued", cacheKey=KEY)
    a.apply(body, intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name="j"))
    assert store.client.commands == ["hincrby"]
    assert metrics.registry.get_sample_value("kubescribe_cache_operations_total",
                                             {"operation": "get", "result": "miss"}) == 1  # once, not twice


def test_a_runners_outcome_is_counted_by_the_operator_with_its_file_size():
    a = applier(FakeKube())
    body = running_body()
    a.apply(body, runs.on_job(body, job(succeeded=1, conditions=[("Complete", "", "")]), deleted=False,
                              last=DONE, stored=None, stuck=None))
    value = a.metrics.registry.get_sample_value
    assert value("kubescribe_file_size_bytes_count") == 1 and value("kubescribe_file_size_bytes_sum") == 64000
    assert value("kubescribe_transcription_duration_seconds_count", {"model": "tiny.en"}) == 1
    assert value("kubescribe_cache_operations_total", {"operation": "set", "result": "ok"}) == 1
    assert json.loads(DONE.to_json())["sizeBytes"] == 64000


def test_normal_events_are_posted_only_when_asked_warnings_always():
    for normal, expected in ((False, ["RunnerFailed"]), (True, ["JobCreated", "RunnerFailed"])):
        kube = FakeKube()
        a = applier(kube, normal_events=normal)
        body = request("Queued", cacheKey=KEY)
        a.apply(body, intake.on_admitted(body, spec_of(body), CacheAnswer("miss"), job_name="job-r"))
        a.apply(running_body(), runs.on_job(
            running_body(), job(failed=1, conditions=[("Failed", "BackoffLimitExceeded", "")]), deleted=False,
            last=None, stored=None, stuck=None))
        assert kube.events == expected, normal


def test_a_transition_for_no_request_changes_nothing():
    kube = FakeKube()
    a = applier(kube)
    assert a.apply(request(), None) is False
    assert kube.patches == [] and not a.wakeup.is_set()


def test_one_request_has_one_lock_and_it_is_reentrant():
    a = applier(FakeKube())
    lock = a.lock_for("uid-r")
    assert a.lock_for("uid-r") is lock
    with lock, a.lock_for("uid-r"):
        pass
