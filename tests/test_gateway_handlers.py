"""The gateway's rooms one at a time, without a server: the shared watch and what waits
on it (a synchronous call, the events stream and its keep-alives), the events route,
errors to answers, a request's result, the review cache and the metrics' route labels.

``ApiServer`` stands in for the few API server calls the gateway makes (kubeclient's
method names), keeping requests in a dict and handing watch events out as they change.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from kubescribe.gateway import events
from kubescribe.gateway.auth import ApiKeys, Authorizer, AuthError
from kubescribe.gateway.errors import HttpError, on_kube_error
from kubescribe.gateway.kubeclient import KubeError
from kubescribe.gateway.waiter import Waiter, newer

NS = "team-a"


class ApiServer:
    """TranscriptionRequests of one namespace, their watch, and the two reviews."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.watches = 0
        self._streams: list[asyncio.Queue] = []
        #: Set to make create_request fail, or to have it end the request just after.
        self.refuse_create: KubeError | None = None
        self.finish_with: str | None = None

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def _send(self, kind: str, obj: dict[str, Any]) -> None:
        for q in self._streams:
            q.put_nowait((kind, obj))

    def create(self, name: str, phase: str | None = None) -> dict[str, Any]:
        obj = self._bump({"metadata": {"name": name, "namespace": NS}, "status": {"phase": phase} if phase else {}})
        self.objects[name] = obj
        self._send("ADDED", obj)
        return obj

    def set_phase(self, name: str, phase: str, *, quietly: bool = False) -> dict[str, Any]:
        obj = self._bump({**self.objects[name], "status": {**self.objects[name]["status"], "phase": phase}})
        self.objects[name] = obj
        if not quietly:
            self._send("MODIFIED", obj)
        return obj

    def delete(self, name: str, *, quietly: bool = False) -> None:
        obj = self.objects.pop(name)
        if not quietly:
            self._send("DELETED", obj)

    def expire_watch(self) -> None:
        """410 Gone on every open watch: the waiter lists again."""
        self._send("ERROR", {"kind": "Status", "code": 410})

    # -- kubeclient's calls --------------------------------------------------------------
    async def list_requests(self, namespace: str) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.objects.values())}

    async def watch_events(self, namespace: str, resource_version: str):
        self.watches += 1
        q: asyncio.Queue = asyncio.Queue()
        self._streams.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._streams.remove(q)

    async def create_request(self, namespace: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        if self.refuse_create is not None:
            raise self.refuse_create
        obj = self.create(metadata["name"])
        self.objects[metadata["name"]] = obj = {**obj, "metadata": {**metadata, **obj["metadata"]}, "spec": spec}
        if self.finish_with:  # as the operator answers a cache hit, just after the create
            asyncio.get_running_loop().call_soon(self.set_phase, metadata["name"], self.finish_with)
        return obj

    async def delete_request(self, namespace: str, name: str) -> None:
        self.delete(name)

    async def get_request(self, namespace: str, name: str) -> dict[str, Any]:
        if name not in self.objects:
            raise KubeError(404, f"transcriptionrequests {name} not found")
        return self.objects[name]

    async def token_review(self, token: str) -> dict[str, Any]:
        return {"authenticated": True, "user": {"username": f"user-{token}"}}

    async def access_review(self, user, groups, uid, extra, attributes) -> dict[str, Any]:
        return {"allowed": True}


# -- the shared watch -------------------------------------------------------------------------
def test_waiting_calls_share_one_watch_and_get_their_request_once_terminal():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        first, second = await waiter.subscribe(NS, "a"), await waiter.subscribe(NS, "b")
        api.create("a")
        api.create("b")
        api.set_phase("a", "Running")
        api.set_phase("b", "Succeeded")
        api.set_phase("a", "Failed")
        deadline = time.monotonic() + 30
        got = await asyncio.gather(first.terminal(deadline), second.terminal(deadline))
        first.close()
        second.close()
        await waiter.close()
        return api.watches, [o["status"]["phase"] for o in got]

    watches, phases = asyncio.run(scenario())
    assert watches == 1 and phases == ["Failed", "Succeeded"]


def test_a_request_deleted_while_a_call_waits_is_a_404():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        sub = await waiter.subscribe(NS, "a")
        api.create("a")
        api.delete("a")
        try:
            return await sub.terminal(time.monotonic() + 30)
        finally:
            await waiter.close()

    with pytest.raises(KubeError) as err:
        asyncio.run(scenario())
    assert err.value.status == 404 and "deleted while the call waited" in err.value.message


def test_at_the_deadline_a_fresh_read_decides():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        api.create("done", "Succeeded")
        api.create("busy", "Running")
        done, busy = await waiter.subscribe(NS, "done"), await waiter.subscribe(NS, "busy")
        # Drain what the first list handed out: only the read at the deadline is left.
        for sub in (done, busy):
            await sub.next(0)
        past = time.monotonic()
        got = await done.terminal(past), await busy.terminal(past)
        await waiter.close()
        return got

    done, busy = asyncio.run(scenario())
    assert done["status"]["phase"] == "Succeeded" and busy is None


def test_a_relist_hands_out_the_current_state_and_deletions_missed_meanwhile():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        kept, gone, unborn = [await waiter.subscribe(NS, n) for n in ("kept", "gone", "unborn")]
        api.create("kept")
        api.create("gone")
        assert (await kept.next(30))["metadata"]["name"] == "kept"
        assert (await gone.next(30))["metadata"]["name"] == "gone"
        # Changes the watch never sends (it was away), then the server ends it.
        api.set_phase("kept", "Succeeded", quietly=True)
        api.delete("gone", quietly=True)
        api.expire_watch()
        after = await kept.terminal(time.monotonic() + 30)
        with pytest.raises(KubeError):
            await gone.next(30)
        # A request not created yet is not taken for deleted by the relist.
        unborn_state = await unborn.next(0)
        await waiter.close()
        return api.watches, after, unborn_state

    watches, after, unborn_state = asyncio.run(scenario())
    assert watches == 2 and after["status"]["phase"] == "Succeeded" and unborn_state is None


def test_versions_compare_as_numbers_and_anything_else_counts_as_newer():
    def v(rv):
        return {"metadata": {"resourceVersion": rv}}

    assert newer(v("10"), v("9")) and not newer(v("9"), v("10")) and not newer(v("9"), v("9"))
    assert newer(v("b"), v("a")) and newer(v("9"), None)


# -- the events stream ------------------------------------------------------------------------
def _parse(chunk: bytes) -> tuple[str, Any]:
    text = chunk.decode()
    if text.startswith(":"):
        return "comment", text
    kind, data = text.strip().split("\n")
    return kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def test_the_events_stream_keeps_a_quiet_connection_alive_and_never_steps_back():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        api.create("a", "Queued")
        sub = await waiter.subscribe(NS, "a")
        first = await api.get_request(NS, "a")
        stale = dict(first, metadata={**first["metadata"], "resourceVersion": "50"}, status={"phase": "Pending"})
        stream = events.stream(sub, first, keepalive=0.05, deadline=time.monotonic() + 60)
        seen = [_parse(await anext(stream))]
        seen.append(_parse(await anext(stream)))  # nothing changes: a keep-alive comment
        sub._owner._deliver("MODIFIED", stale)  # a version older than the read: not sent
        api.set_phase("a", "Running")
        api.set_phase("a", "Succeeded")
        seen += [_parse(chunk) async for chunk in stream]
        await waiter.close()
        return seen, sub._owner.subscribers

    seen, subscribers = asyncio.run(scenario())
    assert seen[0] == ("status", {"name": "a", "namespace": NS, "phase": "Queued"})
    assert seen[1] == ("comment", ": keep-alive\n\n")
    changes = [(k, d["phase"]) for k, d in seen[2:] if k != "comment"]
    # Running may be overtaken by Succeeded (the newest state wins); never a step back.
    assert changes in ([("status", "Running"), ("done", "Succeeded")], [("done", "Succeeded")])
    assert subscribers == {}, "the stream closed its subscription"


def test_the_events_stream_reports_a_deleted_request_and_ends():
    async def scenario():
        api = ApiServer()
        waiter = Waiter(api)
        api.create("a", "Running")
        sub = await waiter.subscribe(NS, "a")
        stream = events.stream(sub, await api.get_request(NS, "a"), keepalive=30, deadline=time.monotonic() + 60)
        first = _parse(await anext(stream))
        api.delete("a")
        rest = [_parse(chunk) async for chunk in stream]
        await waiter.close()
        return first, rest

    first, rest = asyncio.run(scenario())
    assert first[0] == "status" and len(rest) == 1
    assert rest[0][0] == "error" and rest[0][1]["error"]["type"] == "not_found_error"


def _gateway(api: ApiServer, **settings: Any):
    from kubescribe.gateway.app import ROUTE_LABELS
    from kubescribe.gateway.context import Gateway
    from kubescribe.gateway.http_metrics import GatewayMetrics
    from kubescribe.settings import GatewaySettings

    return Gateway(settings=GatewaySettings(**settings), kube=api, redis=None, store=None,
                   metrics=GatewayMetrics(routes=ROUTE_LABELS))


def _request(gw, path: str, name: str):
    from starlette.applications import Starlette
    from starlette.requests import Request

    app = Starlette()
    app.state.gateway = gw
    scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"authorization", b"Bearer t")],
             "query_string": b"", "path_params": {"name": name}, "app": app}
    return Request(scope)


def test_the_events_route_subscribes_before_it_reads_and_uses_the_keepalive_setting():
    from kubescribe.gateway.routes_async import events_async

    async def scenario():
        api = ApiServer()
        gw = _gateway(api, gateway_sse_keepalive_seconds=0.05, gateway_default_namespace=NS)
        api.create("a", "Running")
        response = await events_async(_request(gw, "/v1/transcriptions/a/events", "a"))
        body = response.body_iterator
        chunks = [await anext(body), await anext(body)]
        api.set_phase("a", "Succeeded")
        chunks += [chunk async for chunk in body]
        with pytest.raises(KubeError) as missing:
            await events_async(_request(gw, "/v1/transcriptions/b/events", "b"))
        left = {ns: w.subscribers for ns, w in gw.waiter._watches.items()}
        await gw.waiter.close()
        return response, [_parse(c.encode() if isinstance(c, str) else c) for c in chunks], missing.value, left

    response, chunks, missing, left = asyncio.run(scenario())
    assert response.media_type == "text/event-stream" and response.headers["cache-control"] == "no-cache"
    assert chunks[0][0] == "status" and chunks[1] == ("comment", ": keep-alive\n\n")
    assert chunks[-1][0] == "done" and chunks[-1][1]["phase"] == "Succeeded"
    assert missing.status == 404 and left == {NS: {}}, "a refused read leaves no subscription behind"


# -- a call that creates work ------------------------------------------------------------------
def _upload_request(gw, audio: bytes, **fields: str):
    """A POST of OpenAI's form with ``audio`` as the file, as a Starlette request."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request

    built = httpx.Request("POST", "http://gateway/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                          data={"model": "whisper-1", **fields})
    body = built.read()
    app = Starlette()
    app.state.gateway = gw
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/audio/transcriptions", "query_string": b"", "app": app,
             "headers": [(k.lower().encode(), v.encode()) for k, v in built.headers.items()]}
    return Request(scope, receive)


def _wav(seconds: float = 0.5) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


def _submitting_gateway(api: ApiServer, redis_server):
    from kubescribe.redisconn import connect_async
    from kubescribe.store import Store

    gw = _gateway(api, gateway_default_namespace=NS)
    gw.redis = connect_async(redis_server.url, redis_server.password)
    gw.store = Store(redis_server.client())
    return gw


def test_a_waiting_call_keeps_the_audio_names_the_request_and_returns_it_once_terminal(redis_server):
    import hashlib

    from kubescribe.gateway.auth import Identity
    from kubescribe.gateway.context import Timing
    from kubescribe.gateway.submit import submit

    audio = _wav(0.5)

    async def scenario():
        api = ApiServer()
        api.finish_with = "Succeeded"
        gw = _submitting_gateway(api, redis_server)
        timing = Timing()
        try:
            got = await submit(gw, _upload_request(gw, audio, response_format="srt"), Identity("alice"), NS,
                               task="transcribe", priority_field=False, wait=True, timing=timing)
            left = {ns: w.subscribers for ns, w in gw.waiter._watches.items()}
            return got, timing, left
        finally:
            await gw.waiter.close()
            await gw.redis.aclose()

    (obj, fmt, words), timing, left = asyncio.run(scenario())
    sha = hashlib.sha256(audio).hexdigest()
    assert obj["status"]["phase"] == "Succeeded" and fmt == "srt" and words is False
    meta = obj["metadata"]
    assert meta["name"].startswith("gateway-") and meta["labels"] == {"app.kubernetes.io/created-by": "kubescribe-gateway"}
    assert meta["annotations"] == {"kubescribe.io/requested-by": "alice"}
    assert obj["spec"]["audio"] == {"redisKey": f"kubescribe:audio:{sha}", "sha256": sha}
    assert redis_server.client().get(f"kubescribe:audio:{sha}") == audio
    assert [name for name, _ in timing.parts] == ["upload", "store+create", "wait"] and left == {NS: {}}


def test_a_create_the_api_server_refuses_keeps_no_audio_and_no_subscription(redis_server):
    import hashlib

    from kubescribe.gateway.auth import Identity
    from kubescribe.gateway.submit import submit

    audio = _wav(0.75)

    async def scenario():
        api = ApiServer()
        api.refuse_create = KubeError(422, "spec.model: Invalid value")
        gw = _submitting_gateway(api, redis_server)
        try:
            with pytest.raises(KubeError) as err:
                await submit(gw, _upload_request(gw, audio), Identity("alice"), NS, task="transcribe",
                             priority_field=False, wait=True)
            return err.value, {ns: w.subscribers for ns, w in gw.waiter._watches.items()}
        finally:
            await gw.waiter.close()
            await gw.redis.aclose()

    refused, left = asyncio.run(scenario())
    assert refused.status == 422 and left == {NS: {}}
    assert not redis_server.client().exists(f"kubescribe:audio:{hashlib.sha256(audio).hexdigest()}")


# -- errors and results -----------------------------------------------------------------------
@pytest.mark.parametrize("kube, status, code", [
    (KubeError(404, "x not found"), 404, "not_found"),
    (KubeError(409, "already exists"), 400, "invalid_spec"),
    (KubeError(403, "exceeded quota: requests"), 403, "quota_exceeded"),
    (KubeError(403, "forbidden"), 503, "gateway_rbac"),
    (KubeError(0, "unreachable"), 503, "apiserver_unavailable"),
])
def test_api_server_failures_map_to_answers_that_say_what_to_do(kube, status, code):
    response = asyncio.run(on_kube_error(None, kube))
    body = json.loads(response.body)
    assert response.status_code == status and body["error"]["code"] == code


@pytest.mark.parametrize("status, code", [
    ({"phase": "Failed", "reason": "BadAudio", "message": "not audio"}, 400),
    ({"phase": "Failed", "reason": "RedisUnavailable"}, 503),
    ({"phase": "Running"}, 409),
    ({}, 409),
])
def test_a_result_is_refused_the_way_the_requests_end_says(status, code):
    from kubescribe.gateway.results import result_of

    obj = {"metadata": {"name": "a"}, "status": status}
    with pytest.raises(HttpError) as err:
        asyncio.run(result_of(None, obj))
    assert err.value.status == code


# -- the review cache ---------------------------------------------------------------------------
def test_a_full_review_cache_drops_its_least_recently_used_answer_not_all_of_them():
    class CountingApiServer(ApiServer):
        def __init__(self):
            super().__init__()
            self.reviews: list[str] = []

        async def token_review(self, token):
            self.reviews.append(token)
            return await super().token_review(token)

    async def scenario():
        api = CountingApiServer()
        auth = Authorizer(api, ApiKeys(None), cache_seconds=60, cache_size=3)
        for token in ("t1", "t2", "t3", "t1", "t4"):  # t1 used again: t2 is the least recent
            await auth.authenticate(f"Bearer {token}")
        for token in ("t1", "t3", "t4"):
            await auth.authenticate(f"Bearer {token}")
        return api.reviews

    assert asyncio.run(scenario()) == ["t1", "t2", "t3", "t4"]


def test_a_review_cache_of_zero_seconds_asks_every_time():
    async def scenario():
        api = ApiServer()
        calls = []
        api.access_review = lambda *a: calls.append(a) or asyncio.sleep(0, {"allowed": False})
        auth = Authorizer(api, ApiKeys(None), cache_seconds=0)
        ident = await auth.authenticate("Bearer t")
        for _ in range(2):
            with pytest.raises(AuthError):
                await auth.require(ident, {"group": "g", "resource": "r", "verb": "get"})
        return calls

    assert len(asyncio.run(scenario())) == 2


# -- metrics ------------------------------------------------------------------------------------
def test_the_metrics_route_labels_are_the_route_table():
    from starlette.testclient import TestClient

    from kubescribe.gateway.app import ROUTE_LABELS, ROUTES, build_app

    assert ROUTE_LABELS == (*dict.fromkeys(r.path for r in ROUTES), "other")
    gw = _gateway(ApiServer())
    help_text = gw.metrics.requests_total._documentation
    assert all(label in help_text for label in ROUTE_LABELS)
    with TestClient(build_app(gw)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/no/such/route").status_code == 404
    registry = gw.metrics.registry
    assert registry.get_sample_value("kubescribe_gateway_requests_total",
                                     {"route": "/health", "method": "GET", "code": "200"}) == 1
    assert registry.get_sample_value("kubescribe_gateway_requests_total",
                                     {"route": "other", "method": "GET", "code": "404"}) == 1
    for label in ROUTE_LABELS:  # every route's latency series exists from the start
        assert registry.get_sample_value("kubescribe_gateway_request_duration_seconds_count", {"route": label}) \
            is not None


# -- the architecture document ----------------------------------------------------------------
def test_the_architecture_documents_gateway_section_names_what_exists():
    """Every ``module.name`` (and ``Class.method``) the gateway section cites is in the code,
    every gateway module is in its table, and no removed name is cited."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    section = doc.split("## The gateway\n")[1].split("\n## ")[0]
    modules = {p.stem for p in (root / "gateway").glob("*.py")} - {"__init__", "main"}
    assert modules == set(re.findall(r"`(\w+)\.py`", section))
    cited = set(re.findall(r"`(\w+)\.(\w+)`", section)) - {(m, "py") for m in modules}
    assert len(cited) >= 10, cited
    classes = {"Gateway": "context", "Subscription": "waiter", "Authorizer": "auth", "KubeClient": "kubeclient"}
    for owner, name in cited:
        if owner in modules:
            assert hasattr(importlib.import_module(f"kubescribe.gateway.{owner}"), name), (owner, name)
        elif owner in classes:
            cls = getattr(importlib.import_module(f"kubescribe.gateway.{classes[owner]}"), owner)
            assert hasattr(cls, name), (owner, name)
    assert "watch_request" not in doc and "creates the request with `generateName`" not in doc
