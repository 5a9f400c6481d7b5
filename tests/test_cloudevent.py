"""The notification message as a receiver sees it: parsed by the ``cloudevents`` SDK and
verified with ``standardwebhooks``, in both HTTP content modes; a changed byte, header or
key fails the verification."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook, WebhookVerificationError

from kubescribe.operator.cloudevent import signed_message
from kubescribe.operator.notify_plan import event_id

KEY = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another key, another receiver!!!").decode()


def finished(phase: str, **status) -> dict:
    return {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
            "metadata": {"namespace": "media", "name": "episode-12", "uid": "0f1e", "generation": 1},
            "status": {"phase": phase, "completedAt": "2026-12-02T06:00:00Z", **status}}


SUCCEEDED = finished("Succeeded", reason="Transcribed", language="en", audioDurationSeconds=12.5,
                     processingSeconds=1.5, cached=False, resultKey="kubescribe:result:abc",
                     textPreview="Hello there", outputs=["s3://b/media/episode-12.json"])
FAILED = finished("Failed", reason="AudioNotFound", message="no audio at kubescribe:audio:x")


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_a_succeeded_event_parses_and_verifies(mode):
    eid = event_id("0f1e", 1, "Succeeded")
    msg = signed_message(SUCCEEDED, eid, KEY, mode)
    assert Webhook(KEY).verify(msg.body, msg.headers, json_parse=False) is None
    event = from_http_event(HTTPMessage(msg.headers, msg.body))
    assert event.get_type() == "io.kubescribe.transcription.succeeded"
    assert event.get_source() == "/apis/kubescribe.io/v1alpha1/namespaces/media/transcriptionrequests"
    assert event.get_subject() == "episode-12" and event.get_id() == eid == msg.headers["webhook-id"]
    assert event.get_time() == datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    assert data["phase"] == "Succeeded" and data["cached"] is False and data["language"] == "en"
    assert data["resultPath"] == "/v1/transcriptions/episode-12/result"
    assert data["resultKey"] == "kubescribe:result:abc" and data["outputs"] == ["s3://b/media/episode-12.json"]
    assert data["textPreview"] == "Hello there" and data["audioDurationSeconds"] == 12.5
    if mode == "binary":
        assert msg.headers["ce-id"] == eid and msg.headers["content-type"] == "application/json"
    else:
        assert msg.headers["content-type"].startswith("application/cloudevents+json")


def test_a_failed_event_says_why():
    msg = signed_message(FAILED, event_id("0f1e", 1, "Failed"), KEY)
    event = from_http_event(HTTPMessage(msg.headers, msg.body))
    assert event.get_type() == "io.kubescribe.transcription.failed"
    assert event.get_data()["reason"] == "AudioNotFound" and "resultPath" not in event.get_data()


def test_every_attempt_carries_the_same_event_and_a_fresh_timestamp():
    eid = event_id("0f1e", 1, "Succeeded")
    now = datetime.now(timezone.utc)
    first = signed_message(SUCCEEDED, eid, KEY, at=now - timedelta(seconds=60))
    second = signed_message(SUCCEEDED, eid, KEY, at=now)
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
    for msg in (first, second):
        Webhook(KEY).verify(msg.body, msg.headers)


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "key"])
def test_a_tampered_message_fails_verification(tamper):
    msg = signed_message(SUCCEEDED, event_id("0f1e", 1, "Succeeded"), KEY)
    body, headers, key = msg.body, dict(msg.headers), KEY
    if tamper == "body":
        body = body.replace(b"Hello there", b"Hello thera")
    elif tamper == "id":
        headers["webhook-id"] = event_id("0f1e", 2, "Succeeded")
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    else:
        key = OTHER
    with pytest.raises(WebhookVerificationError):
        Webhook(key).verify(body, headers)


def test_a_message_signed_long_ago_is_refused_by_the_receiver():
    old = signed_message(SUCCEEDED, "id", KEY, at=datetime.now(timezone.utc) - timedelta(hours=1))
    with pytest.raises(WebhookVerificationError):
        Webhook(KEY).verify(old.body, old.headers)


def test_the_readme_receiver_verifies_and_parses_a_delivery(tmp_path):
    """The README's receiver, run as written (on a free port), given a signed delivery."""
    import os
    import re
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from harness.envtest import wait_for

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("A receiver, with the same two packages"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16, "the README's receiver should stay about ten lines"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "receiver.py"
    script.write_text(code.replace('HTTPServer(("", 8000)', f'HTTPServer(("127.0.0.1", {port})'))
    log = tmp_path / "receiver.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-u", str(script)], stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, KEY=KEY))
    try:
        msg = signed_message(SUCCEEDED, event_id("0f1e", 1, "Succeeded"), KEY)

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()  # exited: fail at once, with its output
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=30, description="the README receiver listening")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=msg.body, headers=msg.headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    printed = log.read_text()
    assert "io.kubescribe.transcription.succeeded episode-12" in printed and "Hello there" in printed, printed
