"""Spec validation: the messages a user sees for a bad TranscriptionRequest."""

import pytest

from kubescribe.models import InvalidSpec, TranscriptionSpec, parse_spec

KEY = "kubescribe:audio:" + "a" * 64


def test_defaults_fill_a_minimal_spec():
    spec = parse_spec({"audio": {"redisKey": KEY}})
    assert spec.model == "tiny.en"
    assert spec.task == "transcribe"
    assert spec.beam_size == 5
    assert spec.cache.ttl_seconds == 86400
    assert spec.effective_gpus == 1
    assert parse_spec({"audio": {"redisKey": KEY}, "device": "cpu"}).effective_gpus == 0


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"audio": {}}, "set exactly one of audio.redisKey, audio.url and audio.s3"),
        ({"audio": {"redisKey": KEY, "url": "https://x/y.wav"}}, "set exactly one"),
        ({"audio": {"redisKey": KEY}, "beamSize": 50}, "spec.beamSize: Input should be less than or equal to 20 (got 50)"),
        ({"audio": {"redisKey": KEY}, "bogus": 1}, "spec.bogus: unknown field"),
        ({"audio": {"redisKey": KEY}, "task": "summarize"}, "spec.task"),
        ({"audio": {"redisKey": KEY}, "device": "cpu", "gpus": 2}, "device cpu cannot request GPUs"),
        ({"audio": {"redisKey": KEY}, "device": "cuda", "gpus": 0}, "device cuda needs at least one GPU"),
        ({"audio": {"redisKey": KEY}, "task": "translate"}, "English-only models (*.en) cannot translate"),
        ({"audio": {"redisKey": KEY}, "language": "de"}, "English-only models (*.en) only transcribe English"),
        ({"audio": {"redisKey": KEY}, "initialPrompt": "x" * 5000}, "spec.initialPrompt"),
        ({"audio": {"url": "ftp://host/file"}}, "spec.audio.url"),
        ({"audio": {"redisKey": KEY, "sha256": "XYZ"}}, "spec.audio.sha256"),
        ({"audio": {"url": "s3://bkt/k.wav", "s3": {"bucket": "bkt", "key": "k"}}}, "set exactly one"),
        ({"audio": {"redisKey": KEY, "s3": {"bucket": "bkt", "key": "k"}}}, "set exactly one"),
        ({"audio": {"s3": {"bucket": "Bad_Bucket", "key": "k"}}}, "spec.audio.s3.bucket"),
        ({"audio": {"s3": {"bucket": "bkt", "key": ""}}}, "spec.audio.s3.key"),
        ({"audio": {"url": "s3://bkt"}}, "spec.audio.url"),
        ({"audio": {"url": "s3://Bad_Bucket/k"}}, "spec.audio.url"),
        ({"audio": {"url": "s3://bkt/" + "k" * 1025}}, "the key of an s3:// audio.url is at most 1024 characters"),
        ({"audio": {"redisKey": KEY}, "output": {"s3": {"bucket": "bkt", "prefix": "p" * 257}}},
         "spec.output.s3.prefix"),
        ({"audio": {"redisKey": KEY}, "output": {"s3": {"bucket": "bkt", "prefix": "a b/"}}}, "spec.output.s3.prefix"),
        ({"audio": {"redisKey": KEY}, "output": {"s3": {"prefix": "p/"}}}, "spec.output.s3.bucket"),
        ({}, "spec.audio: Field required"),
    ],
)
def test_invalid_specs_name_the_field_and_the_rule(raw, expected):
    with pytest.raises(InvalidSpec) as err:
        parse_spec(raw)
    assert expected in str(err.value)


def test_output_params_cover_every_output_changing_field():
    """A field that changes the words must change the cache key; one that does not, must not."""
    fields = set(TranscriptionSpec.model_fields)
    changes_output = set(parse_spec({"audio": {"redisKey": KEY}}).output_params())
    operational = {"audio", "formats", "priority", "queue_name", "device", "gpus", "timeout_seconds", "retries",
                   "cache", "output", "ttl_seconds_after_finished", "notify"}
    assert fields == changes_output | operational, fields ^ (changes_output | operational)
