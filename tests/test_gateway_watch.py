"""The gateway's one wait primitive on a real API server: the shared watch of a namespace
(``KubeClient.watch_events``, listed first) feeding a waiting call and an events stream,
with keep-alives while nothing changes and a deletion seen as one.

No operator runs in the namespace: the test writes the status as the operator would, so
each change is the test's own and the quiet stretch is certain.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from kubescribe import GROUP, PLURAL, VERSION
from kubescribe.gateway import events, openai
from kubescribe.gateway.kubeclient import KubeClient, KubeError, load_credentials
from kubescribe.gateway.waiter import Waiter

pytestmark = pytest.mark.kube

SHA = "a" * 64


def _spec() -> dict:
    spec, _ = openai.build_spec({"model": "whisper-1"}, task="transcribe", aliases={"whisper-1": "tiny.en"},
                                audio={"redisKey": f"kubescribe:audio:{SHA}", "sha256": SHA})
    return spec


async def _chunks(stream, n: int) -> list[bytes]:
    """The next ``n`` events of a stream, keep-alives left out."""
    got = []
    while len(got) < n:
        chunk = await anext(stream)
        if chunk != events.KEEP_ALIVE:
            got.append(chunk)
    return got


def test_a_waiting_call_and_an_events_stream_share_the_namespaces_watch(kube_cluster, kube_api, crd_installed,
                                                                       kube_namespace):
    from kubernetes import client

    objects = client.CustomObjectsApi(kube_api)
    ns = kube_namespace

    def set_phase(name: str, phase: str) -> None:
        objects.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name,
                                                      {"status": {"phase": phase, "observedGeneration": 1}})

    async def scenario():
        kube = KubeClient(load_credentials(str(kube_cluster.kubeconfig_path)))
        waiter = Waiter(kube)
        try:
            waiting = await waiter.subscribe(ns, "watched")  # before the request exists
            await kube.create_request(ns, {"name": "watched"}, _spec())
            streamed = await waiter.subscribe(ns, "watched")
            stream = events.stream(streamed, await kube.get_request(ns, "watched"), keepalive=0.2,
                                   deadline=time.monotonic() + 120)
            first = await anext(stream)
            quiet = await anext(stream)  # nothing writes the request: a keep-alive comes
            await asyncio.to_thread(set_phase, "watched", "Running")
            running = await _chunks(stream, 1)
            await asyncio.to_thread(set_phase, "watched", "Succeeded")
            done = await _chunks(stream, 1)
            final = await waiting.terminal(time.monotonic() + 60)
            waiting.close()
            ended = [chunk async for chunk in stream]

            doomed = await waiter.subscribe(ns, "doomed")
            await kube.create_request(ns, {"name": "doomed"}, _spec())
            await kube.delete_request(ns, "doomed")
            with pytest.raises(KubeError) as gone:
                await doomed.terminal(time.monotonic() + 60)
            doomed.close()
            return first, quiet, running, done, final, ended, gone.value, len(waiter._watches)
        finally:
            await waiter.close()
            await kube.close()

    first, quiet, running, done, final, ended, gone, watches = asyncio.run(scenario())
    assert first.startswith(b"event: status\n") and b'"phase": "Pending"' in first
    assert quiet == b": keep-alive\n\n"
    assert running[0].startswith(b"event: status\n") and b'"phase": "Running"' in running[0]
    assert done[0].startswith(b"event: done\n") and b'"phase": "Succeeded"' in done[0]
    assert final["status"]["phase"] == "Succeeded" and ended == []
    assert gone.status == 404 and "deleted" in gone.message
    assert watches == 1
