"""Faults, bad input and security, against the real parts (issue: reliability).

Every test runs the real operator process, the real API server and Job controller, a
real redis-server and real faster-whisper; faults are real too: processes killed with
SIGKILL, Redis stopped, network connections refused, Jobs deleted.
"""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest
import yaml

from kubescribe.store import Store
from harness.envtest import wait_for
from harness.redis_servers import RedisServer, TcpForwarder
from harness.speech import SENTENCES, wer

pytestmark = pytest.mark.kube


def upload(redis_server, speech_dir, name) -> str:
    return Store(redis_server.client()).put_audio((speech_dir / f"{name}.wav").read_bytes())


def gated(gate):
    """A command override: the pod waits for ``gate`` to exist, then runs the real runner."""
    script = f'while [ ! -e "{gate}" ]; do sleep 0.05; done; exec "$0" "$@"'
    return lambda pod: ["sh", "-c", script, *pod["spec"]["containers"][0]["command"]]


def healthy(op) -> bool:
    assert op.proc.poll() is None, f"operator exited: {op.logs()[-2000:]}"
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/healthz", timeout=5) as r:
        return r.status == 200


def ready(op) -> tuple[int, str]:
    """/readyz: (HTTP status, detail)."""
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())["detail"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["detail"]


# -- Redis faults ---------------------------------------------------------------------

def test_redis_down_at_admission_gives_a_clear_status_and_recovers(
        operator_factory, requests_api, speech_dir, tmp_path):
    server = RedisServer(tmp_path).start()
    op = operator_factory(redis_url=server.url)
    audio = (speech_dir / "fox.wav").read_bytes()
    key = Store(server.client()).put_audio(audio)
    server.stop()
    requests_api.create("patient", {"audio": {"redisKey": key}})
    status = requests_api.wait("patient", lambda s: s.get("reason") == "RedisUnavailable",
                               description="RedisUnavailable")
    assert status["phase"] == "Pending" and "cannot reach Redis" in status["message"]
    assert {c["type"]: c for c in status["conditions"]}["Ready"]["status"] == "False"
    assert healthy(op)  # alive: restarting the operator would not bring Redis back
    code, detail = ready(op)  # but not ready: it cannot do its work
    assert code == 503 and "Redis" in detail, detail
    server.start()  # same port, empty (no persistence): the client uploads again
    assert wait_for(lambda: ready(op)[0] == 200, timeout=30, description="ready again")
    Store(server.client()).put_audio(audio)
    done = requests_api.wait_phase("patient", "Succeeded", "Failed", timeout=120)
    assert done["phase"] == "Succeeded", done
    requests_api.wait_reasons("patient", "RedisUnavailable")
    server.stop()


def test_runner_losing_redis_is_retried_and_the_result_is_written_once(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet):
    redis_server.client().flushdb()
    forwarder = TcpForwarder(redis_server.port)
    forwarder.enabled = False  # the runner's first attempt finds Redis unreachable
    try:
        operator_factory(runner_env={"KUBESCRIBE_REDIS_URL": forwarder.url})
        key = upload(redis_server, speech_dir, "weather")
        requests_api.create("retry-me", {"audio": {"redisKey": key}, "retries": 2})
        requests_api.wait("retry-me", lambda s: (s.get("attempts") or 0) >= 2, description="second attempt")
        forwarder.enabled = True
        status = requests_api.wait_phase("retry-me", "Succeeded", "Failed")
        assert status["phase"] == "Succeeded" and status["attempts"] >= 2, status
        assert forwarder.refused >= 1
        assert wer(SENTENCES["weather"], status["textPreview"]) <= 0.25
        results = list(redis_server.client().scan_iter(match="kubescribe:result:*"))
        assert len(results) == 1
        requests_api.wait_reasons("retry-me", "Retrying")
    finally:
        forwarder.close()


# -- operator and runner killed, Jobs deleted --------------------------------------------

def test_operator_killed_in_every_phase(operator_factory, requests_api, redis_server, speech_dir,
                                        fake_kubelet, tmp_path):
    redis_server.client().flushdb()
    gate = tmp_path / "go"
    with fake_kubelet.override_command(gated(gate)):
        op = operator_factory(gpu_budget="1")
        op.kill()
        # Pending: created while no operator runs.
        requests_api.create("p1", {"audio": {"redisKey": upload(redis_server, speech_dir, "fox")}, "priority": 9})
        requests_api.create("p2", {"audio": {"redisKey": upload(redis_server, speech_dir, "library")}})
        op.start()
        requests_api.wait("p1", lambda s: s.get("phase") == "Running", description="p1 Running")
        requests_api.wait("p2", lambda s: s.get("phase") == "Queued" and s.get("queuePosition") == 1,
                          description="p2 Queued")
        # Running and Queued: kill again.
        op.kill()
        op.start()
        assert requests_api.status("p2")["phase"] == "Queued"
        gate.touch()
        for name in ("p1", "p2"):
            assert requests_api.wait_phase(name, "Succeeded", "Failed")["phase"] == "Succeeded"
    # Succeeded: a restart changes nothing and makes no Job.
    before = {j.metadata.name for j in requests_api.jobs()}
    op.kill()
    op.start()
    requests_api.create("p3", {"audio": {"redisKey": upload(redis_server, speech_dir, "fox")}})
    assert requests_api.wait_phase("p3", "Succeeded", "Failed")["cached"] is True
    assert {j.metadata.name for j in requests_api.jobs()} == before
    assert len(before) == 2


def test_runner_killed_mid_task_is_retried_then_reported(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet):
    operator_factory()
    key = upload(redis_server, speech_dir, "library")
    hold = lambda pod: ["python3", "-c", "import time; time.sleep(600)"]  # noqa: E731

    def kill_runner():
        run = wait_for(lambda: next((r for r in fake_kubelet.runs(requests_api.namespace)
                                     if r.pid and r.exit_code is None), None),
                       timeout=60, description="a runner process")
        os.kill(run.pid, signal.SIGKILL)
        assert run.done.wait(30)
        return run

    # Killed once with a retry left: the Job's next pod runs the real runner.
    with fake_kubelet.override_command(hold):
        requests_api.create("survivor", {"audio": {"redisKey": key}, "retries": 1, "cache": {"enabled": False}})
        kill_runner()
    status = requests_api.wait_phase("survivor", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["attempts"] == 2

    # Killed with no retries left: reported with the runner's fate.
    with fake_kubelet.override_command(hold):
        requests_api.create("casualty", {"audio": {"redisKey": key}, "retries": 0, "cache": {"enabled": False}})
        kill_runner()
        status = requests_api.wait_phase("casualty", "Succeeded", "Failed")
    assert status["phase"] == "Failed" and status["reason"] == "RunnerKilled", status
    assert "retries exhausted" in status["message"] and "137" in status["message"]


def running_on_a_job(requests_api, redis_server, speech_dir, name: str) -> str:
    """Create a request that skips the cache; the name of its Job once it is Running."""
    requests_api.create(name, {"audio": {"redisKey": upload(redis_server, speech_dir, "fox")},
                               "cache": {"enabled": False}})
    return requests_api.wait(name, lambda s: s.get("phase") == "Running", description=f"{name} Running")["jobName"]


@pytest.mark.parametrize("operator_down, reason", [(False, "JobDeleted"), (True, "JobLost")])
def test_a_job_deleted_by_hand_is_recreated_under_the_same_name(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet, tmp_path, kube_api,
        operator_down, reason):
    """Deleted while the operator runs, the Job's DELETED event re-queues its request.
    Deleted while the operator is down, no event ever tells of it: the restarted operator's
    resync lists the runner Jobs, reads the one the list lacks, and re-queues the request."""
    from kubernetes import client

    gate = tmp_path / "go"
    with fake_kubelet.override_command(gated(gate)):
        op = operator_factory()
        job = running_on_a_job(requests_api, redis_server, speech_dir, "orphan")
        if operator_down:
            op.kill()
        client.BatchV1Api(kube_api).delete_namespaced_job(job, requests_api.namespace, propagation_policy="Foreground")
        if operator_down:
            wait_for(lambda: requests_api.job_gone(job), timeout=60, description="Job deleted")
            op.start()
        wait_for(lambda: reason in [e.reason for e in requests_api.events("orphan")], timeout=60,
                 description=f"{reason} event")
        requests_api.wait("orphan", lambda s: s.get("phase") == "Running", description="Running again")
        gate.touch()
        status = requests_api.wait_phase("orphan", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded"
    assert [j.metadata.name for j in requests_api.jobs()] == [job]  # same deterministic name


# -- bad input ------------------------------------------------------------------------------

def test_bad_audio_of_every_kind_fails_fast_with_a_reason(
        operator_factory, requests_api, redis_server, speech_dir):
    op = operator_factory(max_audio_bytes="200000")
    client = redis_server.client()
    store = Store(client)
    wav = (speech_dir / "fox.wav").read_bytes()
    long_wav = wav * 4  # ~400 kB, over the 200 kB limit
    cases = {
        "huge": (store.put_audio(long_wav), "AudioTooLarge", "over the 200000-byte limit"),
        "header-only": (store.put_audio(wav[:44]), "BadAudio", "no audio samples"),
        "non-audio": (store.put_audio(os.urandom(5000)), "BadAudio", "not a readable audio file"),
    }
    expired = store.put_audio(b"RIFF" + os.urandom(3000))
    client.pexpire(expired, 1)
    wait_for(lambda: not client.exists(expired), timeout=10, description="audio key expired")
    cases["expired"] = (expired, "AudioNotFound", "never uploaded, or expired")
    empty_key = "kubescribe:audio:" + "e" * 64
    client.set(empty_key, b"")
    cases["empty"] = (empty_key, "BadAudio", "empty")
    for name, (key, _, _) in cases.items():
        requests_api.create(name, {"audio": {"redisKey": key}, "device": "cpu", "retries": 3})
    for name, (_, reason, text) in cases.items():
        status = requests_api.wait_phase(name, "Succeeded", "Failed")
        assert status["phase"] == "Failed", (name, status)
        assert status["reason"] == reason and text in status["message"], (name, status)
        assert status["attempts"] == 1, (name, status)  # bad input is never retried
    assert healthy(op)
    text = op.metrics_text()
    assert 'kubescribe_errors_total{type="bad_audio"} 4.0' in text
    assert 'kubescribe_errors_total{type="audio_not_found"} 1.0' in text


def test_invalid_specs_and_unusual_names(operator_factory, requests_api, kube_cluster, kube_namespace,
                                          redis_server, speech_dir):
    op = operator_factory()
    key = upload(redis_server, speech_dir, "fox")

    def apply(name, spec):
        doc = {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
               "metadata": {"name": name}, "spec": spec}
        return kube_cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(doc))

    refused = {
        "unicode name": (apply("tränscript-ü", {"audio": {"redisKey": key}}), "a lowercase RFC 1123 subdomain"),
        "prompt too long": (apply("long-prompt", {"audio": {"redisKey": key}, "initialPrompt": "x" * 5000}),
                            "Too long: may not be more than 4096"),
        "out of range": (apply("range", {"audio": {"redisKey": key}, "beamSize": 0, "priority": 5000}),
                         "spec.beamSize: Invalid value: 0"),
        "bad enum": (apply("enum", {"audio": {"redisKey": key}, "task": "summarise"}), "Unsupported value"),
        "conflict": (apply("conflict", {"audio": {"redisKey": key}, "device": "cuda", "gpus": 0}),
                     "device cuda needs at least one GPU"),
        "english model translating": (apply("translate", {"audio": {"redisKey": key}, "task": "translate"}),
                                      "English-only models (*.en) cannot translate"),
        "unknown field": (apply("unknown", {"audio": {"redisKey": key}, "speakers": 2}), 'unknown field "spec.speakers"'),
    }
    for case, (proc, message) in refused.items():
        assert proc.returncode != 0, case
        assert message in proc.stderr, (case, proc.stderr)

    # Long names and unusual Unicode text are fine where Kubernetes allows them.
    long_name = "a" * 200 + "-" + "b" * 52
    prompt = "Zoë, Ångström, 東京, مرحبا, 🎙️ — a fox."
    requests_api.create(long_name, {"audio": {"redisKey": key}, "initialPrompt": prompt})
    status = requests_api.wait_phase(long_name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    job = requests_api.jobs()[0]
    assert len(job.metadata.name) <= 63
    assert len(job.metadata.labels["kubescribe.io/request"]) <= 63
    assert healthy(op)


# -- security -------------------------------------------------------------------------------

def test_redis_password_only_from_a_secret_and_never_logged(
        operator_factory, requests_api, kube_api, kube_namespace, speech_dir, fake_kubelet, tmp_path):
    from kubernetes import client

    password = "pw-7f3a9c-do-not-leak"
    server = RedisServer(tmp_path, password=password).start()
    try:
        client.CoreV1Api(kube_api).create_namespaced_secret(kube_namespace, {
            "metadata": {"name": "redis-auth"}, "stringData": {"redis-password": password}})
        op = operator_factory(redis_url=server.url, redis_password=password, redis_secret_name="redis-auth",
                              runner_env={"KUBESCRIBE_LOG_LEVEL": "DEBUG"}, normal_events="true")
        key = Store(server.client()).put_audio((speech_dir / "fox.wav").read_bytes())
        requests_api.create("secretive", {"audio": {"redisKey": key}})
        status = requests_api.wait_phase("secretive", "Succeeded", "Failed")
        assert status["phase"] == "Succeeded", status
        job = requests_api.jobs()[0]
        env = {e.name: e for e in job.spec.template.spec.containers[0].env}
        assert env["KUBESCRIBE_REDIS_PASSWORD"].value is None
        assert env["KUBESCRIBE_REDIS_PASSWORD"].value_from.secret_key_ref.name == "redis-auth"
        places = {
            "operator log": op.logs(),
            "runner logs": "".join(fake_kubelet.logs(r.name, kube_namespace) for r in fake_kubelet.runs(kube_namespace)),
            "request": yaml.safe_dump(requests_api.get("secretive")),
            "job": str(client.ApiClient().sanitize_for_serialization(job)),
            "events": " ".join(str(e.message) for e in requests_api.events("secretive")),
            "metrics": op.metrics_text(),
        }
        for where, text in places.items():
            assert text and password not in text, where
    finally:
        server.stop()


def test_spec_changed_while_running_replaces_the_job(
        operator_factory, requests_api, redis_server, speech_dir, fake_kubelet, tmp_path):
    gate = tmp_path / "go"
    with fake_kubelet.override_command(gated(gate)):
        op = operator_factory()
        first = running_on_a_job(requests_api, redis_server, speech_dir, "edited")
        requests_api.custom.patch_namespaced_custom_object(
            "kubescribe.io", "v1alpha1", requests_api.namespace, "transcriptionrequests", "edited",
            {"spec": {"beamSize": 1}})
        second = requests_api.wait("edited", lambda s: s.get("observedGeneration") == 2 and s.get("jobName")
                                   and s["jobName"] != first, description="a Job for generation 2")["jobName"]
        gate.touch()
        status = requests_api.wait_phase("edited", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == 2
    assert status["jobName"] == second
    names = wait_for(lambda: (lambda n: n if first not in n else None)({j.metadata.name for j in requests_api.jobs()}),
                     timeout=60, description="the generation-1 Job deleted")
    assert names == {second}
    assert healthy(op)
