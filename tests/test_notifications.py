"""Notifications end to end: the real operator on the real API server and Redis, runner
pods run by the stand-in kubelet (real faster-whisper), and a real HTTP receiver on
127.0.0.1. Every event a receiver gets is parsed with the cloudevents SDK and verified
with standardwebhooks, as the README's receiver does.

The guard refuses loopback by default, so these operators allow 127.0.0.0/8 through the
allow-list setting; the refusal itself is tested in tests/test_notify_plan.py (no
socket) and here at admission. Backoff is shortened to fractions of a second.
"""

from __future__ import annotations

import base64
import json
import threading

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook

from harness.receiver import Delivery, Receiver
from kubescribe.store import Store

pytestmark = pytest.mark.kube

KEY = "whsec_" + base64.b64encode(b"kubescribe-notification-test-key").decode()
FAST = dict(audio_url_allow_cidrs="127.0.0.0/8", notify_backoff_seconds="0.4", notify_backoff_cap_seconds="1.5",
            notify_timeout_seconds="3")


@pytest.fixture
def secret(kube_api, kube_namespace):
    from kubernetes import client

    client.CoreV1Api(kube_api).create_namespaced_secret(kube_namespace, {
        "metadata": {"name": "hook"}, "stringData": {"key": KEY}})
    return {"name": "hook", "key": "key"}


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def make(**kw) -> Receiver:
        r = Receiver(**kw)
        started.append(r)
        return r

    yield make
    for r in started:
        if r.hold is not None:
            r.hold.set()
        r.stop()


def upload(redis_server, speech_dir, name) -> str:
    return Store(redis_server.client()).put_audio((speech_dir / f"{name}.wav").read_bytes())


def verified(d: Delivery) -> tuple[str, dict]:
    """The event's type and data, after the signature checks out."""
    Webhook(KEY).verify(d.body, d.headers, json_parse=False)
    event = from_http_event(HTTPMessage(d.headers, d.body))
    assert event.get_id() == d.headers["webhook-id"]
    data = event.get_data()
    return event.get_type(), json.loads(data) if isinstance(data, (bytes, str)) else data


def notifications(requests_api, name: str) -> dict:
    return {r["sink"]: r for r in requests_api.status(name).get("notifications") or []}


def delivered(requests_api, name: str, sink: str) -> dict:
    return requests_api.wait(name, lambda s: any(r["sink"] == sink and r["state"] == "Delivered"
                                                 for r in s.get("notifications") or []),
                             timeout=120, description=f"{name} delivered to {sink}")


def test_succeeded_cached_and_failed_requests_each_deliver_one_signed_cloudevent(
        operator_factory, requests_api, redis_server, speech_dir, secret, receivers):
    redis_server.client().flushdb()
    op = operator_factory(gpu_budget="2", **FAST)
    sink = receivers().start()
    binary = receivers().start()
    key = upload(redis_server, speech_dir, "fox")
    notify = [{"url": sink.url, "signingSecretRef": secret},
              {"url": binary.url, "signingSecretRef": secret, "mode": "binary", "events": ["Failed"]}]
    requests_api.create("fresh", {"audio": {"redisKey": key}, "notify": notify})
    status = delivered(requests_api, "fresh", sink.url)
    assert status["phase"] == "Succeeded" and not status.get("cached")
    kind, data = verified(sink.wait_count(1)[0])
    assert kind == "io.kubescribe.transcription.succeeded"
    assert data["name"] == "fresh" and data["phase"] == "Succeeded" and data["cached"] is False
    assert "fox" in data["textPreview"].lower() and data["resultPath"] == "/v1/transcriptions/fresh/result"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Notified"]["status"] == "True"
    record = notifications(requests_api, "fresh")[sink.url]
    assert (record["attempts"], record["lastCode"]) == (1, 204) and record["deliveredAt"]

    # The same audio again: answered from the cache, and notified all the same.
    requests_api.create("again", {"audio": {"redisKey": key}, "notify": notify})
    assert delivered(requests_api, "again", sink.url)["cached"] is True
    _, data = verified(sink.wait_count(2)[1])
    assert data["name"] == "again" and data["cached"] is True

    # Never uploaded: Failed, to both sinks (the binary one asked for Failed only).
    requests_api.create("lost", {"audio": {"redisKey": "kubescribe:audio:" + "9" * 64}, "device": "cpu",
                                 "notify": notify})
    delivered(requests_api, "lost", binary.url)
    delivered(requests_api, "lost", sink.url)
    kind, data = verified(sink.wait_count(3)[2])
    assert kind == "io.kubescribe.transcription.failed" and data["reason"] == "AudioNotFound"
    only = binary.wait_count(1)
    assert len(only) == 1 and only[0].headers["ce-type"] == "io.kubescribe.transcription.failed"
    assert verified(only[0])[1]["name"] == "lost"
    text = op.metrics_text()
    assert 'kubescribe_notifications_total{outcome="delivered"} 4.0' in text
    assert "kubescribe_notification_delivery_seconds_count 4.0" in text


def test_a_receiver_down_then_up_gets_the_event_with_the_same_id_on_every_attempt(
        operator_factory, requests_api, redis_server, speech_dir, secret, receivers):
    operator_factory(**FAST)
    sink = receivers(codes=[503]).reserve_port()  # down: nothing listens on its port
    requests_api.create("late", {"audio": {"redisKey": "kubescribe:audio:" + "8" * 64}, "device": "cpu",
                                 "notify": [{"url": sink.url, "signingSecretRef": secret}]})
    down = requests_api.wait("late", lambda s: (notifications_of(s).get(sink.url) or {}).get("attempts", 0) >= 3,
                             timeout=120, description="three attempts while the receiver is down")
    record = notifications_of(down)[sink.url]
    assert record["state"] == "Pending" and "lastCode" not in record and "no answer" in record["lastError"]
    assert {c["type"]: c for c in down["conditions"]}["Notified"]["reason"] == "Delivering"
    sink.start()  # up, answering 503 once, then 204
    status = delivered(requests_api, "late", sink.url)
    got = sink.wait_count(2)
    assert [d.headers["webhook-id"] for d in got] == [record["eventId"]] * 2
    assert got[0].body == got[1].body
    final = notifications_of(status)[sink.url]
    assert final["attempts"] >= 5 and final["lastCode"] == 204


def notifications_of(status: dict) -> dict:
    return {r["sink"]: r for r in status.get("notifications") or []}


def test_an_operator_killed_between_the_phase_change_and_the_delivery_still_delivers(
        operator_factory, requests_api, secret, receivers):
    op = operator_factory(**FAST)
    hold = threading.Event()
    sink = receivers(hold=hold).start()
    requests_api.create("orphan", {"audio": {"redisKey": "kubescribe:audio:" + "7" * 64}, "device": "cpu",
                                   "notify": [{"url": sink.url, "signingSecretRef": secret}]})
    first = sink.wait_count(1)[0]  # the POST is in flight: Failed is written, the delivery is not
    assert requests_api.status("orphan")["phase"] == "Failed"
    op.kill()
    assert not requests_api.status("orphan").get("notifications")
    hold.set()  # its answer reaches nobody
    op.start()
    delivered(requests_api, "orphan", sink.url)
    again = sink.wait_count(2)[1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"] and again.body == first.body
    verified(again)


def test_410_ends_the_delivery_with_a_warning_and_no_further_attempts(
        operator_factory, requests_api, secret, receivers):
    operator_factory(**FAST)
    gone = receivers(code=410).start()
    requests_api.create("gone", {"audio": {"redisKey": "kubescribe:audio:" + "6" * 64}, "device": "cpu",
                                 "notify": [{"url": gone.url, "signingSecretRef": secret}]})
    status = requests_api.wait("gone", lambda s: (notifications_of(s).get(gone.url) or {}).get("state") == "Failed",
                               timeout=120, description="the 410 delivery Failed")
    assert notifications_of(status)[gone.url]["attempts"] == 1
    assert {c["type"]: c for c in status["conditions"]}["Notified"]["reason"] == "DeliveryFailed"
    requests_api.wait_reasons("gone", "NotificationFailed")
    # A second request whose sink fails twice first: its retries span more than two
    # backoff periods, in which a retry of the 410 would have come.
    flaky = receivers(codes=[500, 500]).start()
    requests_api.create("later", {"audio": {"redisKey": "kubescribe:audio:" + "5" * 64}, "device": "cpu",
                                  "notify": [{"url": flaky.url, "signingSecretRef": secret}]})
    delivered(requests_api, "later", flaky.url)
    assert len(flaky.wait_count(3)) == 3
    assert len(gone.received) == 1


def test_a_sink_the_guard_refuses_fails_the_request_at_admission(operator_factory, requests_api, secret):
    operator_factory()  # no allow-list: loopback is refused
    requests_api.create("inward", {"audio": {"redisKey": "kubescribe:audio:" + "4" * 64},
                                   "notify": [{"url": "http://127.0.0.1:9/hook", "signingSecretRef": secret}]})
    status = requests_api.wait_phase("inward", "Failed", timeout=60)
    assert status["reason"] == "InvalidSpec"
    assert "spec.notify[0].url" in status["message"] and "loopback" in status["message"]
    assert "KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS" in status["message"]


def test_the_gateway_s_callback_url_gets_an_event_signed_with_the_caller_s_own_key(
        operator_factory, kube_cluster, kube_api, kube_namespace, redis_server, speech_dir, receivers, tmp_path):
    import httpx

    from harness.gateway import WRITER_RULES, Callers, GatewayProcess

    operator_factory(notify_signing_key=KEY, **FAST)
    gw = GatewayProcess(str(kube_cluster.kubeconfig_path), redis_server.url, tmp_path, notify_signing_key=KEY,
                        gateway_auth_cache_seconds="0").start()
    callers = Callers(kube_api, kube_namespace)
    try:
        writer, other = callers.token("writer", rules=WRITER_RULES), callers.token("other", rules=WRITER_RULES)
        auth = {"Authorization": f"Bearer {writer}", "X-Kubescribe-Namespace": kube_namespace}
        key = httpx.get(f"{gw.url}/v1/notifications/key", headers=auth).json()["key"]
        theirs = httpx.get(f"{gw.url}/v1/notifications/key", headers={
            "Authorization": f"Bearer {other}", "X-Kubescribe-Namespace": kube_namespace}).json()["key"]
        assert key.startswith("whsec_") and key not in (theirs, KEY)
        sink = receivers().start()
        with open(speech_dir / "fox.wav", "rb") as f:
            r = httpx.post(f"{gw.url}/v1/transcriptions", headers=auth, files={"file": ("fox.wav", f)},
                           data={"model": "tiny.en", "callback_url": sink.url}, timeout=60)
        assert r.status_code == 202, r.text
        got = sink.wait_count(1, timeout=180)[0]
        Webhook(key).verify(got.body, got.headers)  # the caller's own key verifies it...
        for wrong in (theirs, KEY):  # ...another caller's and the install's do not
            with pytest.raises(Exception):
                Webhook(wrong).verify(got.body, got.headers)
        event = from_http_event(HTTPMessage(got.headers, got.body))
        assert event.get_subject() == r.json()["name"] and event.get_data()["phase"] == "Succeeded"
    finally:
        gw.stop()
        callers.cleanup()
