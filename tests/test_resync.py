"""The resync alone, with no server: built from an applier, a fake API and the request
and Job handlers (each of them built alone too), as ``controllers.build`` builds it."""

from __future__ import annotations

import threading

from kubescribe.operator.job_handler import JobHandler
from kubescribe.operator.registry import Entry
from kubescribe.operator.request_handler import RequestHandler
from kubescribe.operator.resync import Resync
from kubescribe.operator.retention import Retention

from tests.support.operator_parts import ResyncKube, applier, finished_body, job_of, queued_request, running_named


def build(kube, **given):
    a = applier(kube, **given)
    retention = Retention(a.store)
    synced = threading.Event()
    resync = Resync(a, kube, RequestHandler(a, kube, a.store, retention), JobHandler(a, kube, a.store, a.settings),
                    retention, a.settings, a.metrics, synced)
    return a, resync, synced


def test_the_resync_reads_only_the_jobs_a_list_did_not_show():
    """One LIST of Jobs instead of a read per Running request: a quiet Job costs nothing; a
    Job with a failed pod is looked at as listed (its pods read, not the Job again); one
    the LIST did not show (created after it), one of an earlier request of the same name
    and one that is gone are read, and only the gone one re-queues its request."""
    names = ["quiet", "failing", "newer", "lost", "other-owner"]
    listed = [job_of("quiet", active=1, ready=1), job_of("failing", active=1, ready=1, failed=1),
              {**job_of("other-owner", active=1, ready=1),
               "metadata": {**job_of("other-owner")["metadata"],
                            "ownerReferences": [{"kind": "TranscriptionRequest", "name": "other-owner",
                                                 "uid": "uid-an-earlier-request"}]}}]
    existing = {j["metadata"]["name"]: j for j in listed}
    existing["job-newer"] = job_of("newer", active=1, ready=1)
    kube = ResyncKube([running_named(n) for n in names], listed, existing)
    _, resync, synced = build(kube)
    resync.run()
    assert sorted(kube.reads) == ["job-lost", "job-newer", "job-other-owner"]
    assert [p.get("reason") for p in kube.patches if p.get("phase")] == ["JobLost"]
    assert [p for p in kube.patches if "attempts" in p and not p.get("phase")] != []  # the failed pod: a retry
    assert synced.is_set()

    # The LIST refused (an API server too busy to answer it): no Job is read this pass,
    # which would load it by one read per Running request; the watch brings Job ends.
    kube = ResyncKube([running_named(n) for n in names], listed, existing, list_fails=True)
    build(kube)[1].run()
    assert kube.reads == []


def test_under_kueue_the_resync_lists_no_jobs_and_reads_each():
    """Under Kueue on_job reads every Job (a suspended Job is not quiet), so the resync does too."""
    kube = ResyncKube([running_named("quiet")], [job_of("quiet", active=1, ready=1)],
                      {"job-quiet": job_of("quiet", active=1, ready=1)})
    _, resync, _ = build(kube, admission_engine="kueue")
    assert resync.kueue
    resync.run()
    assert kube.reads == ["job-quiet"]


def test_the_resync_rebuilds_the_registry_and_wakes_admission():
    kube = ResyncKube([queued_request("waiting", "2026-01-01T00:00:01Z")], [], {})
    a, resync, synced = build(kube)
    a.registry.upsert(Entry("ns", "gone", "uid-gone", 1, "Queued", 1, 0, "2026-01-01T00:00:00Z", 1))
    resync.run()
    assert [e.uid for e in a.registry.snapshot()] == ["uid-waiting"]
    assert synced.is_set() and a.wakeup.is_set()


def test_a_finished_request_past_its_ttl_is_deleted_and_counted():
    kube = ResyncKube([finished_body("old", ttl=0)], [], {})
    a, resync, _ = build(kube)
    resync.run()
    assert kube.deleted_requests == ["old"] and a.registry.get("uid-old") is None
    assert a.metrics.registry.get_sample_value("kubescribe_requests_expired_total") == 1
