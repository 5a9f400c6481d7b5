"""The pooled runner's stream protocol on a real redis-server: at-least-once delivery,
reclaim from a dead runner, retries of transient failures, and poison entries."""

from __future__ import annotations

import pytest

from kubescribe.settings import RunnerSettings
from kubescribe.store import Store
from kubescribe.streams import DONE_STREAM, QUEUE_STREAM, RUNNERS_GROUP, Finished, WorkItem
from tests.support.core import SENTENCES, wer


@pytest.fixture
def pool_env(redis_server, monkeypatch):
    client = redis_server.client()
    client.flushdb()
    client.xgroup_create(QUEUE_STREAM, RUNNERS_GROUP, id="0", mkstream=True)
    settings = RunnerSettings(redis_url=redis_server.url, metrics_port=-1, consumer="runner-b",
                              claim_idle_ms=0)  # reclaim at once
    return client, settings


def enqueue(client, name, spec):
    item = WorkItem(uid=f"uid-{name}", namespace="ns", name=name, generation=1, spec=spec)
    return client.xadd(QUEUE_STREAM, item.fields())


def outcomes(client):
    return {o.name: o for o in (Finished.from_fields(f) for _, f in client.xrange(DONE_STREAM))}


def test_entries_of_a_dead_runner_are_reclaimed_and_finished(pool_env, speech_dir):
    from kubescribe.runner.pool import cmd_pool

    client, settings = pool_env
    key = Store(client).put_audio((speech_dir / "fox.wav").read_bytes())
    enqueue(client, "orphaned", {"audio": {"redisKey": key}, "device": "cpu"})
    # runner-a takes the entry and dies before acknowledging it
    taken = client.xreadgroup(RUNNERS_GROUP, "runner-a", {QUEUE_STREAM: ">"}, count=1)
    assert taken and taken[0][1]
    assert cmd_pool(settings, idle_seconds=0.5, max_tasks=1) == 0
    done = outcomes(client)["orphaned"]
    assert done.outcome.ok is True and done.attempts == 1
    assert wer(SENTENCES["fox"], done.outcome.text_preview) <= 0.25
    assert client.xpending(QUEUE_STREAM, RUNNERS_GROUP)["pending"] == 0


def test_bad_input_is_reported_and_acknowledged(pool_env):
    from kubescribe.runner.pool import cmd_pool

    client, settings = pool_env
    junk = Store(client).put_audio(b"definitely not audio" * 100)
    enqueue(client, "junk", {"audio": {"redisKey": junk}, "device": "cpu"})
    enqueue(client, "invalid", {"audio": {"redisKey": junk}, "beamSize": 500})
    assert cmd_pool(settings, idle_seconds=0.5, max_tasks=2) == 0
    got = outcomes(client)
    assert got["junk"].outcome.reason == "BadAudio"
    assert got["invalid"].outcome.reason == "InvalidSpec"
    assert client.xpending(QUEUE_STREAM, RUNNERS_GROUP)["pending"] == 0


def test_a_poison_entry_is_given_up_after_repeated_crashes(pool_env):
    from kubescribe.runner.pool import cmd_pool
    from kubescribe.streams import MAX_DELIVERIES

    client, settings = pool_env
    enqueue(client, "poison", {"audio": {"redisKey": "kubescribe:audio:" + "1" * 64}})
    client.xreadgroup(RUNNERS_GROUP, "crashed-0", {QUEUE_STREAM: ">"}, count=1)
    for i in range(1, MAX_DELIVERIES):  # each claim is one more delivery, then a crash
        client.xautoclaim(QUEUE_STREAM, RUNNERS_GROUP, f"crashed-{i}", 0, "0-0", count=1)
    assert cmd_pool(settings, idle_seconds=0.5) == 0
    done = outcomes(client)["poison"]
    assert done.outcome.reason == "RunnerCrashed" and done.attempts == MAX_DELIVERIES + 1
    assert client.xpending(QUEUE_STREAM, RUNNERS_GROUP)["pending"] == 0
