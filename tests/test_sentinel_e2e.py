"""Redis without a single point of failure, end to end: the real operator and runners
(stand-in kubelet) on a Sentinel-managed Redis (a primary, a replica, three sentinels),
and the primary killed in the middle of a burst of requests."""

from __future__ import annotations

import pytest

from kubescribe.store import Store, connect
from harness.speech import SENTENCES, wer

pytestmark = pytest.mark.kube


def test_a_sentinel_failover_during_a_burst_ends_every_request_once_with_nothing_lost(
        operator_factory, requests_api, speech_dir, sentinel_cluster, monkeypatch):
    cluster = sentinel_cluster
    # As the chart gives it: the URL names the sentinels, the password comes from a Secret
    # (here the environment the operator and the runners inherit).
    monkeypatch.setenv("KUBESCRIBE_REDIS_PASSWORD", cluster.password)
    monkeypatch.setenv("KUBESCRIBE_REDIS_SENTINEL_PASSWORD", cluster.sentinel_password)
    store = Store(connect(cluster.url, cluster.password, sentinel_password=cluster.sentinel_password))
    names = {f"burst-{i}": audio for i, audio in enumerate(["fox", "weather", "library"] * 2)}
    keys = {audio: store.put_audio((speech_dir / f"{audio}.wav").read_bytes()) for audio in set(names.values())}
    operator_factory(redis_url=cluster.url, gpu_budget="2")
    for name, audio in names.items():
        requests_api.create(name, {"audio": {"redisKey": keys[audio]}, "cache": {"enabled": False}})

    requests_api.wait_phase("burst-0", "Running", "Succeeded", timeout=120)
    old = cluster.kill_primary()
    new = cluster.wait_for_new_primary(old)
    assert new != old

    for name, audio in names.items():
        status = requests_api.wait_phase(name, "Succeeded", "Failed", timeout=300)
        assert status["phase"] == "Succeeded", (name, status)
        assert wer(SENTENCES[audio], store.read_result_key(status["resultKey"])["text"]) <= 0.25
    owners = sorted(j.metadata.owner_references[0].name for j in requests_api.jobs())
    assert owners == sorted(names), "one Job per request, none twice"
