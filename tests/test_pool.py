"""The pooled runner's stream protocol on a real redis-server: at-least-once delivery,
reclaim from a dead runner, retries of transient failures, and poison entries."""

from __future__ import annotations

import gc

import pytest

from kubescribe.settings import RunnerSettings
from kubescribe.store import Store
from kubescribe.streams import DONE_STREAM, QUEUE_STREAM, RUNNERS_GROUP, Finished, WorkItem
from harness.envtest import wait_for
from harness.speech import SENTENCES, wer


@pytest.fixture
def pool_env(redis_server, monkeypatch):
    client = redis_server.client()
    client.flushdb()
    client.xgroup_create(QUEUE_STREAM, RUNNERS_GROUP, id="0", mkstream=True)
    settings = RunnerSettings(redis_url=redis_server.url, metrics_port=-1, consumer="runner-b",
                              claim_idle_ms=0)  # reclaim at once
    return client, settings


def enqueue(client, name, spec, namespace="ns"):
    item = WorkItem(uid=f"uid-{name}", namespace=namespace, name=name, generation=1, spec=spec)
    return client.xadd(QUEUE_STREAM, item.fields())


def outcomes(client):
    return {o.name: o for o in (Finished.from_fields(f) for _, f in client.xrange(DONE_STREAM))}


def test_a_runner_joins_the_group_before_its_first_take_and_twice_is_once(redis_server):
    from kubescribe.streams import WorkQueue

    client = redis_server.client()
    client.flushdb()  # no stream and no group yet: join makes both
    queue = WorkQueue(client)
    queue.join("runner-x")
    queue.join("runner-x")
    queue.join("runner-y")
    assert sorted(c["name"] for c in client.xinfo_consumers(QUEUE_STREAM, RUNNERS_GROUP)) == [b"runner-x", b"runner-y"]
    assert queue.take("runner-x", block_ms=None) is None


def test_entries_of_a_dead_runner_are_reclaimed_and_finished(pool_env, speech_dir):
    from kubescribe.runner.pool import cmd_pool

    client, settings = pool_env
    key = Store(client).put_audio((speech_dir / "fox.wav").read_bytes())
    enqueue(client, "orphaned", {"audio": {"redisKey": key}, "device": "cpu"})
    # runner-a takes the entry and dies before acknowledging it
    taken = client.xreadgroup(RUNNERS_GROUP, "runner-a", {QUEUE_STREAM: ">"}, count=1)
    assert taken and taken[0][1]
    assert cmd_pool(settings, idle_seconds=0.5, max_tasks=1) == 0
    assert gc.get_freeze_count() == 0  # what the runner froze once loaded is let go when it ends
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


def test_queued_short_requests_are_decoded_in_one_batch_each_with_its_own_outcome(pool_env, speech_dir, engine):
    """Cross-request batching: three compatible short requests share one batched call; a
    repeat of one of them, an incompatible request (sequential), bad audio and a
    compatible request of another namespace (tenants never share a window) taken in the
    same sweep are each finished on their own."""
    from kubescribe.runner import pool
    from kubescribe.streams import WorkQueue

    client, settings = pool_env
    store = Store(client)
    keys = {n: store.put_audio((speech_dir / f"{n}.wav").read_bytes()) for n in SENTENCES}
    for n, key in keys.items():
        enqueue(client, n, {"audio": {"redisKey": key}, "device": "cpu"})
    enqueue(client, "alone", {"audio": {"redisKey": keys["fox"]}, "device": "cpu", "decoding": "sequential"})
    enqueue(client, "junk", {"audio": {"redisKey": store.put_audio(b"not audio" * 200)}, "device": "cpu"})
    enqueue(client, "fox-again", {"audio": {"redisKey": keys["fox"]}, "device": "cpu"})
    other = next(iter(SENTENCES))
    # batch-compatible with the three (vad is not in the batch key), but another tenant's
    enqueue(client, "elsewhere", {"audio": {"redisKey": keys[other]}, "device": "cpu", "vad": False}, namespace="other")
    queue = WorkQueue(client, claim_idle_ms=60000)  # nothing to reclaim: seven new entries
    deliveries = [queue.take("runner-b", block_ms=None) for _ in range(7)]
    assert None not in deliveries
    calls = []
    real = engine.transcribe_many

    def spy(items):
        calls.append(len(items))
        return real(items)

    engine.transcribe_many = spy
    try:
        pool.process_batch(queue, store, engine, None, "runner-b", deliveries)
    finally:
        del engine.transcribe_many
    assert calls == [3]
    got = outcomes(client)
    shared = {(got[n].outcome.timings.model_load, got[n].outcome.timings.transcription) for n in SENTENCES}
    assert len(shared) == 1 and next(iter(shared))[1] > 0, shared  # the one batch's seconds, each
    for n, text in SENTENCES.items():
        o = got[n].outcome
        assert o.ok and not o.cached and o.decoding == "batched", o
        assert o.timings.fetch is not None and o.timings.fetch >= 0, o.timings
        result = store.read_result_key(o.result_key)
        assert wer(text, result["text"]) <= 0.25, (n, result["text"])
        assert result["decoding"]["shared_with"] == 2
        # segment times are on the request's own timeline
        assert 0 <= result["segments"][0]["start"] < result["segments"][-1]["end"] <= o.audio_duration_seconds + 0.1
    assert got["alone"].outcome.ok and got["alone"].outcome.decoding == "sequential"
    elsewhere = store.read_result_key(got["elsewhere"].outcome.result_key)
    assert got["elsewhere"].outcome.ok and "shared_with" not in elsewhere["decoding"]
    assert got["junk"].outcome.reason == "BadAudio"
    # the same audio and settings twice in one sweep: transcribed once, then a cache answer
    assert got["fox-again"].outcome.cached and got["fox-again"].outcome.result_key == got["fox"].outcome.result_key
    assert client.xpending(QUEUE_STREAM, RUNNERS_GROUP)["pending"] == 0


def test_a_pooled_runner_loads_its_model_before_it_takes_work_and_survives_one_that_cannot_load(caplog):
    from kubescribe.runner.engine import Engine, EngineOptions
    from kubescribe.runner.pool import preload

    engine = Engine(EngineOptions(local_files_only=True))
    preload(engine, "")
    assert engine.loads == 0
    preload(engine, "no-such-model")
    assert engine.loads == 0 and "could not preload model no-such-model" in caplog.text
    preload(engine, "tiny.en")
    assert engine.loads == 1
    # A request on the defaults finds it loaded: the key is the one a request computes.
    from kubescribe.models import parse_spec

    spec = parse_spec({"audio": {"redisKey": "kubescribe:audio:" + "a" * 64}})
    engine.model(spec.model, spec.device, spec.compute_type)
    assert engine.loads == 1
    engine.unload()


def test_a_runner_holding_a_request_waits_for_the_next_one_of_a_burst(pool_env):
    """The gather wait (KUBESCRIBE_POOL_BATCH_WAIT_MS): a request queued while the runner
    waits joins the first one's batch; with no wait, only what is queued already does."""
    import threading

    from kubescribe.runner.pool import gather
    from kubescribe.streams import WorkQueue

    client, _ = pool_env
    queue = WorkQueue(client, claim_idle_ms=60000)
    spec = {"audio": {"redisKey": "kubescribe:audio:" + "0" * 64}}

    def blocked_reads() -> int:
        return sum(1 for c in client.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))

    def queue_when_blocked(name):
        wait_for(blocked_reads, timeout=30, interval=0.005, description="the runner waiting in XREADGROUP")
        enqueue(client, name, spec)

    enqueue(client, "first", spec)
    feeder = threading.Thread(target=queue_when_blocked, args=("second",))
    feeder.start()
    # a minute's wait: the second is queued once the runner waits, so the batch is full at once
    batch = gather(queue, "runner-b", queue.take("runner-b", block_ms=None), 2, 60000)
    feeder.join()
    assert [d.item.name for d in batch] == ["first", "second"]
    enqueue(client, "third", spec)
    assert [d.item.name for d in gather(queue, "runner-b", queue.take("runner-b", block_ms=None), 4, 50)] == ["third"]
    enqueue(client, "fourth", spec)
    enqueue(client, "fifth", spec)
    assert [d.item.name for d in gather(queue, "runner-b", queue.take("runner-b", block_ms=None), 4, 0)] == [
        "fourth", "fifth"]  # what is queued already, without a wait
