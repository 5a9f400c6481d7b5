"""The runner on real faster-whisper (tiny.en) and a real redis-server."""

import json
import os
import subprocess
import sys

import pytest

from kubescribe.metrics import Metrics
from kubescribe.models import parse_spec
from kubescribe.runner.engine import Engine
from kubescribe.outcomes import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT
from kubescribe.runner.task import TaskError, run_task
from kubescribe.store import Store
from harness.envtest import free_port
from harness.speech import SENTENCES, wer


def spec_for(key, **extra):
    return parse_spec({"audio": {"redisKey": key}, "device": "cpu", **extra})


def test_transcribes_speech_with_low_word_error_rate(redis_store, speech_dir, engine):
    for name, text in SENTENCES.items():
        key = redis_store.put_audio((speech_dir / f"{name}.wav").read_bytes())
        outcome = run_task(redis_store, engine, spec_for(key))
        assert not outcome.cached
        assert outcome.result["language"] == "en"
        assert wer(text, outcome.result["text"]) <= 0.25, (text, outcome.result["text"])
        assert outcome.result["segments"][0]["end"] > outcome.result["segments"][0]["start"]
        assert redis_store.read_result_key(outcome.result_key)["text"] == outcome.result["text"]


def test_word_timestamps_vad_and_prompt(redis_store, speech_dir, engine):
    key = redis_store.put_audio((speech_dir / "fox.wav").read_bytes())
    out = run_task(redis_store, engine, spec_for(key, wordTimestamps=True, vad=True, beamSize=1,
                                                    initialPrompt="A sentence about a fox."))
    words = [w for s in out.result["segments"] for w in s.get("words", [])]
    assert any(w["word"].strip(".,").lower() == "fox" for w in words)
    assert all(w["end"] >= w["start"] for w in words)
    assert out.result["parameters"]["vad"] is True


def test_batched_pipeline_matches_sequential_words(redis_store, speech_dir, engine):
    key = redis_store.put_audio((speech_dir / "weather.wav").read_bytes())
    seq = run_task(redis_store, engine, spec_for(key, beamSize=1))
    bat = run_task(redis_store, engine, spec_for(key, beamSize=1, decoding="batched", batchSize=4))
    assert bat.result["decoding"]["mode"] == "batched" and seq.result["decoding"]["mode"] == "sequential"
    assert bat.cache_key != seq.cache_key
    assert wer(seq.result["text"], bat.result["text"]) <= 0.2


def test_second_identical_request_is_served_from_cache_without_a_model(redis_server, speech_dir):
    client = redis_server.client()
    client.flushdb()
    store = Store(client)
    key = store.put_audio((speech_dir / "fox.wav").read_bytes())
    first = run_task(store, Engine(), spec_for(key))
    fresh_engine = Engine()
    metrics = Metrics()
    second = run_task(Store(redis_server.client(), metrics=metrics), fresh_engine, spec_for(key, priority=5))
    assert second.cached and second.result == first.result
    assert fresh_engine.loads == 0
    assert metrics.registry.get_sample_value(
        "kubescribe_cache_operations_total", {"operation": "get", "result": "hit"}) == 1
    # cache disabled: transcribed again, and a model is loaded
    third = run_task(store, fresh_engine, spec_for(key, cache={"enabled": False}))
    assert not third.cached and fresh_engine.loads == 1


def test_memory_is_released_after_unload(engine, speech_dir, redis_store):
    key = redis_store.put_audio((speech_dir / "fox.wav").read_bytes())
    run_task(redis_store, engine, spec_for(key, cache={"enabled": False}))
    report = engine.unload()
    assert report["rss_after"] <= report["rss_before"]
    assert engine._models == {}


BAD_INPUTS = {
    "empty": b"",
    "non_audio": b"%PDF-1.7\n" + b"lorem ipsum " * 500,
    "corrupt": b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000),
    "header_only": None,  # filled from a real WAV below
    "truncated": None,
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_audio_is_a_final_error_with_a_clear_reason(kind, redis_store, speech_dir, engine):
    data = BAD_INPUTS[kind]
    wav = (speech_dir / "fox.wav").read_bytes()
    if kind == "header_only":
        data = wav[:44]
    elif kind == "truncated":
        data = wav[:30]
    if not data:
        with pytest.raises(ValueError, match="empty"):
            redis_store.put_audio(data)
        redis_store.client.set("kubescribe:audio:" + "e" * 64, b"")
        key = "kubescribe:audio:" + "e" * 64
    else:
        key = redis_store.put_audio(data)
    with pytest.raises(TaskError) as err:
        run_task(redis_store, engine, spec_for(key))
    assert err.value.final
    assert err.value.reason in ("BadAudio", "AudioNotFound")
    assert "audio" in err.value.message


def run_runner(env_extra, tmp_path, spec):
    term = tmp_path / "termination-log"
    env = dict(os.environ, KUBESCRIBE_SPEC=json.dumps(spec), KUBESCRIBE_TERMINATION_LOG=str(term),
               KUBESCRIBE_METRICS_PORT=str(free_port()), **env_extra)
    proc = subprocess.run([sys.executable, "-m", "kubescribe.runner.main", "run"], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, json.loads(term.read_text()) if term.exists() else None


def test_runner_process_writes_result_and_termination_message(redis_server, speech_dir, tmp_path):
    store = Store(redis_server.client())
    key = store.put_audio((speech_dir / "library.wav").read_bytes())
    spec = {"audio": {"redisKey": key}, "device": "cpu", "cache": {"enabled": False}}
    proc, summary = run_runner({"KUBESCRIBE_REDIS_URL": redis_server.url}, tmp_path, spec)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert summary["ok"] and not summary["cached"] and summary["language"] == "en"
    assert summary["audioDurationSeconds"] > 1 and summary["realtimeFactor"] > 0
    assert wer(SENTENCES["library"], store.read_result_key(summary["resultKey"])["text"]) <= 0.25


@pytest.mark.parametrize(
    "case, expected_code, reason",
    [
        ("missing_key", EXIT_BAD_INPUT, "AudioNotFound"),
        ("non_audio", EXIT_BAD_INPUT, "BadAudio"),
        ("invalid_spec", EXIT_BAD_INPUT, "InvalidSpec"),
        ("redis_down", EXIT_TRANSIENT, "RedisUnavailable"),
        ("bad_model", EXIT_BAD_INPUT, "ModelNotFound"),
        ("metadata_url", EXIT_BAD_INPUT, "AudioURLForbidden"),
    ],
)
def test_runner_exit_codes(case, expected_code, reason, redis_server, tmp_path):
    store = Store(redis_server.client())
    url = redis_server.url
    spec = {"audio": {"redisKey": "kubescribe:audio:" + "f" * 64}, "device": "cpu"}
    env = {"KUBESCRIBE_OFFLINE": "1"}
    if case == "non_audio":
        spec["audio"]["redisKey"] = store.put_audio(b"this is plain text, not audio at all" * 20)
    elif case == "invalid_spec":
        spec["beamSize"] = 99
    elif case == "redis_down":
        url = f"redis://127.0.0.1:{free_port()}/0"
    elif case == "bad_model":
        spec["audio"]["redisKey"] = store.put_audio(b"RIFF")
        spec["model"] = "no-such-model-anywhere"
        spec["cache"] = {"enabled": False}
        from pathlib import Path
        from harness.speech import speak
        spec["audio"]["redisKey"] = store.put_audio(speak("hello", Path(tmp_path) / "h.wav").read_bytes())
    elif case == "metadata_url":  # refused before any socket is opened
        spec["audio"] = {"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}
        env["KUBERNETES_SERVICE_HOST"] = ""  # no API server lookup from the test machine
    proc, summary = run_runner({"KUBESCRIBE_REDIS_URL": url, **env}, tmp_path, spec)
    assert proc.returncode == expected_code, proc.stderr
    assert summary["ok"] is False and summary["reason"] == reason
    assert summary["message"]
    if case == "metadata_url":
        assert summary["final"] is True and "169.254.169.254 is the cloud metadata service" in summary["message"]
    if case == "bad_model":  # offline: the message names what is there and the command that fixes it
        assert summary["final"] is True and "available: tiny.en" in summary["message"]
        assert "kubescribe models pull no-such-model-anywhere --from" in summary["message"]


def test_runner_over_rediss_with_a_private_ca(speech_dir, tmp_path):
    from harness.redis_servers import TlsRedisServer

    server = TlsRedisServer(tmp_path, password="tls-secret").start()
    try:
        store = Store(server.client())
        key = store.put_audio((speech_dir / "fox.wav").read_bytes())
        proc, summary = run_runner({"KUBESCRIBE_REDIS_URL": server.url, "KUBESCRIBE_REDIS_PASSWORD": "tls-secret",
                                    "KUBESCRIBE_REDIS_CA_FILE": str(server.certs["ca"])},
                                   tmp_path, {"audio": {"redisKey": key}, "device": "cpu"})
        assert proc.returncode == EXIT_OK, proc.stderr
        assert wer(SENTENCES["fox"], store.read_result_key(summary["resultKey"])["text"]) <= 0.25
    finally:
        server.stop()
