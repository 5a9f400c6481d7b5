"""Soak: a few hundred requests through the real stack with faults injected.

Bounded in count (200 good + 10 bad requests) and time (a 10-minute deadline), loopback
only. Faults during the run: the operator is SIGKILLed and restarted, Redis is
restarted (with its append-only file, as a production Redis would be), a runner process
is SIGKILLed, and a Job is deleted by hand. At the end every request must be in a
terminal phase with the expected outcome, and no request may have had two Jobs.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from kubescribe.store import Store
from harness.envtest import wait_for
from harness.redis_servers import RedisServer
from harness.speech import speak

pytestmark = [pytest.mark.kube, pytest.mark.slow]

GOOD, BAD, CLIPS = 200, 10, 6
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "We will meet at the library on Monday afternoon.",
    "The weather today is sunny with a light breeze from the west.",
    "Please bring the red folder to the meeting room.",
    "The train to the city leaves every twenty minutes.",
    "Our team finished the project ahead of schedule.",
]


def test_soak_with_faults(operator_factory, requests_api, kube_api, fake_kubelet, tmp_path):
    from kubernetes import client

    server = RedisServer(tmp_path / "redis", persist=True)
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        store = Store(server.client())
        keys = [store.put_audio(speak(t, tmp_path / f"clip{i}.wav").read_bytes()) for i, t in enumerate(TEXTS)]
        op = operator_factory(redis_url=server.url, gpu_budget="2")
        names = {f"good-{i:03d}": keys[i % CLIPS] for i in range(GOOD)}
        names.update({f"bad-{i:02d}": "kubescribe:audio:" + f"{i:02d}" * 32 for i in range(BAD)})

        def create(item):
            name, key = item
            requests_api.create(name, {"audio": {"redisKey": key}, "retries": 2, "priority": hash(name) % 5})

        items = list(names.items())
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, items[:80]))
            # Fault 1: the operator dies while the first requests are being admitted.
            op.kill()
            list(pool.map(create, items[80:150]))
            op.start()
            # Fault 2: a runner is SIGKILLed mid-task (its Job retries).
            run = wait_for(lambda: next((r for r in fake_kubelet.runs(requests_api.namespace)
                                         if r.pid and r.exit_code is None), None),
                           timeout=120, description="a running runner")
            os.kill(run.pid, signal.SIGKILL)
            # Fault 3: Redis restarts (append-only file keeps audio and results).
            server.stop()
            list(pool.map(create, items[150:]))
            server.start()
        # Fault 4: a running Job is deleted by hand.
        batch = client.BatchV1Api(kube_api)
        running = wait_for(lambda: next((j for j in batch.list_namespaced_job(requests_api.namespace).items
                                         if (j.status.active or 0) > 0), None),
                           timeout=120, description="an active Job")
        batch.delete_namespaced_job(running.metadata.name, requests_api.namespace, propagation_policy="Background")

        custom = requests_api.custom

        def all_terminal():
            items = custom.list_namespaced_custom_object("kubescribe.io", "v1alpha1", requests_api.namespace,
                                                         "transcriptionrequests")["items"]
            phases = {i["metadata"]["name"]: (i.get("status") or {}) for i in items}
            done = sum(1 for s in phases.values() if s.get("phase") in ("Succeeded", "Failed"))
            return phases if done == len(names) else None

        statuses = wait_for(all_terminal, timeout=600, interval=1, description="every request terminal")
        assert set(statuses) == set(names)
        wrong = {n: (s.get("phase"), s.get("reason"), s.get("message")) for n, s in statuses.items()
                 if (n.startswith("good") and s.get("phase") != "Succeeded")
                 or (n.startswith("bad") and (s.get("phase"), s.get("reason")) != ("Failed", "AudioNotFound"))}
        assert not wrong, wrong
        # One Job name per request, ever; cache hits and in-flight dedupe kept real work small.
        jobs = batch.list_namespaced_job(requests_api.namespace).items
        owners = [j.metadata.owner_references[0].name for j in jobs]
        assert len(owners) == len(set(owners))
        transcribed = sum(1 for n, s in statuses.items() if n.startswith("good") and not s.get("cached"))
        assert transcribed <= CLIPS + 4, transcribed  # a retried or re-queued one may find the cache
        results = {s["resultKey"] for n, s in statuses.items() if n.startswith("good")}
        assert len(results) == CLIPS
        assert sum(1 for _ in server.client().scan_iter(match="kubescribe:result:*")) == CLIPS
        assert op.proc.poll() is None
        text = op.metrics_text()
        assert "kubescribe_requests{phase=\"Succeeded\"} 200.0" in text
    finally:
        server.stop()
