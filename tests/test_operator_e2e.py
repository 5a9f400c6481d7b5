"""The operator end to end: real kube-apiserver, Job controller, Redis and faster-whisper.

Runner pods are run by the fake kubelet as local `kubescribe-runner run` processes; the
Job controller, garbage collector, API validation and everything else are the real ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kubescribe.store import Store
from harness.envtest import wait_for
from harness.envtest import free_port
from harness.speech import SENTENCES, wer

pytestmark = pytest.mark.kube
ROOT = Path(__file__).resolve().parents[1]


def upload(redis_server, speech_dir, name) -> str:
    return Store(redis_server.client()).put_audio((speech_dir / f"{name}.wav").read_bytes())


def apply_example(kube_cluster, namespace, example, **replace):
    text = (ROOT / "examples" / example).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    return kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def test_apply_example_runs_a_job_then_the_same_audio_is_cached(
        operator_factory, requests_api, kube_cluster, kube_namespace, redis_server, speech_dir):
    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="2", normal_events="true")
    key = upload(redis_server, speech_dir, "fox")
    proc = apply_example(kube_cluster, kube_namespace, "basic.yaml",
                         **{"kubescribe:audio:" + "0" * 64: key})
    assert proc.returncode == 0, proc.stderr

    status = requests_api.wait_phase("hello-kubescribe", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["cached"] is False and status["language"] == "en"
    assert status["audioDurationSeconds"] > 1 and status["realtimeFactor"] > 0
    assert status["observedGeneration"] == 1 and status["attempts"] == 1
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "Succeeded"
    transcript = Store(redis_server.client()).read_result_key(status["resultKey"])
    assert wer(SENTENCES["fox"], transcript["text"]) <= 0.25

    jobs = requests_api.jobs()
    assert len(jobs) == 1
    job = jobs[0]
    assert job.metadata.name == status["jobName"]
    assert job.metadata.owner_references[0].kind == "TranscriptionRequest"
    assert job.spec.backoff_limit == 2 and job.spec.active_deadline_seconds == 3600
    assert job.spec.pod_failure_policy.rules[0].on_exit_codes.values == [65]
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.security_context.read_only_root_filesystem is True
    # Admitted at once: its Queued status went with its Running one, so no Queued Event.
    reasons = requests_api.wait_reasons("hello-kubescribe", "JobCreated", "Succeeded")
    assert "Queued" not in reasons, reasons

    table = kube_cluster.kubectl("get", "tr", "-n", kube_namespace, check=True).stdout
    assert re.search(r"hello-kubescribe\s+Succeeded\s+tiny.en\s+en\s+[\d.]+\s+false", table), table

    # The same audio and settings again: answered from the cache, no Job.
    requests_api.create("again", {"audio": {"redisKey": key}, "model": "tiny.en", "language": "en",
                                  "formats": ["vtt"], "priority": 3})
    again = requests_api.wait_phase("again", "Succeeded", "Failed", timeout=30)
    assert again["phase"] == "Succeeded" and again["cached"] is True
    assert again["resultKey"] == status["resultKey"]
    assert len(requests_api.jobs()) == 1
    requests_api.wait_reasons("again", "CacheHit")

    wanted = ['kubescribe_admission_cache_hits_total 1.0', 'kubescribe_requests{phase="Succeeded"} 2.0',
              'kubescribe_jobs_total{outcome="created"} 1.0', 'kubescribe_jobs_total{outcome="succeeded"} 1.0',
              'kubescribe_transcriptions_total{model="tiny.en",status="succeeded"} 2.0',
              'kubescribe_queue_size 0.0', 'kubescribe_gpu_budget 2.0']
    text = wait_for(lambda: (lambda t: t if all(w in t for w in wanted) else None)(op.metrics_text()),
                    timeout=30, description="operator metrics")
    assert "kubescribe_queue_wait_seconds_count 2.0" in text


def test_invalid_requests_are_refused_or_fail_with_a_reason(
        operator_factory, requests_api, kube_cluster, kube_namespace, redis_server, speech_dir):
    operator_factory()
    bad = yaml.safe_dump({"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
                          "metadata": {"name": "bad"},
                          "spec": {"audio": {"redisKey": "k", "url": "https://x/y.wav"}, "beamSize": 99,
                                   "device": "cpu", "gpus": 2}})
    proc = kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=bad)
    assert proc.returncode != 0
    assert "set exactly one of audio.redisKey, audio.url and audio.s3" in proc.stderr
    assert "spec.beamSize" in proc.stderr and "device cpu cannot request GPUs" in proc.stderr
    unknown = bad.replace("beamSize: 99", "beamSize: 2\n  colour: blue").replace("gpus: 2", "gpus: 0")
    unknown = unknown.replace("url: https://x/y.wav", "")
    proc = kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=unknown)
    assert proc.returncode != 0 and 'unknown field "spec.colour"' in proc.stderr

    # Valid for the API server, but the audio was never uploaded.
    requests_api.create("missing-audio", {"audio": {"redisKey": "kubescribe:audio:" + "9" * 64}, "device": "cpu"})
    # Not audio at all: the runner refuses it and the Job fails at once, no retries.
    junk = Store(redis_server.client()).put_audio(b"<html>this is a web page, not audio</html>" * 40)
    requests_api.create("junk", {"audio": {"redisKey": junk}, "device": "cpu", "retries": 3})
    missing = requests_api.wait_phase("missing-audio", "Succeeded", "Failed")
    assert missing["phase"] == "Failed" and missing["reason"] == "AudioNotFound"
    assert "upload it again" in missing["message"]
    junk_status = requests_api.wait_phase("junk", "Succeeded", "Failed")
    assert junk_status["phase"] == "Failed" and junk_status["reason"] == "BadAudio"
    assert "not a readable audio file" in junk_status["message"]
    assert junk_status["attempts"] == 1
    assert {c["type"]: c for c in junk_status["conditions"]}["Ready"]["status"] == "False"
    # The Event is posted right after the status patch; wait for it rather than race it.
    warnings = wait_for(lambda: [e for e in requests_api.events("junk") if e.type == "Warning"], timeout=30,
                        description="a Warning Event on junk")
    assert "not a readable audio file" in warnings[-1].message


def test_budget_of_one_queues_the_second_request(
        operator_factory, requests_api, redis_server, speech_dir):
    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="1")
    k1, k2 = upload(redis_server, speech_dir, "weather"), upload(redis_server, speech_dir, "library")
    requests_api.create("first", {"audio": {"redisKey": k1}, "priority": 5})
    requests_api.create("second", {"audio": {"redisKey": k2}})

    # Which one runs first depends on which the operator saw first (priority orders
    # requests that wait together); the other must wait in Queued. (Its queuePosition is
    # written only once it has waited an admission period, which a short first request
    # may not last: tests/test_lifecycle.py covers positions.)
    def one_running_one_queued():
        st = {n: requests_api.status(n) for n in ("first", "second")}
        running = [n for n, s in st.items() if s.get("phase") == "Running"]
        queued = [n for n, s in st.items() if s.get("phase") == "Queued" and s.get("queuePosition") in (None, 1)]
        return (running[0], queued[0]) if running and queued else None

    running, waiting = wait_for(one_running_one_queued, timeout=180, description="one Running, one Queued")
    assert requests_api.status(waiting)["reason"] == "Queued"
    assert len(requests_api.jobs()) == 1
    assert requests_api.wait_phase("first", "Succeeded", "Failed")["phase"] == "Succeeded"
    second = requests_api.wait_phase("second", "Succeeded", "Failed")
    assert second["phase"] == "Succeeded"
    jobs = sorted(requests_api.jobs(), key=lambda j: j.metadata.creation_timestamp)
    assert len(jobs) == 2
    # The second Job was created only after the first finished.
    first_done = jobs[0].status.completion_time
    assert first_done is not None and jobs[1].metadata.creation_timestamp >= first_done.replace(microsecond=0)
    text = op.metrics_text()
    assert 'kubescribe_transcriptions_total{model="tiny.en",status="succeeded"} 2.0' in text
    assert "kubescribe_queue_wait_seconds_count 2.0" in text


def test_transient_runner_failure_is_retried_then_reported(
        operator_factory, requests_api, redis_server, speech_dir):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    operator_factory(runner_env={"KUBESCRIBE_REDIS_URL": dead})
    key = upload(redis_server, speech_dir, "fox")
    requests_api.create("flaky", {"audio": {"redisKey": key}, "retries": 1, "cache": {"enabled": False}})
    status = requests_api.wait_phase("flaky", "Succeeded", "Failed")
    assert status["phase"] == "Failed"
    assert status["reason"] == "RedisUnavailable"
    assert "retries exhausted" in status["message"]
    assert status["attempts"] == 2
    requests_api.wait_reasons("flaky", "Retrying", "RedisUnavailable")


def test_operator_killed_mid_flight_loses_nothing_and_duplicates_nothing(
        operator_factory, requests_api, redis_server, speech_dir):
    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="1")
    names = ["a", "b", "c"]
    for n, audio in zip(names, ["fox", "weather", "library"]):
        requests_api.create(n, {"audio": {"redisKey": upload(redis_server, speech_dir, audio)}})
    requests_api.wait("a", lambda s: s.get("phase") == "Running", description="a Running")
    op.kill()
    op.start()
    for n in names:
        assert requests_api.wait_phase(n, "Succeeded", "Failed", timeout=240)["phase"] == "Succeeded"
    jobs = requests_api.jobs()
    owners = [j.metadata.owner_references[0].name for j in jobs]
    assert sorted(owners) == names, owners


def test_cli_submit_waits_and_prints_the_transcript(
        operator_factory, requests_api, kube_cluster, kube_namespace, redis_server, speech_dir):
    import subprocess
    import sys
    import time

    redis_server.client().flushdb()
    operator_factory()
    base = [sys.executable, "-m", "kubescribe.cli"]
    common = ["--redis", redis_server.url, "-n", kube_namespace, "--kubeconfig", str(kube_cluster.kubeconfig_path)]
    t0 = time.monotonic()
    proc = subprocess.run([*base, "submit", str(speech_dir / "weather.wav"), "--wait", "--format", "srt",
                           "--name", "weather", "--device", "cpu", *common],
                          capture_output=True, text=True, timeout=300)
    print(f"\nsubmit --wait with the stand-in kubelet: {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1\n00:00:00,000 --> ")
    cue_text = [ln for ln in proc.stdout.splitlines() if ln and not ln.isdigit() and " --> " not in ln]
    assert wer(SENTENCES["weather"], " ".join(cue_text)) <= 0.25  # a cue may hold two lines
    assert requests_api.status("weather")["phase"] == "Succeeded"
    vtt = subprocess.run([*base, "result", "weather", "--format", "vtt", *common[:2], *common[2:]],
                         capture_output=True, text=True, timeout=60)
    assert vtt.returncode == 0 and vtt.stdout.startswith("WEBVTT"), vtt.stderr
    missing = subprocess.run([*base, "result", "nope", *common], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no TranscriptionRequest nope" in missing.stderr


def test_deleting_a_running_request_deletes_its_job(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet):
    operator_factory()
    key = upload(redis_server, speech_dir, "library")
    # Hold the runner so the request is surely Running when it is deleted.
    with fake_kubelet.override_command(lambda pod: ["python3", "-c", "import time; time.sleep(600)"]):
        requests_api.create("doomed", {"audio": {"redisKey": key}, "cache": {"enabled": False}})
        status = requests_api.wait("doomed", lambda s: s.get("phase") == "Running", description="Running")
        job = status["jobName"]
        run = wait_for(lambda: next((r for r in fake_kubelet.runs(requests_api.namespace) if r.pid), None),
                       timeout=60, description="runner process started")
        requests_api.delete("doomed")
        wait_for(lambda: requests_api.job_gone(job), timeout=60, description="Job garbage-collected")
        # The pod went with the Job, and the kubelet stopped its process.
        assert run.done.wait(60) and run.kill_reason == "deleted"


def test_pool_mode_transcribes_a_burst_with_warm_runners(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet):
    redis_server.client().flushdb()
    operator_factory(mode="pool", gpu_budget="2", requests_per_runner="2", pool_idle_seconds="3",
                     normal_events="true")
    names = []
    for i, audio in enumerate(["fox", "weather", "library", "fox"]):
        name = f"pooled-{i}"
        # the two fox requests are identical: transcribed once, the other one from the cache
        requests_api.create(name, {"audio": {"redisKey": upload(redis_server, speech_dir, audio)}})
        names.append(name)
    statuses = {n: requests_api.wait_phase(n, "Succeeded", "Failed", timeout=240) for n in names}
    assert all(s["phase"] == "Succeeded" for s in statuses.values()), statuses
    assert wer(SENTENCES["weather"], statuses["pooled-1"]["textPreview"]) <= 0.25
    assert statuses["pooled-0"]["resultKey"] == statuses["pooled-3"]["resultKey"]
    assert [s["cached"] for s in (statuses["pooled-0"], statuses["pooled-3"])].count(True) == 1
    pool_jobs = [j for j in requests_api.jobs() if (j.metadata.labels or {}).get("kubescribe.io/pool") == "true"]
    assert 1 <= len(pool_jobs) <= 2, [j.metadata.name for j in pool_jobs]
    # fewer runner processes than requests: the model stayed loaded between requests
    assert len(fake_kubelet.runs(requests_api.namespace)) <= 2
    requests_api.wait_reasons("pooled-1", "Dispatched")


def test_runner_jobs_not_yet_succeeded_are_listed_a_page_at_a_time(kube_api, kube_namespace, fake_kubelet):
    """Kube.job_pages against the real API server: the resync's one LIST of runner Jobs,
    by the operator's label, without the Jobs that succeeded."""
    from kubernetes import client

    from kubescribe.operator.jobs import LABEL_MANAGED_BY, MANAGED_BY
    from kubescribe.operator.kube import Kube

    batch = client.BatchV1Api(kube_api)

    def job(name, labels, suspend):
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
                "spec": {"suspend": suspend, "backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "kubescribe-runner:test", "command": ["true"]}]}}}}

    ours = {LABEL_MANAGED_BY: MANAGED_BY}
    batch.create_namespaced_job(kube_namespace, job("done", ours, suspend=False))
    wait_for(lambda: (batch.read_namespaced_job_status("done", kube_namespace).status.succeeded or 0) == 1,
             timeout=60, description="Job 'done' succeeded")
    for name, labels in (("r1", ours), ("r2", ours), ("r3", ours), ("someone-elses", {})):
        batch.create_namespaced_job(kube_namespace, job(name, labels, suspend=True))
    kube = Kube(kube_api)
    pages = list(kube.job_pages(kube_namespace, limit=2))
    assert [len(p) for p in pages] == [2, 1]
    assert sorted(j["metadata"]["name"] for p in pages for j in p) == ["r1", "r2", "r3"]
    assert all(j["spec"]["suspend"] is True for p in pages for j in p)  # whole Jobs, as plain dicts
    everywhere = [j["metadata"] for p in kube.job_pages("", limit=500) for j in p]
    assert {m["name"] for m in everywhere if m["namespace"] == kube_namespace} == {"r1", "r2", "r3"}


def test_a_runner_job_is_created_adopted_or_refused_by_its_owner(kube_api, kube_namespace):
    """Kube.create_job and read_job against the real API server, as plain JSON: a Job of
    the request's name that exists already is adopted when it carries the request's uid,
    refused when it carries another's, and left to a later pass while it is deleted."""
    from kubernetes import client

    from kubescribe.operator.jobs import LABEL_MANAGED_BY, LABEL_REQUEST_UID, MANAGED_BY
    from kubescribe.operator.kube import JobGoingAway, Kube

    def job(name, uid, **meta):
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_REQUEST_UID: uid}, **meta},
                "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "kubescribe-runner:test", "command": ["true"]}]}}}}

    kube = Kube(kube_api)
    assert kube.read_job(kube_namespace, "runner") is None
    assert kube.create_job(kube_namespace, job("runner", "uid-a"), "uid-a") is True
    read = kube.read_job(kube_namespace, "runner")
    assert read["metadata"]["labels"][LABEL_REQUEST_UID] == "uid-a" and read["spec"]["suspend"] is True
    assert kube.create_job(kube_namespace, job("runner", "uid-a"), "uid-a") is False  # adopted: no second Job
    with pytest.raises(RuntimeError, match="belongs to another request"):
        kube.create_job(kube_namespace, job("runner", "uid-b"), "uid-b")
    hold = "kubescribe.io/test-hold"
    kube.create_job(kube_namespace, job("leaving", "uid-c", finalizers=[hold]), "uid-c")
    batch = client.BatchV1Api(kube_api)
    batch.delete_namespaced_job("leaving", kube_namespace)
    try:
        with pytest.raises(JobGoingAway):
            kube.create_job(kube_namespace, job("leaving", "uid-c"), "uid-c")
    finally:
        batch.patch_namespaced_job("leaving", kube_namespace, {"metadata": {"finalizers": None}})
