"""The admission pass alone, with no server: built from an applier, a fake API, a cache
answer and the gauges, as ``controllers.build`` builds it, and nothing else."""

from __future__ import annotations

import threading
import time

import pytest

from kubescribe.operator import admitter as admitter_module
from kubescribe.operator.admitter import Admitter
from kubescribe.operator.health import Gauges
from kubescribe.operator.intake import CacheAnswer
from kubescribe.operator.registry import entry_from_body
from kubescribe.operator.request_handler import RequestHandler
from kubescribe.operator.retention import Retention

from tests.support.operator_parts import RESULT, FakeCluster, applier, queued_request, request


def build(kube, answer=CacheAnswer("miss"), synced=True, **given):
    a = applier(kube, **given)
    asked = []

    def lookup(key, spec, body):
        asked.append(body["metadata"]["name"])
        return answer

    done = threading.Event()
    if synced:
        done.set()
    adm = Admitter(a, kube, a.settings, a.metrics, lookup, Gauges(a.registry, a.store, a.metrics), done)
    return a, adm, asked


def queue(a, bodies):
    for b in bodies:
        a.registry.upsert(entry_from_body(b))


def test_the_admission_pass_starts_what_fits_and_numbers_the_rest():
    bodies = [queued_request("first", "2026-01-01T00:00:01Z"), queued_request("second", "2026-01-01T00:00:02Z")]
    kube = FakeCluster(bodies)
    a, adm, _ = build(kube)
    queue(a, bodies)
    adm.step()
    assert len(kube.jobs) == 1 and kube.jobs[0].startswith("kubescribe-first-")
    running, position = kube.patches
    assert running["phase"] == "Running" and running["jobName"] == kube.jobs[0]
    assert position == {"queuePosition": 1, "reason": "Queued", "message": "position 1 in the queue"}
    assert a.registry.get("uid-first").phase == "Running" and a.registry.get("uid-second").queue_position == 1
    assert kube.events == []  # Normal progress is in the status, not in Events (normal_events off)
    assert a.metrics.registry.get_sample_value("kubescribe_jobs_total", {"outcome": "created"}) == 1
    assert a.metrics.registry.get_sample_value("kubescribe_queue_size") == 1


def test_positions_are_coalesced_to_one_round_per_period():
    bodies = [queued_request(f"r{i}", f"2026-01-01T00:00:0{i}Z") for i in range(3)]
    kube = FakeCluster(bodies)
    a, adm, _ = build(kube, queue_positions=2)
    queue(a, bodies)
    adm.step()  # r0 admitted; r1, r2 numbered 1, 2
    assert [p.get("queuePosition") for p in kube.patches[1:]] == [1, 2]
    a.registry.remove("uid-r0")  # r0 finished: a slot is free
    adm.step()  # r1 admitted at once; r2's new place waits for the next round
    assert kube.patches[-1]["phase"] == "Running" and a.registry.get("uid-r2").queue_position == 2


def test_nothing_is_admitted_before_the_first_resync_but_the_loop_is_alive():
    bodies = [queued_request("first", "2026-01-01T00:00:01Z")]
    kube = FakeCluster(bodies)
    a, adm, _ = build(kube, synced=False)
    queue(a, bodies)
    before = adm.last_step
    adm.step()
    assert kube.jobs == [] and kube.patches == [] and adm.last_step >= before
    assert adm.healthy()[0]


def test_the_admitter_reports_its_own_liveness(monkeypatch):
    _, adm, _ = build(FakeCluster([]))
    adm.step()
    assert adm.healthy() == (True, "admission loop last ran 0s ago")
    now = time.monotonic()
    monkeypatch.setattr(admitter_module.time, "monotonic", lambda: now + admitter_module.STUCK_SECONDS + 1)
    ok, detail = adm.healthy()
    assert not ok and "admission loop last ran 12" in detail


def test_a_request_answered_by_the_cache_while_it_waited_gets_no_job():
    body = queued_request("late", "2026-01-01T00:00:01Z")
    body["status"]["cacheKey"] = "c" * 64
    kube = FakeCluster([body])
    a, adm, asked = build(kube, answer=CacheAnswer("hit", result=RESULT))
    queue(a, [body])
    adm.step()
    assert asked == ["late"] and kube.jobs == []
    assert kube.patches[0]["phase"] == "Succeeded" and a.registry.get("uid-late").phase == "Succeeded"


@pytest.mark.parametrize("gone", [True, False])
def test_a_request_deleted_or_moved_on_since_the_plan_is_not_admitted(gone):
    body = queued_request("moved", "2026-01-01T00:00:01Z")
    kube = FakeCluster([] if gone else [{**body, "status": {**body["status"], "phase": "Running"}}])
    a, adm, asked = build(kube)
    queue(a, [body])
    adm.admit("ns", "moved", "uid-moved")
    assert kube.jobs == [] and asked == []
    entry = a.registry.get("uid-moved")
    assert (entry is None) if gone else (entry.phase == "Running")


class PoolKube(FakeCluster):
    """Pooled runner Jobs: each list counted, each create remembered as a running Job."""

    def __init__(self, bodies=()):
        super().__init__(list(bodies))
        self.lists, self.pool = 0, []

    def pool_jobs(self, ns):
        self.lists += 1
        return [{"metadata": {"name": n}, "status": {}} for n in self.pool]

    def create_pool_job(self, ns, job):
        self.pool.append(job["metadata"]["name"])


class Stream:
    """What reaches the Redis stream: the names dispatched, in order."""

    def __init__(self):
        self.items = []

    def dispatch(self, item):
        self.items.append(item.name)


def dispatched(n):
    bodies = [queued_request(f"p{i}", f"2026-01-01T00:00:{i:02d}Z") for i in range(n)]
    for b in bodies:
        b["status"] = {**b["status"], "phase": "Running"}  # on the stream, no Job of its own
    return bodies


def test_the_pool_is_listed_only_when_the_work_may_want_more_runners(monkeypatch):
    kube = PoolKube()
    a, adm, _ = build(kube, mode="pool", gpu_budget=3, requests_per_runner=2)
    queue(a, dispatched(3))  # 3 dispatched: 2 runners wanted
    clock = [1000.0]
    monkeypatch.setattr(admitter_module.time, "monotonic", lambda: clock[0])
    adm.ensure_pool()
    assert (kube.lists, len(kube.pool)) == (1, 2)
    for _ in range(50):  # a burst's passes: no list while the pool listed a moment ago is enough
        adm.ensure_pool()
    assert (kube.lists, len(kube.pool)) == (1, 2)
    queue(a, dispatched(6))  # more work than 2 runners take: listed again, a third started
    adm.ensure_pool()
    assert (kube.lists, len(kube.pool)) == (2, 3)
    kube.pool.pop()  # a runner ended; after the period the list sees it and replaces it
    clock[0] += admitter_module.POOL_LIST_PERIOD + 0.1
    adm.ensure_pool()
    assert (kube.lists, len(kube.pool)) == (3, 3)


def test_pool_mode_keeps_two_batches_dispatched_per_runner():
    """A runner's batch and the next one, ready on the stream when it finishes: with
    one runner of 2 requests, 4 of 5 queued requests are dispatched, the fifth waits."""
    bodies = [queued_request(f"q{i}", f"2026-01-01T00:00:{i:02d}Z") for i in range(5)]
    kube = PoolKube(bodies)
    a, adm, _ = build(kube, mode="pool", gpu_budget=1, requests_per_runner=2)
    assert adm.capacity() == 2 * admitter_module.POOL_BATCHES_AHEAD == 4

    adm.queue = Stream()
    queue(a, bodies)
    adm.step()
    assert adm.queue.items == ["q0", "q1", "q2", "q3"]  # the last in line waits in the operator's queue
    phases = {e.name: e.phase for e in a.registry.snapshot()}
    assert [phases[f"q{i}"] for i in range(5)] == ["Running"] * 4 + ["Queued"], phases


def new_request(name, created):
    """A request as its first watch event brings it: no status."""
    body = request()
    body["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=created)
    return body


def seen(kube, bodies, **given):
    a, adm, asked = build(kube, **given)
    handler = RequestHandler(a, kube, a.store, Retention(a.store))
    for b in bodies:
        handler.on_request("ADDED", b)
    assert kube.patches == [] and all(e.unwritten for e in a.registry.snapshot())
    return a, adm, asked


def test_a_new_request_admitted_at_once_costs_one_status_write_and_one_that_waits_says_queued():
    """The first fits the budget of 1: its Queued and Running statuses go as one patch.
    The second does not: the same pass writes its Queued status, as the handler used to."""
    bodies = [new_request("first", "2026-01-01T00:00:01Z"), new_request("second", "2026-01-01T00:00:02Z")]
    kube = FakeCluster(bodies)
    a, adm, asked = seen(kube, bodies, normal_events=True)
    adm.step()
    assert kube.jobs == [kube.jobs[0]] and kube.jobs[0].startswith("kubescribe-first-") and asked == ["first"]
    first, second = kube.patches
    assert first["phase"] == "Running" and first["jobName"] == kube.jobs[0] and first["observedGeneration"] == 1
    assert first["queuedAt"] and first["startedAt"] and first["audioSha256"] == "a" * 64 and first["cacheKey"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in first["conditions"]}
    assert conditions == {"Ready": ("False", "Running"), "Admitted": ("True", "JobCreated")}
    assert second["phase"] == "Queued" and second["queuedAt"] and second["cacheKey"] and "jobName" in second
    assert kube.events == ["JobCreated", "Queued"]
    assert {e.name: (e.phase, e.unwritten) for e in a.registry.snapshot()} == {
        "first": ("Running", False), "second": ("Queued", False)}
    assert a.store.stats().misses == 1  # the first's lookup, counted once at its admission
    adm.step()  # nothing left to write: the second waits, written
    assert len(kube.patches) == 2


def test_a_held_request_waits_queued_before_the_first_resync():
    bodies = [new_request("early", "2026-01-01T00:00:01Z")]
    kube = FakeCluster(bodies)
    a, adm, _ = seen(kube, bodies, synced=False)
    adm.step()
    assert kube.jobs == [] and [p["phase"] for p in kube.patches] == ["Queued"]
    assert a.registry.get("uid-early").unwritten is False


def test_a_held_request_is_admitted_on_its_newest_body_without_reading_it_again():
    """Edited before the pass: its watch event, under the same lock, holds it again on the
    new body, and the pass admits that one. Nothing is read from the server (this fake
    has no requests to read: a GET would find it gone)."""
    body = new_request("edited", "2026-01-01T00:00:01Z")
    kube = FakeCluster([])
    a, adm, asked = seen(kube, [body])
    handler = RequestHandler(a, kube, a.store, Retention(a.store))
    edited = {**body, "metadata": {**body["metadata"], "generation": 2, "resourceVersion": "8"},
              "spec": {**body["spec"], "priority": 5}}
    handler.on_request("MODIFIED", edited)
    assert a.registry.get("uid-edited").generation == 2 and a.registry.get("uid-edited").unwritten
    adm.step()
    assert len(kube.jobs) == 1 and asked == ["edited"]
    (patch,) = kube.patches
    assert patch["phase"] == "Running" and patch["observedGeneration"] == 2


def test_a_held_request_someone_else_wrote_is_read_again_before_admission():
    """A status written meanwhile (by another operator replica on its way out): the watch
    event replaces the held entry, and the pass reads the request as usual."""
    body = new_request("written", "2026-01-01T00:00:01Z")
    written = {**body, "metadata": {**body["metadata"], "resourceVersion": "8"},
               "status": {"phase": "Running", "observedGeneration": 1, "jobName": "theirs"}}
    kube = FakeCluster([written])
    a, adm, asked = seen(kube, [body])
    RequestHandler(a, kube, a.store, Retention(a.store)).on_request("MODIFIED", written)
    adm.admit("ns", "written", "uid-written")
    assert kube.jobs == [] and kube.patches == [] and asked == []
    assert a.registry.get("uid-written").phase == "Running" and not a.registry.get("uid-written").unwritten


def test_a_resync_list_of_the_same_version_keeps_a_request_held():
    body = new_request("held", "2026-01-01T00:00:01Z")
    kube = FakeCluster([body])
    a, _, _ = seen(kube, [body])
    a.registry.merge([entry_from_body(body)])  # the page of a LIST read before the admission
    assert a.registry.get("uid-held").unwritten and a.registry.get("uid-held").phase == "Queued"
    newer = {**body, "metadata": {**body["metadata"], "resourceVersion": "8"}}
    a.registry.merge([entry_from_body(newer)])  # a later version: the listed view wins
    assert not a.registry.get("uid-held").unwritten


def test_a_held_request_dispatched_to_the_pool_carries_its_queued_status():
    body = new_request("pooled", "2026-01-01T00:00:01Z")
    kube = PoolKube([body])
    a, adm, _ = seen(kube, [body], mode="pool", gpu_budget=1)

    adm.queue = Stream()
    adm.step()
    assert adm.queue.items == ["pooled"]
    (patch,) = kube.patches
    assert patch["phase"] == "Running" and patch["reason"] == "Dispatched" and patch["queuedAt"]
    assert patch["jobName"] is None and patch["observedGeneration"] == 1
