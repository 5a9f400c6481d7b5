"""Requests, Jobs and fake API calls for the operator's server-free tests: the pure
decisions (tests/test_lifecycle.py) and each handler built alone around one applier."""

from __future__ import annotations

from datetime import datetime, timezone

from kubescribe.metrics import OperatorMetrics
from kubescribe.models import parse_spec
from kubescribe.operator.applier import Applier
from kubescribe.outcomes import RunnerOutcome
from kubescribe.settings import OperatorSettings
from kubescribe.store import MemoryStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
CREATED = "2026-01-01T11:59:50Z"
KEY = "c" * 64
RESULT = {"text": "hello world", "language": "en", "audio_duration_seconds": 2.0, "processing_seconds": 0.5,
          "realtime_factor": 0.25, "audio_sha256": "a" * 64}
DONE = RunnerOutcome.from_result(RESULT, KEY, f"kubescribe:result:{KEY}", cached=False, size_bytes=64000)


def request(phase=None, *, generation=1, observed=None, job=None, reason_=None, spec=None, **status):
    st = dict(status)
    if phase:
        st["phase"] = phase
        st.setdefault("observedGeneration", generation if observed is None else observed)
    if job:
        st["jobName"] = job
    if reason_:
        st["reason"] = reason_
    return {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
            "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r", "generation": generation,
                         "creationTimestamp": CREATED, "resourceVersion": "7"},
            "spec": spec or {"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}, "model": "tiny.en",
                             "retries": 2, "timeoutSeconds": 600},
            "status": st}


def spec_of(body):
    return parse_spec(body["spec"])


def job(name="job-r", *, active=0, ready=0, failed=0, succeeded=0, conditions=()):
    return {"metadata": {"name": name, "namespace": "ns",
                         "ownerReferences": [{"kind": "TranscriptionRequest", "name": "r", "uid": "uid-r"}]},
            "status": {"active": active, "ready": ready, "failed": failed, "succeeded": succeeded,
                       "conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                      for t, r, m in conditions]}}


def running_body(**status):
    return request("Running", job="job-r", **{"cacheKey": KEY, "attempts": 0, **status})


def queued_request(name, created):
    body = request("Queued", cacheKey=None)
    body["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=created)
    return body


def finished_body(name, *, ttl=None, completed="2026-01-01T00:00:00Z"):
    body = request("Succeeded", completedAt=completed)
    body["metadata"] = {**body["metadata"], "name": name, "uid": f"uid-{name}"}
    if ttl is not None:
        body["spec"]["ttlSecondsAfterFinished"] = ttl
    return body


def running_named(name):
    body = running_body()
    body["metadata"] = {**body["metadata"], "name": name, "uid": f"uid-{name}"}
    body["status"] = {**body["status"], "jobName": f"job-{name}"}
    return body


def job_of(name, **counts):
    j = job(f"job-{name}", **counts)
    j["metadata"]["ownerReferences"] = [{"kind": "TranscriptionRequest", "name": name, "uid": f"uid-{name}"}]
    return j


class FakeKube:
    """Status patches, Events and Job deletions, recorded; ``exists=False``: every
    request is gone (404)."""

    def __init__(self, exists=True):
        self.exists = exists
        self.patches, self.events, self.deleted = [], [], []

    def patch_status(self, ns, name, doc):
        self.patches.append(doc)
        return {"status": doc} if self.exists else None

    def event(self, body, type_, reason_, message):
        self.events.append(reason_)

    def delete_job(self, ns, name):
        self.deleted.append(name)


class FakeCluster(FakeKube):
    """Requests by name, Jobs by name (read), and the Jobs created."""

    def __init__(self, bodies, existing=None):
        super().__init__()
        self.bodies = {b["metadata"]["name"]: b for b in bodies}
        self.existing = dict(existing or {})
        self.jobs, self.reads, self.pods = [], [], []

    def get_request(self, ns, name):
        return self.bodies.get(name)

    def create_job(self, ns, job, uid):
        self.jobs.append(job["metadata"]["name"])
        return True

    def read_job(self, ns, name):
        self.reads.append(name)
        return self.existing.get(name)

    def job_pods(self, ns, name):
        return self.pods


class ResyncKube(FakeCluster):
    """Running requests, the runner Jobs one LIST shows, and the Jobs a read finds."""

    def __init__(self, bodies, listed, existing, list_fails=False):
        super().__init__(bodies, existing)
        self.listed, self.list_fails = listed, list_fails
        self.deleted_requests = []

    def request_pages(self, ns, limit):
        yield {"metadata": {"resourceVersion": "9"}, "items": list(self.bodies.values())}

    def job_pages(self, ns, limit):
        if self.list_fails:
            raise OSError("connection reset")
        yield self.listed

    def delete_request(self, ns, name, uid, resource_version):
        self.deleted_requests.append(name)
        return self.bodies.pop(name, None) is not None


def settings(**given) -> OperatorSettings:
    return OperatorSettings(redis_url="memory://", **given)


def applier(kube, store=None, **given) -> Applier:
    """An applier on ``kube``, an in-process store and fresh metrics; as in main, the
    store counts its own cache operations into the operator's metrics."""
    metrics = OperatorMetrics()
    return Applier(settings(**given), kube, store if store is not None else MemoryStore(metrics=metrics), metrics)
