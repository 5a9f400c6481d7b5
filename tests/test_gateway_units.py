"""The gateway's decisions, without a server: content sniffing, OpenAI fields and
response shapes, the caller's namespace, the per-identity limit, and the analysis of a
transcript (shared with ``kubescribe analyze``)."""

from __future__ import annotations

import json

import pytest

from kubescribe.analysis import STOPWORDS, TOP_WORDS, analyze, words
from kubescribe.gateway import openai
from kubescribe.gateway.auth import ApiKeys, AuthError, Identity, bearer_token, namespace_for
from kubescribe.gateway.sniff import sniff_audio
from kubescribe.cache_layout import RESULT_PREFIX, analysis_key

RESULT = {
    "text": "The quick brown fox jumps. The fox sleeps.",
    "language": "en",
    "audio_duration_seconds": 10.0,
    "segments": [
        {"id": 0, "start": 0.0, "end": 2.0, "text": "The quick brown fox jumps.", "avg_logprob": -0.2,
         "no_speech_prob": 0.01, "words": [{"start": 0.0, "end": 0.3, "word": "The", "probability": 0.9},
                                           {"start": 0.3, "end": 0.8, "word": "quick", "probability": 0.9}]},
        {"id": 1, "start": 5.0, "end": 6.0, "text": "The fox sleeps.", "avg_logprob": -0.3, "no_speech_prob": 0.02},
    ],
}


# -- sniffing -------------------------------------------------------------------------------
@pytest.mark.parametrize("head,kind", [
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"), (b"ID3\x04\x00\x00\x00\x00", "mp3"), (b"\xff\xfb\x90\x64", "mp3"),
    (b"\xff\xf1\x50\x80", "aac"), (b"fLaC\x00\x00\x00\x22", "flac"), (b"OggS\x00\x02\x00\x00", "ogg"),
    (b"\x00\x00\x00\x20ftypM4A ", "mp4"), (b"\x1a\x45\xdf\xa3\x9f\x42", "webm"), (b"#!AMR\n", "amr"),
    (b"FORM\x00\x00\x00\x00AIFF", "aiff"),
])
def test_audio_containers_are_recognised(head, kind):
    assert sniff_audio(head + b"\0" * 64) == kind


@pytest.mark.parametrize("head", [
    b"<html><body>", b'{"text": "hello"}', b"%PDF-1.7\n", b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"hello world",
    b"RIFF\x24\x00\x00\x00WEBPVP8 ", b"\xff\xd8\xff\xe0", b"", b"abc",
])
def test_text_images_documents_and_archives_are_not_audio(head):
    assert sniff_audio(head) is None


# -- OpenAI fields --------------------------------------------------------------------------
AUDIO = {"redisKey": "kubescribe:audio:" + "a" * 64, "sha256": "a" * 64}


def test_whisper_1_maps_to_the_default_model_and_fields_become_the_spec():
    spec, fmt = openai.build_spec({"model": "whisper-1", "language": "EN", "prompt": "Kubernetes",
                                   "response_format": "verbose_json", "timestamp_granularities[]": ["word"]},
                                  task="transcribe", aliases={"whisper-1": "tiny.en"}, audio=AUDIO)
    assert fmt == "verbose_json"
    assert spec["model"] == "tiny.en" and spec["language"] == "en" and spec["initialPrompt"] == "Kubernetes"
    assert spec["wordTimestamps"] is True and spec["task"] == "transcribe" and spec["audio"] == AUDIO


def test_an_unknown_model_name_passes_through_and_json_is_the_default_format():
    spec, fmt = openai.build_spec({"model": "large-v3"}, task="translate", aliases={"whisper-1": "tiny.en"},
                                  audio=AUDIO)
    assert spec["model"] == "large-v3" and spec["task"] == "translate" and fmt == "json"
    assert spec["wordTimestamps"] is False


@pytest.mark.parametrize("fields,param", [
    ({"model": "whisper-1", "response_format": "docx"}, "response_format"),
    ({"model": "whisper-1", "temperature": "hot"}, "temperature"),
    ({"model": "whisper-1", "temperature": "1.5"}, "temperature"),
    ({"model": "whisper-1", "timestamp_granularities[]": ["char"], "response_format": "verbose_json"},
     "timestamp_granularities[]"),
    ({"model": "whisper-1", "timestamp_granularities[]": ["word"]}, "timestamp_granularities[]"),
    ({"model": "whisper-1", "stream": "true"}, "stream"),
    ({}, "model"),
])
def test_fields_openai_would_refuse_name_the_field(fields, param):
    with pytest.raises(openai.BadField) as err:
        openai.build_spec(fields, task="transcribe", aliases={}, audio=AUDIO)
    assert err.value.param == param


def test_response_shapes_follow_openai():
    body, media = openai.response(RESULT, "json")
    assert json.loads(body) == {"text": RESULT["text"]} and media == "application/json"
    text, media = openai.response(RESULT, "text")
    assert text == RESULT["text"] + "\n" and media.startswith("text/plain")
    srt, _ = openai.response(RESULT, "srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nThe quick brown fox jumps.\n\n2\n00:00:05,000")
    vtt, media = openai.response(RESULT, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n") and media.startswith("text/vtt")
    verbose = json.loads(openai.response(RESULT, "verbose_json", words=True)[0])
    assert verbose["task"] == "transcribe" and verbose["language"] == "english" and verbose["duration"] == 10.0
    assert [s["start"] for s in verbose["segments"]] == [0.0, 5.0]
    assert set(verbose["segments"][0]) >= {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                           "avg_logprob", "compression_ratio", "no_speech_prob"}
    assert verbose["words"] == [{"word": "The", "start": 0.0, "end": 0.3}, {"word": "quick", "start": 0.3, "end": 0.8}]
    assert "words" not in json.loads(openai.response(RESULT, "verbose_json")[0])


def test_errors_have_openais_shape():
    assert openai.error_body("no", "invalid_request_error", "c", "file") == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "file", "code": "c"}}


# -- the caller -----------------------------------------------------------------------------
SA = Identity(user="system:serviceaccount:team-a:app")
USER = Identity(user="alice", groups=("devs",))
KEY = Identity(user="kubescribe:apikey:ci", namespace="team-b", via="apikey:ci")


def test_the_header_wins_then_a_service_accounts_own_namespace_then_the_default():
    assert namespace_for(SA, "team-c", "", []) == "team-c"
    assert namespace_for(SA, None, "fallback", []) == "team-a"
    assert namespace_for(USER, None, "fallback", []) == "fallback"
    with pytest.raises(AuthError) as err:
        namespace_for(USER, "", "", [])
    assert err.value.status == 400 and "X-Kubescribe-Namespace" in err.value.message


def test_an_api_key_is_bound_to_its_namespace():
    assert namespace_for(KEY, None, "x", []) == "team-b"
    assert namespace_for(KEY, "team-b", "x", []) == "team-b"
    with pytest.raises(AuthError) as err:
        namespace_for(KEY, "team-a", "x", [])
    assert err.value.status == 403


def test_namespaces_the_gateway_does_not_serve_and_bad_names_are_refused():
    with pytest.raises(AuthError) as err:
        namespace_for(SA, None, "", ["team-b"])
    assert err.value.status == 403 and "does not serve namespace 'team-a'" in err.value.message
    with pytest.raises(AuthError) as err:
        namespace_for(USER, "Team_A", "", [])
    assert err.value.status == 400


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcg==", "Bearer ", "token"])
def test_no_bearer_token_is_401(header):
    with pytest.raises(AuthError) as err:
        bearer_token(header)
    assert err.value.status == 401


def test_api_keys_are_matched_by_hash_and_reloaded_when_the_file_changes(tmp_path):
    import hashlib
    import os

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"ci": {"sha256": hashlib.sha256(b"k1").hexdigest(), "namespace": "team-b"}}))
    keys = ApiKeys(str(path))
    ident = keys.lookup("k1")
    assert ident is not None and ident.user == "kubescribe:apikey:ci" and ident.namespace == "team-b"
    assert keys.lookup("k2") is None
    path.write_text(json.dumps({"ci": {"sha256": hashlib.sha256(b"k2").hexdigest(), "namespace": "team-b",
                                       "user": "system:serviceaccount:team-b:ci"}}))
    os.utime(path, (1, 1))  # a different mtime, as when the kubelet swaps the Secret's files
    assert keys.lookup("k1") is None and keys.lookup("k2").user == "system:serviceaccount:team-b:ci"


def test_the_per_identity_limit_refuses_the_call_over_it_and_frees_slots():
    from kubescribe.gateway.context import Gateway
    from kubescribe.gateway.errors import HttpError
    from kubescribe.settings import GatewaySettings

    gw = Gateway.__new__(Gateway)
    gw.settings = GatewaySettings(gateway_max_concurrent_per_identity=2)
    gw._in_flight = {}
    with gw.slot(USER), gw.slot(USER):
        with pytest.raises(HttpError) as err:
            with gw.slot(USER):
                pass
        assert err.value.status == 429
        with gw.slot(SA):  # another identity is not affected
            pass
    assert gw._in_flight == {}
    with gw.slot(USER):
        assert gw._in_flight == {USER.user: 1}


# -- analysis -------------------------------------------------------------------------------
def test_analysis_counts_words_speech_silence_and_rate():
    doc = analyze(RESULT)
    assert doc["word_count"] == 8 and doc["language"] == "en"
    assert doc["duration_seconds"] == 10.0 and doc["speech_seconds"] == 3.0 and doc["silence_seconds"] == 7.0
    assert doc["speech_ratio"] == 0.3
    assert doc["speaking_rate_wpm"] == 160.0  # 8 words in 3 s of speech
    assert doc["top_words"][0] == {"word": "fox", "count": 2}
    assert "the" not in [w["word"] for w in doc["top_words"]]


def test_frequent_words_leave_out_function_words_and_ties_are_alphabetical():
    text = " ".join(["zebra", "apple", "the", "and", "apple", "zebra", "mango", "it's", "42"])
    doc = analyze({"text": text, "segments": [{"start": 0, "end": 4, "text": text}]})
    assert [w["word"] for w in doc["top_words"]] == ["apple", "zebra", "mango"]
    assert "it's" in STOPWORDS and len(doc["top_words"]) <= TOP_WORDS


def test_overlapping_segments_count_once_and_an_empty_transcript_is_all_silence():
    doc = analyze({"text": "a b", "audio_duration_seconds": 4,
                   "segments": [{"start": 0, "end": 2, "text": "a"}, {"start": 1, "end": 3, "text": "b"}]})
    assert doc["speech_seconds"] == 3.0 and doc["silence_seconds"] == 1.0
    empty = analyze({"text": "", "audio_duration_seconds": 5, "segments": []})
    assert empty["word_count"] == 0 and empty["speech_ratio"] == 0.0 and empty["speaking_rate_wpm"] == 0.0
    assert empty["silence_seconds"] == 5.0 and empty["top_words"] == []


def test_words_keep_apostrophes_and_other_scripts():
    assert words("Don't stop — Grüße, 東京!") == ["don't", "stop", "grüße", "東京"]


def test_the_analysis_key_follows_the_result_key():
    assert analysis_key(RESULT_PREFIX + "abc") == "kubescribe:analysis:abc"


def test_an_analysis_is_computed_once_and_kept_seven_days(redis_store):
    rkey = redis_store.put_result("k" * 64, RESULT)
    doc, cached = redis_store.analysis(rkey)
    assert cached is False and doc == analyze(RESULT)
    again, cached = redis_store.analysis(rkey)
    assert cached is True and again == doc
    assert 7 * 86400 - 5 < redis_store.client.ttl(analysis_key(rkey)) <= 7 * 86400
    assert redis_store.analysis(RESULT_PREFIX + "gone") is None
    redis_store.clear()
    assert not redis_store.client.keys("kubescribe:analysis:*")


def test_a_burst_with_one_token_costs_one_token_review_and_one_access_review():
    import asyncio

    from kubescribe.gateway.auth import Authorizer, request_attributes

    class CountingKube:  # stands in for the API server's two review endpoints
        def __init__(self):
            self.reviews = {"token": 0, "access": 0}

        async def token_review(self, token):
            self.reviews["token"] += 1
            await asyncio.sleep(0.01)  # the review's round trip, so the burst overlaps it
            return {"authenticated": token == "good", "user": {"username": "alice", "groups": ["devs"]}}

        async def access_review(self, user, groups, uid, extra, attributes):
            self.reviews["access"] += 1
            await asyncio.sleep(0.01)
            return {"allowed": True}

    async def burst():
        kube = CountingKube()
        auth = Authorizer(kube, ApiKeys(None), cache_seconds=10)
        idents = await asyncio.gather(*(auth.authenticate("Bearer good") for _ in range(50)))
        allowed = await asyncio.gather(*(auth.allowed(idents[0], request_attributes("create", "ns")) for _ in range(50)))
        refused = await asyncio.gather(*(auth.authenticate("Bearer bad") for _ in range(5)), return_exceptions=True)
        return kube.reviews, idents, allowed, refused

    reviews, idents, allowed, refused = asyncio.run(burst())
    assert {i.user for i in idents} == {"alice"} and all(allowed)
    assert all(isinstance(r, AuthError) and r.status == 401 for r in refused)
    assert reviews == {"token": 2, "access": 1}  # good once, bad once (refusals are not cached)


def test_an_alias_becomes_the_first_installed_model_that_can_do_the_task():
    from kubescribe.modeldir import ModelInfo

    tiny = ModelInfo("tiny.en", "", False, 0, "bundled")
    base = ModelInfo("base", "", True, 0, "volume")
    aliases = {"whisper-1": "large-v3,base,tiny.en"}
    translate, _ = openai.build_spec({"model": "whisper-1"}, task="translate", aliases=aliases, audio=AUDIO,
                                     models=[tiny, base])
    assert translate["model"] == "base"
    # With tiny.en alone the alias still works for English, and translation is refused by
    # the spec's own rule (the 400 an OpenAI client sees), not by a missing model.
    english, _ = openai.build_spec({"model": "whisper-1"}, task="transcribe", aliases=aliases, audio=AUDIO,
                                   models=[tiny])
    assert english["model"] == "tiny.en"
    alone, _ = openai.build_spec({"model": "whisper-1"}, task="translate", aliases=aliases, audio=AUDIO,
                                 models=[tiny])
    assert alone["model"] == "tiny.en"
    spanish, _ = openai.build_spec({"model": "whisper-1", "language": "es"}, task="transcribe", aliases=aliases,
                                   audio=AUDIO, models=[tiny, base])
    assert spanish["model"] == "base"
