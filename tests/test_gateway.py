"""The HTTP gateway end to end: real API server (TokenReview, SubjectAccessReview, RBAC),
real Redis, the operator and runner processes with faster-whisper on tiny.en.

Callers are ServiceAccounts with TokenRequest tokens; what they may do is decided by
Roles in the test namespace, as in a cluster.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
import pytest

from kubescribe import GROUP, PLURAL, VERSION
from harness.speech import SENTENCES, wer

pytestmark = pytest.mark.kube


def _bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def snapshot(redis_server, kube_api, namespace: str) -> tuple[set, set]:
    """Every Redis key and every request in the namespace: a refused call changes neither."""
    from kubernetes import client

    keys = set(redis_server.client().keys("*"))
    objs = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return keys, {o["metadata"]["name"] for o in objs["items"]}


def test_openai_client_gets_the_words_in_every_format_and_the_repeat_is_a_cache_hit(
        gateway_env, redis_server, speech_dir):
    import openai

    from kubescribe.store import Store

    gw = gateway_env["gateway"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gateway_env["writer"], max_retries=0, timeout=300)
    fox = speech_dir / "fox.wav"
    # The session's Redis may hold another test file's transcript of the same sentence.
    Store(redis_server.client()).clear()

    with fox.open("rb") as f:
        first = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    assert first.headers["x-kubescribe-cached"] == "false"
    assert wer(SENTENCES["fox"], first.parse().text) <= 0.25

    # The same audio and settings again: answered from the result cache, no runner.
    with fox.open("rb") as f:
        again = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    assert again.headers["x-kubescribe-cached"] == "true"
    assert again.parse().text == first.parse().text

    with fox.open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and wer(SENTENCES["fox"], text) <= 0.25
    with fox.open("rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and "fox" in srt.lower()
    with fox.open("rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and "fox" in vtt.lower()
    with fox.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.duration > 1
    assert verbose.segments and verbose.segments[0].start == 0.0 and verbose.segments[-1].end > 1
    words = [w.word.lower().strip(".") for w in verbose.words]
    assert "fox" in words and all(w.end >= w.start for w in verbose.words)

    text = gw.metrics_text()
    assert 'kubescribe_gateway_requests_total{code="200",method="POST",route="/v1/audio/transcriptions"} 6.0' in text
    assert 'kubescribe_gateway_upload_bytes_count 6.0' in text
    assert 'kubescribe_gateway_request_duration_seconds_count{route="/v1/audio/transcriptions"} 6.0' in text


def test_curl_form_upload_gets_the_words(gateway_env, speech_dir):
    gw = gateway_env["gateway"]
    proc = subprocess.run(["curl", "-sS", "--fail-with-body", f"{gw.url}/v1/audio/transcriptions",
                           "-H", f"Authorization: Bearer {gateway_env['writer']}",
                           "-F", f"file=@{speech_dir / 'weather.wav'}", "-F", "model=whisper-1",
                           "-F", "response_format=json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wer(SENTENCES["weather"], json.loads(proc.stdout)["text"]) <= 0.25


def test_refused_calls_say_why_and_leave_nothing_behind(gateway_env, redis_server, kube_api, speech_dir, tmp_path):
    gw, ns = gateway_env["gateway"], gateway_env["namespace"]
    url = f"{gw.url}/v1/audio/transcriptions"
    audio = (speech_dir / "library.wav").read_bytes()
    # Audio no test uploads elsewhere, so its key appearing would be a leak.
    audio = audio + b"\0" * 64
    form = {"model": "whisper-1"}
    before = snapshot(redis_server, kube_api, ns)

    r = httpx.post(url, files={"file": ("a.wav", audio)}, data=form)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = httpx.post(url, files={"file": ("a.wav", audio)}, data=form, headers=_bearer("not-a-token"))
    assert r.status_code == 401 and "not accepted by the cluster" in r.json()["error"]["message"]
    r = httpx.post(url, files={"file": ("a.wav", audio)}, data=form, headers=_bearer(gateway_env["nobody"]))
    assert r.status_code == 403
    assert f"may not create transcriptionrequests.{GROUP} in namespace {ns}" in r.json()["error"]["message"]
    # A writer naming a namespace where it has no rights.
    r = httpx.post(url, files={"file": ("a.wav", audio)}, data=form,
                   headers=_bearer(gateway_env["writer"], **{"X-Kubescribe-Namespace": "default"}))
    assert r.status_code == 403
    big = audio + b"\0" * 1_000_000
    r = httpx.post(url, files={"file": ("big.wav", big)}, data=form, headers=_bearer(gateway_env["writer"]))
    assert r.status_code == 413 and "1000000 bytes" in r.json()["error"]["message"]
    r = httpx.post(url, files={"file": ("notes.html", b"<html><body>not audio</body></html>" * 20)}, data=form,
                   headers=_bearer(gateway_env["writer"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert "notes.html is not audio" in r.json()["error"]["message"]
    r = httpx.post(url, files={"file": ("a.wav", audio)}, data={"model": "whisper-1", "response_format": "docx"},
                   headers=_bearer(gateway_env["writer"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    # English-only model asked to translate: refused by the spec's own rules, before storing.
    r = httpx.post(f"{gw.url}/v1/audio/translations", files={"file": ("a.wav", audio)}, data=form,
                   headers=_bearer(gateway_env["writer"]))
    assert r.status_code == 400 and "translate" in r.json()["error"]["message"]
    # The admin endpoints need the admin permission.
    for token in (gateway_env["writer"], gateway_env["nobody"]):
        assert httpx.get(f"{gw.url}/api/admin/cache/stats", headers=_bearer(token)).status_code == 403
        assert httpx.post(f"{gw.url}/api/admin/cache/clear", headers=_bearer(token)).status_code == 403
    assert httpx.post(f"{gw.url}/api/admin/cache/clear").status_code == 401

    assert snapshot(redis_server, kube_api, ns) == before
    assert hashlib.sha256(audio).hexdigest() not in str(before[0])


def test_admin_endpoints_work_with_the_admin_permission(gateway_env, redis_server):
    gw = gateway_env["gateway"]
    admin = _bearer(gateway_env["admin"])
    stats = httpx.get(f"{gw.url}/api/admin/cache/stats", headers=admin)
    assert stats.status_code == 200
    assert set(stats.json()) == {"hits", "misses", "hit_rate", "results", "audio", "clears"}
    redis_server.client().set("kubescribe:result:" + "e" * 64, b"{}")
    cleared = httpx.post(f"{gw.url}/api/admin/cache/clear", headers=admin)
    assert cleared.status_code == 200 and cleared.json()["deleted"] >= 1
    assert not redis_server.client().keys("kubescribe:result:*")
    after = httpx.get(f"{gw.url}/api/admin/cache/stats", headers=admin).json()
    assert after["clears"] == stats.json()["clears"] + 1 and after["results"] == 0
    # The admin permission is not the right to transcribe.
    r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("a.wav", b"RIFF0000WAVE")},
                   headers=admin)
    assert r.status_code == 403


def test_async_request_streams_events_to_the_terminal_one_then_result_and_cached_analysis(
        gateway_env, redis_server, speech_dir, kube_cluster, tmp_path):
    gw = gateway_env["gateway"]
    auth = _bearer(gateway_env["writer"])
    with (speech_dir / "library.wav").open("rb") as f:
        r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("library.wav", f)},
                       data={"model": "whisper-1", "priority": "5"}, headers=auth)
    assert r.status_code == 202, r.text
    created = r.json()
    name = created["name"]
    assert r.headers["location"] == f"/v1/transcriptions/{name}" and created["phase"] == "Pending"

    events = []
    with httpx.stream("GET", f"{gw.url}{created['events_url']}", headers=auth, timeout=300) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    assert events[-1][0] == "done" and events[-1][1]["phase"] == "Succeeded"
    assert all(k == "status" for k, _ in events[:-1])

    state = httpx.get(f"{gw.url}/v1/transcriptions/{name}", headers=auth).json()
    assert state["phase"] == "Succeeded" and state["language"] == "en"
    srt = httpx.get(f"{gw.url}/v1/transcriptions/{name}/result", params={"format": "srt"}, headers=auth)
    assert srt.status_code == 200 and "library" in srt.text.lower() and " --> " in srt.text

    first = httpx.get(f"{gw.url}/v1/transcriptions/{name}/analysis", headers=auth)
    assert first.status_code == 200, first.text
    doc = first.json()
    assert doc["cached"] is False and doc["language"] == "en"
    assert 7 <= doc["word_count"] <= 11 and 60 < doc["speaking_rate_wpm"] < 250
    assert 0 < doc["speech_ratio"] <= 1 and doc["speech_seconds"] + doc["silence_seconds"] == pytest.approx(
        doc["duration_seconds"], abs=0.01)
    assert "library" in [w["word"] for w in doc["top_words"]]
    key = first.headers["x-kubescribe-analysis-key"]
    ttl = redis_server.client().ttl(key)
    assert 7 * 86400 - 60 < ttl <= 7 * 86400
    second = httpx.get(f"{gw.url}/v1/transcriptions/{name}/analysis", headers=auth).json()
    assert second["cached"] is True and {**second, "cached": False} == doc

    # `kubescribe analyze` reads the same cache entry through the same function.
    import sys

    cli = subprocess.run([sys.executable, "-m", "kubescribe.cli", "analyze", name, "-f", "json", "--redis",
                          redis_server.url, "-n", gateway_env["namespace"], "--kubeconfig",
                          str(kube_cluster.kubeconfig_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == {**doc, "cached": True}
    text = subprocess.run([sys.executable, "-m", "kubescribe.cli", "analyze", name, "--redis", redis_server.url,
                           "-n", gateway_env["namespace"], "--kubeconfig", str(kube_cluster.kubeconfig_path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert text.returncode == 0 and f"words            {doc['word_count']}" in text.stdout
    missing = subprocess.run([sys.executable, "-m", "kubescribe.cli", "analyze", "nope", "-n", gateway_env["namespace"],
                              "--kubeconfig", str(kube_cluster.kubeconfig_path)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        f"kubescribe: no TranscriptionRequest nope in {gateway_env['namespace']}")

    # Reading needs `get`: nobody may not; deleting needs `delete`.
    assert httpx.get(f"{gw.url}/v1/transcriptions/{name}", headers=_bearer(gateway_env["nobody"])).status_code == 403
    assert httpx.delete(f"{gw.url}/v1/transcriptions/{name}", headers=auth).status_code == 204
    gone = httpx.get(f"{gw.url}/v1/transcriptions/{name}", headers=auth)
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"


def test_an_api_key_acts_as_its_mapped_identity_in_its_namespace_only(gateway_env, speech_dir):
    gw, ns, callers = gateway_env["gateway"], gateway_env["namespace"], gateway_env["callers"]
    key = "ks-test-" + "k" * 32
    user = "kubescribe:apikey:ci"
    gateway_env["keys_file"].write_text(json.dumps(
        {"ci": {"sha256": hashlib.sha256(key.encode()).hexdigest(), "namespace": ns, "user": user}}))
    audio = (speech_dir / "fox.wav").read_bytes()
    url = f"{gw.url}/v1/audio/transcriptions"
    refused = httpx.post(url, files={"file": ("fox.wav", audio)}, data={"model": "whisper-1"}, headers=_bearer(key))
    assert refused.status_code == 403 and user in refused.json()["error"]["message"]
    callers.bind_user(user, [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get"]}])
    ok = httpx.post(url, files={"file": ("fox.wav", audio)}, data={"model": "whisper-1"}, headers=_bearer(key),
                    timeout=300)
    assert ok.status_code == 200 and wer(SENTENCES["fox"], ok.json()["text"]) <= 0.25
    other = httpx.post(url, files={"file": ("fox.wav", audio)}, data={"model": "whisper-1"},
                       headers=_bearer(key, **{"X-Kubescribe-Namespace": "default"}))
    assert other.status_code == 403 and "bound to namespace" in other.json()["error"]["message"]


def test_readyz_checks_redis_and_the_api_server(gateway_env):
    r = httpx.get(f"{gateway_env['gateway'].url}/readyz")
    assert r.status_code == 200 and r.json() == {"ok": True, "redis": "ok", "apiserver": "ok"}, r.text
    assert httpx.get(f"{gateway_env['gateway'].url}/health").json()["status"] == "ok"


def test_prometheus_scrapes_the_gateway_and_every_gateway_panel_has_data(gateway_env, prometheus_factory, speech_dir):
    """The dashboard's gateway row, evaluated by a real Prometheus on this module's traffic."""
    import re

    from tests.test_monitoring import INSTALL, panel_queries

    gw = gateway_env["gateway"]
    prom = prometheus_factory([(f"127.0.0.1:{gw.metrics_port}", {"component": "gateway", **INSTALL})])
    prom.wait_for_targets_up()
    prom.wait_for('sum(kubescribe_gateway_requests_total{component="gateway"})',
                  lambda r: r and float(r[0]["value"][1]) > 0, timeout=30)
    # Rates need traffic between two scrapes: one more upload (a cache hit) after the first.
    r = httpx.post(f"{gw.url}/v1/audio/transcriptions", files={"file": ("fox.wav", (speech_dir / "fox.wav").read_bytes())},
                   data={"model": "whisper-1"}, headers=_bearer(gateway_env["writer"]), timeout=300)
    assert r.status_code == 200, r.text
    for family in ("upload_bytes", "request_duration_seconds"):
        prom.wait_for(f'sum(rate(kubescribe_gateway_{family}_count{{component="gateway"}}[10m]))',
                      lambda r: r and float(r[0]["value"][1]) > 0, timeout=30)
    prom.wait_for_scrapes(2)  # the last upload scraped, and one scrape more for rates
    gateway_panels = [(t, e) for t, e in panel_queries() if 'component="gateway"' in e]
    assert len({t for t, _ in gateway_panels}) == 5
    for title, expr in gateway_panels:
        result = prom.query(expr)
        assert result, f"panel {title!r}: no data for {expr}"
        assert any(re.match(r"^-?[0-9.e+]+$", s["value"][1]) and s["value"][1] != "NaN" for s in result) or \
            "in_flight" in expr, f"panel {title!r}: only NaN: {result}"
