"""Transcripts that last, end to end: the real operator, API server, Job controller, Redis,
S3 server (versitygw) and faster-whisper; runner pods run by the stand-in kubelet.

The operator and the runners get the object store's settings the way the chart gives them:
KUBESCRIBE_S3_* on the operator, which passes them on to every runner Job, and the
credentials from a Secret in the request's namespace (secretKeyRef). The AWS variables are
taken out of the test's own environment before any runner starts, so a runner that reads
the bucket can only have its credentials from that Secret.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubescribe.objectstore import ObjectStore
from kubescribe.settings import ObjectStoreSettings
from kubescribe.store import Store
from harness.envtest import wait_for
from harness.speech import SENTENCES, wer

pytestmark = pytest.mark.kube
PREFIX = "ks/"


@pytest.fixture
def storage(s3_server, s3_bucket, kube_api, kube_namespace, monkeypatch):
    """(operator settings, ObjectStore for the test's own checks, env for CLI processes)."""
    from kubernetes import client

    client.CoreV1Api(kube_api).create_namespaced_secret(kube_namespace, {
        "metadata": {"name": "s3-creds"},
        "stringData": {"access-key-id": s3_server.access_key, "secret-access-key": s3_server.secret_key}})
    aws = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL_S3"}
    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = {"s3_bucket": s3_bucket, "s3_endpoint": s3_server.endpoint, "s3_path_style": "true",
                "s3_prefix": PREFIX, "s3_secret_name": "s3-creds"}
    objects = ObjectStore.from_settings(ObjectStoreSettings(**settings))
    cli_env = dict(os.environ, **{f"KUBESCRIBE_{k.upper()}": v for k, v in settings.items()})
    return settings, objects, cli_env, list(aws)


def start_operator(operator_factory, storage, monkeypatch, **more):
    """The operator with the AWS variables in its environment (as the chart's secretKeyRef
    puts them there); they leave the test's environment right after, before any runner."""
    settings, _, _, aws_names = storage
    op = operator_factory(**settings, **more)
    for name in aws_names:
        monkeypatch.delenv(name)
    return op


def test_a_transcript_outlives_redis_and_goes_with_its_last_request(
        operator_factory, requests_api, kube_cluster, kube_namespace, redis_server, speech_dir, storage, monkeypatch):
    _, objects, cli_env, _ = storage
    redis = redis_server.client()
    redis.flushdb()
    start_operator(operator_factory, storage, monkeypatch)
    audio = Store(redis).put_audio((speech_dir / "fox.wav").read_bytes())

    requests_api.create("first", {"audio": {"redisKey": audio}, "formats": ["srt"]})
    first = requests_api.wait_phase("first", "Succeeded", "Failed", timeout=240)
    assert first["phase"] == "Succeeded", first
    key = first["cacheKey"]
    d = objects.result_dir(key)
    assert sorted(objects.keys(d)) == [d + "result.json.gz", d + "transcript.srt"]
    uid_first = requests_api.get("first")["metadata"]["uid"]
    assert objects.holders(key) == [uid_first]

    requests_api.create("second", {"audio": {"redisKey": audio}})
    second = requests_api.wait_phase("second", "Succeeded", "Failed", timeout=60)
    assert second["cached"] is True and second["cacheKey"] == key
    uid_second = requests_api.get("second")["metadata"]["uid"]
    assert sorted(objects.holders(key)) == sorted([uid_first, uid_second])

    redis.flushall()
    cmd = [sys.executable, "-m", "kubescribe.cli", "result", "first", "--format", "txt", "--redis", redis_server.url,
           "-n", kube_namespace, "--kubeconfig", str(kube_cluster.kubeconfig_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert wer(SENTENCES["fox"], proc.stdout) <= 0.25
    assert redis.exists(first["resultKey"]) == 1, "the read from the bucket warmed the cache"

    requests_api.delete("first")
    wait_for(lambda: objects.holders(key) == [uid_second], timeout=60, description="first's reference released")
    assert objects.get_result(key) is not None, "second still uses the transcript"
    requests_api.delete("second")
    wait_for(lambda: objects.keys(d) == [], timeout=60, description="the transcript deleted with its last request")
    assert objects.holders(key) == [] and redis.exists(first["resultKey"]) == 0


def test_with_the_object_store_down_a_request_stays_running_and_succeeds_once_stored(
        operator_factory, requests_api, redis_server, speech_dir, storage, s3_server, fake_kubelet, monkeypatch):
    _, objects, _, _ = storage
    redis = redis_server.client()
    redis.flushdb()
    start_operator(operator_factory, storage, monkeypatch)
    audio = Store(redis).put_audio((speech_dir / "weather.wav").read_bytes())
    s3_server.stop()
    try:
        requests_api.create("patient", {"audio": {"redisKey": audio}, "retries": 3})
        wait_for(lambda: any(r.exit_code == 75 for r in fake_kubelet.runs(requests_api.namespace)), timeout=120,
                 description="a runner that failed on the object store (exit 75)")
        status = requests_api.status("patient")
        assert status["phase"] == "Running", status
        assert redis.exists(f"kubescribe:result:{status['cacheKey']}") == 0, "nothing looks stored"
    finally:
        s3_server.start()
    done = requests_api.wait_phase("patient", "Succeeded", "Failed", timeout=240)
    assert done["phase"] == "Succeeded", done
    assert done["attempts"] >= 2
    assert objects.get_result(done["cacheKey"]) is not None
