"""The operator's event queue: the latest event per object, one thread per object at a
time, first-due order, and trimmed bodies."""

import threading

from kubescribe.operator.event_queue import EventQueue, trimmed


def body(uid, version, kind="TranscriptionRequest"):
    return {"kind": kind, "metadata": {"uid": uid, "resourceVersion": str(version),
                                      "managedFields": [{"manager": "kubescribe"}]}, "spec": {"x": version}}


class Recorder:
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.expected = 0

    def __call__(self, event_type, obj):
        with self.lock:
            self.seen.append((obj["metadata"]["uid"], event_type, obj["metadata"]["resourceVersion"]))
            if len(self.seen) >= self.expected:
                self.all_done.set()


def test_events_of_one_object_queued_meanwhile_collapse_into_the_latest_in_first_due_order():
    q = EventQueue(workers=1)  # not started: everything queues
    rec = Recorder()
    q.put("a", rec, "ADDED", body("a", 1))
    q.put("b", rec, "ADDED", body("b", 1))
    q.put("a", rec, "MODIFIED", body("a", 2))
    q.put("a", rec, "DELETED", body("a", 3))
    assert q.depth() == 2
    rec.expected = 2
    q.start()
    try:
        assert rec.all_done.wait(10)
        assert rec.seen == [("a", "DELETED", "3"), ("b", "ADDED", "1")]
    finally:
        q.stop()


def test_an_object_is_never_handled_by_two_threads_and_an_event_during_handling_is_not_lost():
    q = EventQueue(workers=4).start()
    entered, release = threading.Event(), threading.Event()
    calls = []
    active = []
    overlap = []
    done = threading.Event()
    lock = threading.Lock()

    def handler(event_type, obj):
        with lock:
            active.append(1)
            if len(active) > 1:
                overlap.append(obj)
        version = obj["metadata"]["resourceVersion"]
        if version == "1":
            entered.set()
            assert release.wait(10)
        with lock:
            active.pop()
            calls.append(version)
            if version == "3":
                done.set()

    try:
        q.put("a", handler, "ADDED", body("a", 1))
        assert entered.wait(10)  # version 1 is being handled on one thread
        q.put("a", handler, "MODIFIED", body("a", 2))
        q.put("a", handler, "MODIFIED", body("a", 3))
        assert q.depth() == 0  # not queued while it is busy: three idle threads stay idle
        release.set()
        assert done.wait(10)
        assert calls == ["1", "3"] and not overlap
    finally:
        q.stop()


def test_a_failing_handler_does_not_stop_the_queue():
    q = EventQueue(workers=1).start()
    rec = Recorder()
    rec.expected = 1

    def boom(event_type, obj):
        raise RuntimeError("boom")

    try:
        q.put("bad", boom, "ADDED", body("bad", 1))
        q.put("good", rec, "ADDED", body("good", 1))
        assert rec.all_done.wait(10) and rec.seen == [("good", "ADDED", "1")]
    finally:
        q.stop()


def test_bodies_lose_only_what_no_handler_reads():
    job = body("j", 1, kind="Job")
    job["spec"] = {"suspend": True, "template": {"spec": {"containers": [{"env": [{"name": "KUBESCRIBE_SPEC"}]}]}}}
    job["status"] = {"active": 1}
    t = trimmed(job)
    assert t["spec"] == {"suspend": True} and t["status"] == {"active": 1}
    assert "managedFields" not in t["metadata"] and t["metadata"]["uid"] == "j"
    assert "template" in job["spec"] and "managedFields" in job["metadata"]  # the original is untouched
    req = trimmed(body("r", 1))
    assert req["spec"] == {"x": 1} and "managedFields" not in req["metadata"]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Heard:
    """An observer that writes down what the queue tells it."""

    def __init__(self):
        self.events, self.adds, self.waits, self.works = [], 0, [], []

    def event(self, kind):
        self.events.append(kind)

    def added(self):
        self.adds += 1

    def started(self, waited):
        self.waits.append(waited)

    def finished(self, seconds):
        self.works.append(seconds)


def test_the_observer_hears_events_adds_waits_and_handling_times():
    clock, heard = Clock(), Heard()
    q = EventQueue(workers=1, observer=heard, clock=clock)  # not started: everything queues
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def handler(event_type, obj):
        if obj["metadata"]["uid"] == "a" and obj["metadata"]["resourceVersion"] == "2":
            entered.set()
            assert release.wait(10)
            clock.now += 2.0  # the handling's API calls
        if obj["metadata"]["uid"] == "a" and obj["metadata"]["resourceVersion"] == "3":
            done.set()

    q.put("a", handler, "ADDED", body("a", 1))
    q.put("j", handler, "ADDED", body("j", 1, kind="Job"))
    q.put("a", handler, "MODIFIED", body("a", 2))  # coalesced with the first
    assert heard.events == ["TranscriptionRequest", "Job", "TranscriptionRequest"] and heard.adds == 2
    assert q.depth() == 2 and q.longest_running() == 0.0
    clock.now += 5.0
    q.start()
    try:
        assert entered.wait(10)
        assert heard.waits == [5.0]
        clock.now += 1.5
        assert q.longest_running() == 1.5  # a's handling, still under way
        q.put("a", handler, "MODIFIED", body("a", 3))  # during the handling: a is queued again
        release.set()
        assert done.wait(10)
        q.stop()
        assert heard.adds == 3 and heard.works[0] == 3.5
        assert heard.waits == [5.0, 8.5, 0.0]  # a; then j, which waited behind a's handling; then a again
        assert q.depth() == 0 and q.longest_running() == 0.0
    finally:
        release.set()
        q.stop()


def test_the_operator_exports_the_queue_as_workqueue_metrics():
    from prometheus_client import generate_latest

    from kubescribe.metrics import OperatorMetrics

    clock, m = Clock(), OperatorMetrics()
    q = EventQueue(workers=1, observer=m.workqueue, clock=clock)
    m.workqueue.watch(q)
    q.put("a", lambda *_: None, "ADDED", body("a", 1))
    q.put("a", lambda *_: None, "MODIFIED", body("a", 2))
    q.put("j", lambda *_: None, "ADDED", body("j", 1, kind="Job"))
    r = m.registry
    assert r.get_sample_value("kubescribe_workqueue_depth") == 2
    assert r.get_sample_value("kubescribe_workqueue_events_total", {"kind": "TranscriptionRequest"}) == 2
    assert r.get_sample_value("kubescribe_workqueue_events_total", {"kind": "Job"}) == 1
    assert r.get_sample_value("kubescribe_workqueue_events_total", {"kind": "Workload"}) == 0
    assert r.get_sample_value("kubescribe_workqueue_adds_total") == 2
    m.workqueue.started(0.02)
    m.workqueue.finished(7.0)
    assert r.get_sample_value("kubescribe_workqueue_queue_duration_seconds_bucket", {"le": "0.05"}) == 1
    assert r.get_sample_value("kubescribe_workqueue_work_duration_seconds_bucket", {"le": "5.0"}) == 0
    assert r.get_sample_value("kubescribe_workqueue_work_duration_seconds_bucket", {"le": "10.0"}) == 1
    assert b"kubescribe_workqueue_longest_running_seconds 0.0" in generate_latest(r)
