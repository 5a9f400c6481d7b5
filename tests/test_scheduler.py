"""Admission planning: pure logic, no servers."""

from __future__ import annotations

import threading

import pytest

from kubescribe.operator.registry import Entry, Registry, entry_from_body
from kubescribe.operator.scheduler import Plan, plan, queue_order


def entry(name: str, *, phase: str | None = "Queued", priority: int = 0, created: str | None = None,
          slots: int = 1, generation: int = 1, observed: int | None = 1, cache_key: str | None = None,
          namespace: str = "ns", uid: str | None = None) -> Entry:
    return Entry(namespace=namespace, name=name, uid=uid or f"uid-{name}", generation=generation, phase=phase,
                 observed_generation=observed, priority=priority,
                 created=created or "2024-05-01T10:00:00Z", slots=slots, cache_key=cache_key)


def t(seconds: int) -> str:
    return f"2024-05-01T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


def names(entries) -> list[str]:
    return [e.name for e in entries]


# -- ordering ---------------------------------------------------------------------------


def test_higher_priority_first_then_oldest_first():
    entries = [
        entry("old-low", priority=0, created=t(0)),
        entry("new-high", priority=5, created=t(30)),
        entry("old-high", priority=5, created=t(10)),
        entry("mid-low", priority=0, created=t(20)),
        entry("negative", priority=-3, created=t(1)),
    ]
    p = plan(entries, budget=10)
    assert names(p.admit) == ["old-high", "new-high", "old-low", "mid-low", "negative"]
    assert sorted(entries, key=queue_order) == p.admit


def test_ties_are_broken_by_namespace_and_name_deterministically():
    entries = [entry("b", created=t(5)), entry("a", created=t(5)), entry("a", namespace="aa", created=t(5))]
    p1 = plan(entries, budget=1)
    p2 = plan(list(reversed(entries)), budget=1)
    assert names(p1.admit) == names(p2.admit) == ["a"]
    assert p1.admit[0].namespace == "aa"
    assert p1.positions == p2.positions


def test_budget_limits_admission_and_positions_are_one_based_and_contiguous():
    entries = [entry(f"r{i}", created=t(i)) for i in range(6)]
    p = plan(entries, budget=2)
    assert names(p.admit) == ["r0", "r1"]
    assert p.used_slots == 2
    assert p.positions == {"uid-r2": 1, "uid-r3": 2, "uid-r4": 3, "uid-r5": 4}
    assert sorted(p.positions.values()) == list(range(1, len(p.positions) + 1))
    assert not set(p.positions) & {e.uid for e in p.admit}


def test_empty_and_nothing_queued():
    p = plan([], budget=4)
    assert p == Plan([], {}, set(), 0)
    done = [entry("a", phase="Succeeded"), entry("b", phase="Failed"), entry("c", phase="Pending"),
            entry("d", phase=None)]
    p = plan(done, budget=4)
    assert p.admit == [] and p.positions == {} and p.used_slots == 0


# -- head-of-line blocking --------------------------------------------------------------


def test_head_that_does_not_fit_blocks_everything_behind_it():
    entries = [
        entry("running", phase="Running", slots=1, created=t(0)),
        entry("big", slots=2, priority=9, created=t(1)),
        entry("small", slots=1, created=t(2)),
        entry("small2", slots=1, created=t(3)),
    ]
    p = plan(entries, budget=2)  # one slot free, the head needs two
    assert p.admit == []
    assert p.positions == {"uid-big": 1, "uid-small": 2, "uid-small2": 3}
    assert p.used_slots == 1


def test_blocking_applies_after_some_were_admitted():
    entries = [
        entry("a", slots=1, created=t(0)),
        entry("big", slots=3, created=t(1)),
        entry("c", slots=1, created=t(2)),
    ]
    p = plan(entries, budget=3)
    assert names(p.admit) == ["a"]  # big needs 3 of the 2 left; c must not jump ahead
    assert p.positions == {"uid-big": 1, "uid-c": 2}
    assert p.used_slots == 1


def test_head_fits_once_slots_are_free():
    entries = [entry("big", slots=2, created=t(1)), entry("small", slots=1, created=t(2))]
    assert names(plan(entries, budget=3).admit) == ["big", "small"]
    assert names(plan(entries, budget=2).admit) == ["big"]


def test_request_larger_than_the_whole_budget_blocks_the_queue():
    entries = [entry("huge", slots=8, created=t(0)), entry("small", created=t(1))]
    p = plan(entries, budget=4)
    assert p.admit == [] and p.positions == {"uid-huge": 1, "uid-small": 2}


# -- running and in flight --------------------------------------------------------------


def test_running_requests_use_the_budget():
    entries = [entry("r1", phase="Running", slots=2), entry("q1", created=t(1)), entry("q2", created=t(2))]
    p = plan(entries, budget=3)
    assert names(p.admit) == ["q1"]
    assert p.used_slots == 3
    assert p.positions == {"uid-q2": 1}


def test_an_admission_marked_in_the_registry_counts_against_the_budget():
    """The operator marks an admitted request Running in its registry before the watch
    brings the Running status back; the next pass counts it, once."""
    reg = Registry()
    for e in (entry("q1", created=t(1)), entry("q2", created=t(2)), entry("q3", created=t(3))):
        reg.upsert(e)
    reg.mark("uid-q1", phase="Running", job_name="job-q1", queue_position=None)
    p = plan(reg.snapshot(), budget=2)
    assert names(p.admit) == ["q2"]
    assert p.used_slots == 2
    assert "uid-q1" not in p.positions  # not queued any more as far as positions go
    assert p.positions == {"uid-q3": 1}


def test_over_budget_running_admits_nothing():
    entries = [entry("r1", phase="Running", slots=2), entry("r2", phase="Running", slots=2), entry("q")]
    p = plan(entries, budget=2)
    assert p.admit == [] and p.used_slots == 4 and p.positions == {"uid-q": 1}


# -- identical requests -----------------------------------------------------------------


def test_identical_request_waits_while_one_runs_and_is_admitted_after():
    running = entry("first", phase="Running", cache_key="K", created=t(0))
    twin = entry("twin", cache_key="K", created=t(1))
    other = entry("other", cache_key="L", created=t(2))
    p = plan([running, twin, other], budget=4)
    assert names(p.admit) == ["other"]
    assert p.waiting_for_identical == {"uid-twin"}
    assert p.positions == {"uid-twin": 1}

    finished = entry("first", phase="Succeeded", cache_key="K", created=t(0))
    p = plan([finished, twin], budget=4)
    assert names(p.admit) == ["twin"]
    assert p.waiting_for_identical == set()


def test_held_identical_request_does_not_block_the_queue():
    entries = [entry("first", phase="Running", cache_key="K"), entry("twin", cache_key="K", priority=10),
               entry("next", cache_key=None, created=t(5))]
    p = plan(entries, budget=2)
    assert names(p.admit) == ["next"]
    assert p.positions == {"uid-twin": 1}


def test_two_identical_queued_requests_only_one_is_admitted():
    entries = [entry("a", cache_key="K", created=t(0)), entry("b", cache_key="K", created=t(1)),
               entry("c", cache_key="M", created=t(2))]
    p = plan(entries, budget=4)
    assert names(p.admit) == ["a", "c"]
    assert p.waiting_for_identical == {"uid-b"}
    assert p.positions == {"uid-b": 1}


def test_requests_without_cache_key_are_never_held():
    entries = [entry("r", phase="Running", cache_key=None), entry("q1"), entry("q2", created=t(1))]
    p = plan(entries, budget=3)
    assert names(p.admit) == ["q1", "q2"] and p.waiting_for_identical == set()


# -- generations ------------------------------------------------------------------------


def test_stale_generation_is_not_admitted_nor_given_a_position():
    entries = [
        entry("stale", generation=2, observed=1, created=t(0)),
        entry("never-seen", generation=1, observed=None, created=t(1)),
        entry("fresh", generation=3, observed=3, created=t(2)),
    ]
    p = plan(entries, budget=4)
    assert names(p.admit) == ["fresh"]
    assert p.positions == {}


def test_stale_running_entry_still_uses_slots():
    entries = [entry("r", phase="Running", generation=2, observed=1, slots=2), entry("q")]
    p = plan(entries, budget=2)
    assert p.admit == [] and p.used_slots == 2


# -- entry_from_body --------------------------------------------------------------------


def body(spec=None, status=None, **meta):
    m = {"namespace": "ns", "name": "req", "uid": "u1", "generation": 4,
         "creationTimestamp": "2024-05-01T10:00:00Z"}
    m.update(meta)
    out = {"metadata": m, "spec": spec if spec is not None else {"audio": {"redisKey": "k"}}}
    if status is not None:
        out["status"] = status
    return out


@pytest.mark.parametrize("spec, slots", [
    ({}, 1),  # default: one GPU
    ({"device": "cuda"}, 1),
    ({"device": "auto"}, 1),
    ({"device": "cpu"}, 1),  # a CPU Job still takes one slot of the budget
    ({"device": "cpu", "gpus": 0}, 1),
    ({"gpus": 0}, 1),
    ({"gpus": 2}, 2),
    ({"device": "cuda", "gpus": 4}, 4),
    ({"gpus": None}, 1),
])
def test_slots_from_gpus_and_device(spec, slots):
    assert entry_from_body(body(spec)).slots == slots


def test_entry_from_body_reads_metadata_and_status():
    e = entry_from_body(body({"priority": 7}, {"phase": "Queued", "observedGeneration": 4, "cacheKey": "ck",
                                                "jobName": "j", "queuePosition": 3}))
    assert e.key == ("ns", "req")
    assert (e.namespace, e.name, e.uid, e.generation) == ("ns", "req", "u1", 4)
    assert (e.phase, e.observed_generation, e.priority) == ("Queued", 4, 7)
    assert (e.cache_key, e.job_name, e.queue_position) == ("ck", "j", 3)
    assert e.created == "2024-05-01T10:00:00Z"
    assert e.current


def test_entry_from_body_tolerates_missing_and_bad_fields():
    b = {"metadata": {"namespace": "ns", "name": "n", "uid": "u"}}
    e = entry_from_body(b)
    assert e.generation == 1 and e.phase is None and e.observed_generation is None
    assert e.priority == 0 and e.created == "" and e.slots == 1 and not e.current
    assert entry_from_body(body({"priority": "high"})).priority == 0
    assert entry_from_body(body({"priority": None})).priority == 0
    assert entry_from_body(body({"priority": "12"})).priority == 12
    assert entry_from_body(body(status=None)).phase is None
    assert entry_from_body({**body(), "spec": None, "status": None}).slots == 1


def test_entry_current_tracks_observed_generation():
    assert entry_from_body(body(status={"observedGeneration": 4})).current
    assert not entry_from_body(body(status={"observedGeneration": 3})).current


# -- Registry ---------------------------------------------------------------------------


def test_registry_upsert_get_mark_remove_replace():
    r = Registry()
    a, b = entry("a"), entry("b")
    r.upsert(a)
    r.upsert(b)
    assert len(r.snapshot()) == 2 and r.get("uid-a") == a
    r.upsert(entry("a", priority=3))
    assert len(r.snapshot()) == 2 and r.get("uid-a").priority == 3
    r.mark("uid-a", phase="Running", job_name="j")
    got = r.get("uid-a")
    assert got.phase == "Running" and got.job_name == "j" and got.priority == 3
    r.mark("missing", phase="Running")  # no error, nothing added
    assert len(r.snapshot()) == 2 and r.get("missing") is None
    r.remove("uid-b")
    r.remove("uid-b")  # idempotent
    assert [e.name for e in r.snapshot()] == ["a"]
    r.merge([entry("c"), entry("d")])
    r.drop_unlisted({"uid-c", "uid-d"})
    assert sorted(e.name for e in r.snapshot()) == ["c", "d"]


def test_registry_snapshot_is_a_copy():
    r = Registry()
    r.upsert(entry("a"))
    snap = r.snapshot()
    r.upsert(entry("b"))
    assert len(snap) == 1 and len(r.snapshot()) == 2


def test_registry_is_thread_safe():
    r = Registry()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(500):
                r.upsert(entry(f"w{k}-{i}"))
                r.mark(f"uid-w{k}-{i}", phase="Running")
                if i % 3 == 0:
                    r.remove(f"uid-w{k}-{i}")
                r.snapshot()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(r.snapshot()) == 4 * (500 - len(range(0, 500, 3)))
    assert all(e.phase == "Running" for e in r.snapshot())


def test_plan_over_a_registry_snapshot_matches_the_operator_flow():
    """Admit, mark Running, then the next plan sees the budget used."""
    r = Registry()
    for i in range(3):
        r.upsert(entry(f"q{i}", created=t(i), cache_key=f"k{i}"))
    p = plan(r.snapshot(), budget=2)
    assert names(p.admit) == ["q0", "q1"]
    for e in p.admit:
        r.mark(e.uid, phase="Running")
    p = plan(r.snapshot(), budget=2)
    assert p.admit == [] and p.positions == {"uid-q2": 1}
    r.mark("uid-q0", phase="Succeeded")
    p = plan(r.snapshot(), budget=2)
    assert names(p.admit) == ["q2"] and p.positions == {}


def test_registry_keeps_the_newest_view_of_a_request():
    from dataclasses import replace

    from kubescribe.operator.registry import Entry, Registry

    base = Entry("ns", "a", "uid-a", 1, "Queued", 1, 0, "2026-01-01T00:00:00Z", 1, resource_version=10)
    reg = Registry()
    assert reg.upsert_if_newer(base)
    assert not reg.upsert_if_newer(replace(base, phase=None, resource_version=9))  # an older event
    assert not reg.upsert_if_newer(replace(base, resource_version=10))  # the same version again
    assert reg.upsert_if_newer(replace(base, phase="Running", resource_version=11))
    # A LIST taken before version 11 does not roll the entry back; a request created after
    # the LIST survives it; one missing from a newer LIST is gone.
    late = replace(base, uid="uid-b", name="b", resource_version=20)
    reg.upsert(late)
    reg.merge([replace(base, phase="Queued", resource_version=10)])
    reg.drop_unlisted({"uid-a"}, list_version=15)
    assert reg.get("uid-a").phase == "Running" and reg.get("uid-b") is not None
    reg.drop_unlisted(set(), list_version=25)
    assert len(reg.snapshot()) == 0


def test_a_list_read_in_pages_merges_like_one_list():
    from kubescribe.operator.registry import Entry, Registry

    def e(name, rv, phase="Queued"):
        return Entry("ns", name, f"uid-{name}", 1, phase, 1, 0, "2026-01-01T00:00:00Z", 1, resource_version=rv)

    reg = Registry()
    for x in (e("a", 5), e("b", 30, "Running"), e("gone", 6), e("new", 40)):
        reg.upsert(x)
    # a LIST at version 20, in two pages: a is updated, b's newer watch version stays,
    # c is added, gone (not listed, older than the list) goes, new (created after it) stays
    reg.merge([e("a", 12, "Running"), e("b", 10)])
    reg.merge([e("c", 15)])
    reg.drop_unlisted({"uid-a", "uid-b", "uid-c"}, list_version=20)
    got = {x.name: (x.phase, x.resource_version) for x in reg.snapshot()}
    assert got == {"a": ("Running", 12), "b": ("Running", 30), "c": ("Queued", 15), "new": ("Queued", 40)}
