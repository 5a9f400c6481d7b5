"""The notification decisions, as a specification: which sinks hear of a request, which
URLs are refused at admission (decided from the URL, no socket opened), and what each
answer of a sink leads to. Pure functions; no server."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest

from kubescribe.models import InvalidSpec, NotificationState, parse_spec
from kubescribe.operator.notify_plan import (
    Answer,
    Backoff,
    Sink,
    admission_refusal,
    after_attempt,
    condition,
    event_id,
    is_due,
    merged,
    next_due,
    record_for,
    sink_refusal,
    sinks_for,
)
from kubescribe.url_guard import ALLOW_SETTING, parse_networks

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)
REF = {"name": "hook", "key": "key"}


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """Deciding never connects or resolves."""
    def refuse(*a, **k):
        raise AssertionError("a notification decision opened a socket or resolved a name")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def spec(*sinks: dict) -> object:
    return parse_spec({"audio": {"redisKey": "kubescribe:audio:x"}, "notify": list(sinks)})


def test_a_sink_defaults_to_both_phases_in_structured_mode():
    s = spec({"url": "https://hooks.example.com/x", "signingSecretRef": REF}).notify[0]
    assert s.events == ["Succeeded", "Failed"] and s.mode == "structured"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/x", "https://"])
def test_a_sink_url_that_is_not_http_is_refused_by_the_schema(url):
    with pytest.raises(InvalidSpec, match=r"spec.notify.0.url"):
        spec({"url": url, "signingSecretRef": REF})


def test_more_than_four_sinks_are_refused():
    with pytest.raises(InvalidSpec, match="spec.notify"):
        spec(*[{"url": f"https://h{i}.example.com/", "signingSecretRef": REF} for i in range(5)])


@pytest.mark.parametrize("url,why", [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://[fe80::1]/hook", "link-local"),
])
def test_a_sink_the_audio_url_guard_refuses_is_refused_at_admission(url, why):
    refused = admission_refusal(spec({"url": url, "signingSecretRef": REF}))
    assert refused is not None and refused.startswith("spec.notify[0].url: ")
    assert why in refused and ALLOW_SETTING in refused


@pytest.mark.parametrize("url", ["https://hooks.example.com/x", "http://10.96.0.20/hook",
                                 "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default"])
def test_public_private_and_named_sinks_pass_admission(url):
    # A name is resolved and checked when the POST connects, not here.
    assert sink_refusal(url) is None


def test_the_allow_list_opens_a_refused_range():
    assert sink_refusal("http://127.0.0.1:9/x", parse_networks("127.0.0.0/8")) is None
    assert sink_refusal("http://127.0.0.1:9/x", parse_networks("10.0.0.0/8")) is not None


def test_request_sinks_come_first_and_a_url_is_delivered_to_once():
    install = [Sink("https://broker.example/", ("Succeeded",)), Sink("https://a.example/")]
    s = spec({"url": "https://a.example/", "signingSecretRef": REF, "events": ["Failed"]})
    assert [x.url for x in sinks_for(s.notify, install, "Succeeded")] == ["https://broker.example/", "https://a.example/"]
    failed = sinks_for(s.notify, install, "Failed")
    assert [x.url for x in failed] == ["https://a.example/"] and failed[0].secret is not None


def test_the_event_id_is_fixed_per_request_generation_and_phase():
    assert event_id("u1", 1, "Succeeded") == event_id("u1", 1, "Succeeded")
    assert len({event_id("u1", 1, "Succeeded"), event_id("u1", 2, "Succeeded"), event_id("u1", 1, "Failed"),
                event_id("u2", 1, "Succeeded")}) == 4


def fresh():
    return record_for(Sink("https://a.example/"), [], "id-1", "Succeeded")


def test_a_sink_with_no_record_is_due_at_once():
    r = fresh()
    assert r.state == "Pending" and r.attempts == 0 and r.type == "io.kubescribe.transcription.succeeded"
    assert is_due(r, NOW)


def test_2xx_is_delivered():
    r = after_attempt(fresh(), Answer(code=204), Backoff(), NOW, 0.5)
    assert (r.state, r.attempts, r.last_code, r.delivered_at) == ("Delivered", 1, 204, "2026-12-02T06:00:00Z")
    assert not is_due(r, NOW + timedelta(days=9)) and next_due([r]) is None


def test_410_is_final_at_once():
    r = after_attempt(fresh(), Answer(code=410), Backoff(), NOW, 0.5)
    assert (r.state, r.attempts) == ("Failed", 1)


def test_another_4xx_is_final_after_one_retry():
    b = Backoff(base=10)
    first = after_attempt(fresh(), Answer(code=400), b, NOW, 0.5)
    assert first.state == "Pending"
    second = after_attempt(first, Answer(code=404), b, NOW, 0.5)
    assert (second.state, second.attempts, second.last_code) == ("Failed", 2, 404)


def test_a_4xx_after_a_5xx_is_retried_once_more():
    b = Backoff(base=10)
    r = after_attempt(after_attempt(fresh(), Answer(code=503), b, NOW, 0.5), Answer(code=400), b, NOW, 0.5)
    assert r.state == "Pending"


def test_a_refused_destination_is_final():
    r = after_attempt(fresh(), Answer(error="refused to connect", refused=True), Backoff(), NOW, 0.5)
    assert r.state == "Failed" and r.last_code is None and "refused" in r.last_error


def test_5xx_and_timeouts_back_off_exponentially_with_jitter_up_to_the_cap():
    b = Backoff(base=300, cap=6 * 3600, max_attempts=10, jitter=0.2)
    assert [b.delay(n, 0.5) for n in range(1, 11)] == [300, 600, 1200, 2400, 4800, 9600, 19200, 21600, 21600,
                                                       21600]
    assert b.delay(1, 0.0) == pytest.approx(240) and b.delay(1, 0.999999) == pytest.approx(360, rel=1e-4)
    total = sum(b.delay(n, 0.5) for n in range(1, b.max_attempts))  # nine waits between ten tries
    assert 18 * 3600 < total < 30 * 3600  # about a day
    r = after_attempt(fresh(), Answer(error="timed out"), b, NOW, 0.5)
    assert r.state == "Pending" and r.last_error == "timed out" and r.next_attempt_at == "2026-12-02T06:05:00Z"
    assert not is_due(r, NOW) and is_due(r, NOW + timedelta(seconds=300))
    assert next_due([r]) == NOW + timedelta(seconds=300)


def test_the_last_allowed_attempt_is_final():
    r = fresh()
    b = Backoff(base=1, max_attempts=3)
    for _ in range(3):
        r = after_attempt(r, Answer(code=500), b, NOW, 0.5)
    assert (r.state, r.attempts) == ("Failed", 3)


def test_the_notified_condition_says_the_worst_state():
    ok = after_attempt(fresh(), Answer(code=200), Backoff(), NOW, 0.5)
    retrying = after_attempt(record_for(Sink("https://b.example/"), [], "id-1", "Succeeded"),
                             Answer(code=503), Backoff(), NOW, 0.5)
    gone = after_attempt(record_for(Sink("https://c.example/"), [], "id-1", "Succeeded"),
                         Answer(code=410), Backoff(), NOW, 0.5)
    assert condition([ok])[:2] == (True, "Delivered")
    assert condition([ok, retrying])[:2] == (False, "Delivering")
    assert condition([ok, retrying, gone])[:2] == (False, "DeliveryFailed")
    assert "https://c.example/" in condition([gone])[2]


def test_a_record_of_an_older_event_is_replaced_and_merging_keeps_one_per_sink():
    old = after_attempt(fresh(), Answer(code=200), Backoff(), NOW, 0.5)
    new = record_for(Sink("https://a.example/"), [old], "id-2", "Failed")
    assert new.state == NotificationState.Pending.value and new.event_id == "id-2"
    assert merged([old], [new]) == [new]


def test_a_sink_is_signed_by_exactly_one_key():
    caller = spec({"url": "https://a.example/", "caller": "system:serviceaccount:media:uploader"}).notify[0]
    assert caller.caller and caller.signing_secret_ref is None
    for both_or_none in ({"url": "https://a.example/"},
                         {"url": "https://a.example/", "caller": "me", "signingSecretRef": REF}):
        with pytest.raises(InvalidSpec, match="exactly one of notify\\[\\].signingSecretRef and notify\\[\\].caller"):
            spec(both_or_none)


def test_a_caller_s_key_is_its_own_and_needs_the_install_key():
    from standardwebhooks import Webhook

    from kubescribe.sinks import caller_key

    install = "whsec_aW5zdGFsbC1rZXktZm9yLXRlc3Rz"
    a, b = caller_key(install, "alice"), caller_key(install, "bob")
    assert a == caller_key(install, "alice") and a != b and install not in (a, b)
    Webhook(a)  # a valid Standard Webhooks key
    with pytest.raises(ValueError, match="notifications.signingSecret"):
        caller_key("", "alice")
