"""Audio read from a bucket and transcripts delivered to one: a real S3 server (versitygw)
behind a real Redis.

``spec.audio.s3`` and an ``s3://`` audio URL are one thing; the object's size is checked
before a byte is read; a missing key, a missing bucket and refused credentials each end
with their own reason; ``spec.output.s3`` gets json and every asked format, named after
the request, on a transcription and on a cache hit alike, and an object store outage
while writing them is a transient failure the Job retries.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from kubescribe.crd import crd
from kubescribe.models import AudioSource, OutputSpec, S3Object, parse_spec
from kubescribe.objectstore import ObjectStore
from kubescribe.operator import intake
from kubescribe.operator.intake import CacheAnswer
from kubescribe.outcomes import RunnerOutcome
from kubescribe.runner import buckets
from kubescribe.runner.fetch import Audio
from kubescribe.runner.task import Prepared, TaskError, TaskOutcome, fetch_audio, prepare, run_task, store_result
from kubescribe.settings import AudioInputSettings, ObjectStoreSettings
from kubescribe.cache_layout import Owner, cache_key
from kubescribe.store import Store
from harness.envtest.s3 import S3Server
from harness.speech import SENTENCES, wer

AUDIO = b"RIFF" + bytes(range(256)) * 40
SHA = hashlib.sha256(AUDIO).hexdigest()
RESULT = {"text": "The quick brown fox.", "language": "en", "audio_duration_seconds": 2.0,
          "audio_sha256": SHA, "segments": [{"id": 1, "start": 0.0, "end": 2.0, "text": "The quick brown fox."}]}
OWNER = Owner("uid-1", "team-a/meeting")


def spec(audio: dict, **extra):
    return parse_spec({"audio": audio, "device": "cpu", **extra})


# --------------------------------------------------------------------------- no server


def test_an_s3_url_and_audio_s3_name_the_same_object():
    by_field = spec({"s3": {"bucket": "team-audio", "key": "2026/call 1.wav"}}).audio.s3_object()
    assert by_field == S3Object(bucket="team-audio", key="2026/call 1.wav")
    assert spec({"url": "s3://team-audio/2026/call.wav"}).audio.s3_object() == S3Object(
        bucket="team-audio", key="2026/call.wav")
    # Literal, as the AWS CLI reads it: no percent-decoding, ? and # belong to the key.
    assert spec({"url": "s3://b.example/a%20b?v=1#x"}).audio.s3_object().key == "a%20b?v=1#x"
    assert str(spec({"url": "s3://team-audio/k.wav"}).audio.s3_object()) == "s3://team-audio/k.wav"
    assert spec({"url": "https://example.com/a.wav"}).audio.s3_object() is None
    assert spec({"redisKey": "kubescribe:audio:" + "a" * 64}).audio.s3_object() is None
    assert spec({"s3": {"bucket": "bkt", "key": "k"}, "sha256": SHA}).audio.sha256 == SHA


def _audio_rules():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return {r["message"]: r["rule"] for r in schema["properties"]["spec"]["properties"]["audio"]
            ["x-kubernetes-validations"]}


@pytest.mark.parametrize("audio, message", [
    ({}, "set exactly one of audio.redisKey, audio.url and audio.s3"),
    ({"redisKey": "k", "url": "https://x/y.wav"}, "set exactly one of audio.redisKey, audio.url and audio.s3"),
    ({"url": "s3://bkt/k", "s3": {"bucket": "bkt", "key": "k"}},
     "set exactly one of audio.redisKey, audio.url and audio.s3"),
    ({"redisKey": "k", "url": "s3://bkt/k", "s3": {"bucket": "bkt", "key": "k"}},
     "set exactly one of audio.redisKey, audio.url and audio.s3"),
    ({"url": "s3://bkt/" + "k" * 1025}, "the key of an s3:// audio.url is at most 1024 characters"),
])
def test_every_cel_rule_on_audio_has_its_pydantic_twin(audio, message):
    """The API server refuses with the CEL rule's message what the operator refuses with
    the validator's: the same words, so a user reads one message whichever caught it."""
    assert message in _audio_rules()
    with pytest.raises(ValueError, match=re.escape(message)):
        AudioSource.model_validate(audio)


def test_valid_sources_pass_both_rules():
    assert len(_audio_rules()) == 2
    for audio in ({"redisKey": "k"}, {"url": "https://x/y"}, {"url": "s3://bkt/" + "k" * 1024},
                  {"s3": {"bucket": "bkt", "key": "k" * 1024}}):
        AudioSource.model_validate(audio)


def test_output_names_are_unique_per_namespace_and_name():
    out = OutputSpec.model_validate({"s3": {"bucket": "team-out", "prefix": "transcripts/"}})
    a = out.keys("team-a", "meeting", ["srt", "json", "txt"])
    assert list(a.items()) == [("json", "transcripts/team-a/meeting.json"), ("srt", "transcripts/team-a/meeting.srt"),
                               ("txt", "transcripts/team-a/meeting.txt")]
    assert set(a.values()).isdisjoint(out.keys("team-b", "meeting", ["srt"]).values())


def test_the_largest_outcome_with_outputs_fits_a_termination_message():
    """Four files under the longest prefix, namespace and name the API allows, beside a
    200-character preview of four-byte characters: under Kubernetes' 4096 bytes."""
    out = OutputSpec.model_validate({"s3": {"bucket": "b" * 63, "prefix": "p" * 256}})
    urls = [f"s3://{'b' * 63}/{k}" for k in out.keys("n" * 63, "r" * 253, ["json", "txt", "srt", "vtt"]).values()]
    result = dict(RESULT, text="\U0001F600" * 300, language_probability=0.987654321, processing_seconds=12345.678,
                  realtime_factor=0.123456789, decoding={"mode": "sequential"})
    outcome = RunnerOutcome.from_result(result, "c" * 64, "kubescribe:result:" + "c" * 64, cached=True,
                                        size_bytes=512 * 1024 * 1024, cache_lookup="miss")
    text = outcome.model_copy(update={"outputs": urls}).to_json()
    assert len(text.encode()) <= 4096, len(text.encode())


def _request(**status):
    return {"apiVersion": "kubescribe.io/v1alpha1", "kind": "TranscriptionRequest",
            "metadata": {"name": "meeting", "namespace": "team-a", "uid": "uid-1", "generation": 1,
                         "creationTimestamp": "2026-01-01T11:59:50Z"},
            "spec": {"audio": {"s3": {"bucket": "team-audio", "key": "a.wav"}, "sha256": SHA},
                     "output": {"s3": {"bucket": "team-out", "prefix": "t/"}}},
            "status": status}


def test_the_operator_leaves_a_cache_hit_with_outputs_to_a_runner():
    """Only a runner writes spec.output's files, so the operator does not answer such a
    request from the cache itself, and leaves the lookup for the runner to count."""
    key = "c" * 64
    body = _request()
    s = parse_spec(body["spec"])
    hit = CacheAnswer("hit", result=RESULT)
    seen = intake.on_seen(body, s, key, SHA, hit)
    assert seen.status["phase"] == "Queued" and seen.finished is None and seen.cache_lookup is None
    queued = _request(phase="Queued", cacheKey=key)
    t = intake.on_admitted(queued, s, hit, job_name="job-1")
    assert t.status["phase"] == "Running" and t.status["jobName"] == "job-1" and t.cache_lookup is None
    without = parse_spec({k: v for k, v in body["spec"].items() if k != "output"})
    assert intake.on_seen(body, without, key, SHA, hit).status["phase"] == "Succeeded"


# --------------------------------------------------------------------------- versitygw + Redis


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    """The server's credentials in the standard AWS variables, as a Secret would set
    them; no metadata endpoint is ever asked."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


def client_for(server) -> ObjectStore:
    """A client for requests' buckets, as a runner of an install with no bucket has."""
    return ObjectStore.for_requests(ObjectStoreSettings(s3_bucket="", s3_endpoint=server.endpoint,
                                                        s3_path_style=True))


@pytest.fixture
def objects(aws_env) -> ObjectStore:
    return client_for(aws_env)


def test_audio_s3_and_an_s3_url_are_fetched(redis_store, objects, s3_bucket, aws_env, monkeypatch):
    objects.put("in/call.wav", AUDIO, bucket=s3_bucket)
    by_field = spec({"s3": {"bucket": s3_bucket, "key": "in/call.wav"}, "sha256": SHA})
    with fetch_audio(redis_store, by_field, objects=objects) as audio:
        assert (audio.size, audio.sha256) == (len(AUDIO), SHA) and audio.file.read() == AUDIO
    assert objects.bucket is None, "an install without a bucket still reads requests' buckets"
    # No client given: the runner makes one from its environment, as in a pod.
    monkeypatch.setenv("KUBESCRIBE_S3_ENDPOINT", aws_env.endpoint)
    monkeypatch.setenv("KUBESCRIBE_S3_PATH_STYLE", "true")
    monkeypatch.setenv("KUBESCRIBE_S3_BUCKET", "")
    with fetch_audio(redis_store, spec({"url": f"s3://{s3_bucket}/in/call.wav"})) as audio:
        assert audio.file.read() == AUDIO
    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"url": f"s3://{s3_bucket}/in/call.wav", "sha256": "0" * 64}), objects=objects)
    assert err.value.reason == "AudioChecksumMismatch"


def test_audio_over_the_limit_is_refused_from_its_head_without_a_download(redis_store, objects, s3_bucket,
                                                                          monkeypatch):
    objects.put("big.wav", AUDIO, bucket=s3_bucket)
    opened = []
    monkeypatch.setattr(objects, "open", lambda *a, **kw: opened.append(a) or pytest.fail("downloaded"))
    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"s3": {"bucket": s3_bucket, "key": "big.wav"}}),
                    AudioInputSettings(max_audio_bytes=100), objects=objects)
    assert err.value.reason == "AudioTooLarge" and err.value.final and not opened
    assert err.value.message == (f"s3://{s3_bucket}/big.wav is {len(AUDIO)} bytes, over the 100-byte limit "
                                 "(KUBESCRIBE_MAX_AUDIO_BYTES)")


def test_an_object_that_grows_past_its_head_is_cut_off_while_read(s3_bucket, objects, monkeypatch):
    objects.put("grows.wav", AUDIO, bucket=s3_bucket)
    monkeypatch.setattr(objects, "size", lambda key, bucket=None: 10)  # replaced after the HEAD
    with pytest.raises(buckets.TooLarge, match="grew over the 100-byte limit"):
        buckets.stream_audio(objects, S3Object(bucket=s3_bucket, key="grows.wav"), 100).read(1)


def test_a_missing_key_a_missing_bucket_and_refused_credentials_have_their_reasons(
        redis_store, objects, s3_bucket, aws_env, monkeypatch):
    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"s3": {"bucket": s3_bucket, "key": "none.wav"}}), objects=objects)
    assert err.value.reason == "AudioNotFound" and err.value.final
    assert err.value.message == f"s3://{s3_bucket}/none.wav does not exist: upload it or fix spec.audio.s3.key"
    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"url": f"s3://{s3_bucket}/none.wav"}), objects=objects)
    assert err.value.message.endswith("fix spec.audio.url")

    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"s3": {"bucket": "no-such-bucket-here", "key": "a.wav"}}), objects=objects)
    assert err.value.reason == "ObjectStoreBucketMissing" and err.value.final
    assert "no-such-bucket-here" in err.value.message and "the bucket does not exist" in err.value.message

    objects.put("a.wav", AUDIO, bucket=s3_bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(TaskError) as err:
        fetch_audio(redis_store, spec({"s3": {"bucket": s3_bucket, "key": "a.wav"}}), objects=client_for(aws_env))
    assert err.value.reason == "ObjectStoreAccessDenied" and err.value.final
    assert "check the credentials" in err.value.message


def _prepared(s, owner=OWNER) -> Prepared:
    return Prepared(s, cache_key(SHA, s.output_params()), Audio.of_bytes(AUDIO), None, owner)


def test_outputs_are_written_after_the_result_and_named_in_the_outcome(redis_store, objects, s3_bucket):
    s = spec({"s3": {"bucket": s3_bucket, "key": "a.wav"}}, formats=["srt", "txt"],
             output={"s3": {"bucket": s3_bucket, "prefix": "transcripts/"}})
    done = store_result(redis_store, _prepared(s), RESULT, objects=objects)
    base = f"s3://{s3_bucket}/transcripts/team-a/meeting"
    assert done.outcome.outputs == [f"{base}.json", f"{base}.srt", f"{base}.txt"]
    assert redis_store.read_result_key(done.result_key) == RESULT, "stored first"
    assert json.loads(objects.get("transcripts/team-a/meeting.json", bucket=s3_bucket)) == RESULT
    assert objects.get("transcripts/team-a/meeting.srt", bucket=s3_bucket).decode().startswith(
        "1\n00:00:00,000 --> 00:00:02,000\nThe quick brown fox.")
    assert objects.get("transcripts/team-a/meeting.txt", bucket=s3_bucket).decode().strip() == RESULT["text"]
    assert objects.client.head_object(Bucket=s3_bucket, Key="transcripts/team-a/meeting.srt")[
        "ContentType"].startswith("application/x-subrip")
    # The same name in another namespace writes files of its own.
    other = store_result(redis_store, _prepared(s, Owner("uid-2", "team-b/meeting")), RESULT, objects=objects)
    assert other.outcome.outputs[0] == f"s3://{s3_bucket}/transcripts/team-b/meeting.json"
    assert json.loads(RunnerOutcome.model_validate_json(done.outcome.to_json()).to_json())["outputs"] == \
        done.outcome.outputs, "camelCase on the wire, read back unchanged"
    # Without spec.output nothing is written and the outcome names nothing.
    plain = store_result(redis_store, _prepared(spec({"redisKey": "k"})), RESULT, objects=objects)
    assert plain.outcome.outputs is None


def test_a_cache_hit_writes_the_outputs_too_and_counts_its_lookup(redis_store, objects, s3_bucket):
    s = spec({"s3": {"bucket": s3_bucket, "key": "never-read.wav"}, "sha256": SHA}, formats=["vtt"],
             output={"s3": {"bucket": s3_bucket, "prefix": ""}})
    redis_store.put_result(cache_key(SHA, s.output_params()), RESULT)
    before = redis_store.stats(count_keys=False)
    # As a Job's runner calls it: the operator counted no lookup for a request with outputs.
    hit = prepare(redis_store, s, count_known_lookup=False, owner=OWNER, objects=objects)
    assert isinstance(hit, TaskOutcome) and hit.cached and hit.outcome.cache_lookup == "hit"
    assert hit.outcome.outputs == [f"s3://{s3_bucket}/team-a/meeting.json", f"s3://{s3_bucket}/team-a/meeting.vtt"]
    assert objects.get("team-a/meeting.vtt", bucket=s3_bucket).decode().startswith("WEBVTT")
    assert redis_store.stats(count_keys=False).hits == before.hits + 1


def test_outputs_need_the_requests_name_and_say_so_before_any_work(redis_store, objects, s3_bucket):
    s = spec({"redisKey": "kubescribe:audio:never-read"}, output={"s3": {"bucket": s3_bucket}})
    for call in (lambda: prepare(redis_store, s, objects=objects),
                 lambda: store_result(redis_store, _prepared(s, owner=None), RESULT, objects=objects)):
        with pytest.raises(TaskError) as err:
            call()
        assert err.value.reason == "InvalidSpec" and "KUBESCRIBE_REQUEST" in err.value.message


def test_an_object_store_outage_while_writing_outputs_is_retried_until_they_are_written(
        redis_store, s3_bucket, aws_env, tmp_path):
    """The result is kept, the task fails transiently (the Job retries, the request stays
    Running), and the retry, a cache hit, writes the files."""
    with S3Server(tmp_path / "s3") as own:  # the shared server stays up for other tests
        own_env = own.env()
        objects = ObjectStore(own.client(access_key=own_env["AWS_ACCESS_KEY_ID"],
                                          secret_key=own_env["AWS_SECRET_ACCESS_KEY"]), None)
        bucket = own.create_bucket("out")
        s = spec({"s3": {"bucket": bucket, "key": "a.wav"}, "sha256": SHA},
                 output={"s3": {"bucket": bucket, "prefix": "t/"}})
        own.stop()
        with pytest.raises(TaskError) as err:
            store_result(redis_store, _prepared(s), RESULT, objects=objects)
        assert err.value.reason == "ObjectStoreUnavailable" and not err.value.final
        assert err.value.outcome().exit_code == 75
        assert "PUT s3://out/t/team-a/meeting.json" in err.value.message
        own.start()
        retry = prepare(redis_store, s, count_known_lookup=False, owner=OWNER, objects=objects)
        assert isinstance(retry, TaskOutcome) and retry.cached
        assert retry.outcome.outputs == ["s3://out/t/team-a/meeting.json"]
        assert json.loads(objects.get("t/team-a/meeting.json", bucket=bucket)) == RESULT


def test_a_real_transcription_reads_its_audio_from_a_bucket_and_delivers_its_files(
        redis_server, aws_env, s3_bucket, speech_dir, engine):
    """One run through run_task with tiny.en: the install keeps results in its own bucket,
    and the same client reads the user's audio and writes the user's files."""
    install = ObjectStore.from_settings(ObjectStoreSettings(s3_bucket=s3_bucket, s3_endpoint=aws_env.endpoint,
                                                            s3_path_style=True, s3_prefix="ks/"))
    client = redis_server.client()
    client.flushdb()
    store = Store(client, objects=install)
    audio = (speech_dir / "fox.wav").read_bytes()
    install.put("uploads/fox.wav", audio, bucket=s3_bucket)
    s = spec({"url": f"s3://{s3_bucket}/uploads/fox.wav"}, formats=["txt", "srt"],
             output={"s3": {"bucket": s3_bucket, "prefix": "out/"}})
    done = run_task(store, engine, s, count_known_lookup=False, owner=Owner("uid-9", "team-a/fox"))
    assert not done.cached and wer(SENTENCES["fox"], done.result["text"]) <= 0.25, done.result["text"]
    assert done.outcome.outputs == [f"s3://{s3_bucket}/out/team-a/fox.{f}" for f in ("json", "txt", "srt")]
    assert install.get("out/team-a/fox.txt", bucket=s3_bucket).decode().strip() == done.result["text"].strip()
    assert install.get_result(done.cache_key) is not None, "the install's copy is kept as well"
