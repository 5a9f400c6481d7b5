"""The object store as the system of record: a real S3 server (versitygw) behind a real Redis.

A transcript written through the store is in the bucket before the call returns, outlives
every Redis key, warms the cache on the next read, and is deleted only when the last
request that uses it lets go of it.
"""

from __future__ import annotations

import pytest

from kubescribe.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError, S3Location
from kubescribe.settings import ObjectStoreSettings
from kubescribe.cache_layout import RESULT_PREFIX, Owner, result_key
from kubescribe.store import Store, gone_message
from harness.envtest import wait_for

RESULT = {"text": "The quick brown fox.", "language": "en", "audio_duration_seconds": 2.0,
          "segments": [{"id": 1, "start": 0.0, "end": 2.0, "text": "The quick brown fox."}]}
KEY = "c" * 64


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    """The server's credentials in the standard AWS variables, as a Secret would set them;
    no metadata endpoint is ever asked."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


def settings_for(s3_server, bucket: str, **kw) -> ObjectStoreSettings:
    return ObjectStoreSettings(s3_bucket=bucket, s3_endpoint=s3_server.endpoint, s3_path_style=True,
                               s3_prefix="ks/", **kw)


@pytest.fixture
def objects(aws_env, s3_bucket) -> ObjectStore:
    return ObjectStore.from_settings(settings_for(aws_env, s3_bucket))


@pytest.fixture
def store(redis_server, objects) -> Store:
    client = redis_server.client()
    client.flushdb()
    return Store(client, objects=objects)


def test_a_result_is_in_the_bucket_with_its_formats_and_outlives_a_flushall(store, objects, redis_server):
    rkey = store.put_result(KEY, RESULT, formats=["srt", "txt"], owner=Owner("uid-1", "ns/a"))
    assert rkey == result_key(KEY)
    d = objects.result_dir(KEY)
    assert sorted(objects.keys(d)) == [d + "result.json.gz", d + "transcript.srt", d + "transcript.txt"]
    assert objects.get(d + "transcript.srt").decode().startswith("1\n00:00:00,000 --> 00:00:02,000")
    assert objects.holders(KEY) == ["uid-1"]

    redis_server.client().flushall()
    assert store.get_result(KEY) == RESULT
    assert redis_server.client().exists(rkey) == 1, "the read from the bucket warms the cache"
    assert store.read_result_key(rkey) == RESULT


def test_a_result_whose_cache_entry_expired_is_read_from_the_bucket(store, redis_server):
    store.put_result(KEY, RESULT, ttl=1)
    client = redis_server.client()
    wait_for(lambda: client.exists(result_key(KEY)) == 0, timeout=10, description="the cache entry to expire")
    assert store.get_result(KEY, count=False) == RESULT
    stats = store.stats(count_keys=False)
    assert (stats.hits, stats.misses) == (0, 0)


def test_without_redis_a_result_is_still_written_and_read(objects, redis_server, tmp_path):
    from harness.redis_servers import RedisServer

    down = RedisServer(tmp_path)  # never started: connections are refused
    store = Store(down.client(), objects=objects)
    store.put_result(KEY, RESULT)
    assert objects.get_result(KEY) is not None
    assert store.get_result(KEY, count=False) == RESULT


def test_with_the_object_store_down_nothing_is_cached_and_the_error_is_transient(
        redis_server, aws_env, s3_bucket):
    settings = settings_for(aws_env, s3_bucket)
    objects = ObjectStore.from_settings(settings)
    client = redis_server.client()
    client.flushdb()
    store = Store(client, objects=objects)
    aws_env.stop()
    try:
        with pytest.raises(ObjectStoreError) as err:
            store.put_result(KEY, RESULT)
        assert err.value.reason == "ObjectStoreUnavailable"
        assert client.exists(result_key(KEY)) == 0, "a result not in the bucket must not look stored"
    finally:
        aws_env.start()
    store.put_result(KEY, RESULT)
    assert objects.get_result(KEY) is not None


def test_wrong_credentials_and_a_missing_bucket_are_final_reasons(aws_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ObjectStoreError) as err:
        ObjectStore.from_settings(settings_for(aws_env, s3_bucket)).ping()
    assert err.value.reason == "ObjectStoreAccessDenied"
    assert "check the credentials" in err.value.message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(ObjectStoreError) as err:
        ObjectStore.from_settings(settings_for(aws_env, s3_bucket)).put_result(KEY, b"x")
    assert err.value.reason == "ObjectStoreAccessDenied"

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws_env.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env.secret_key)
    missing = ObjectStore.from_settings(settings_for(aws_env, "no-such-bucket-here"))
    with pytest.raises(ObjectStoreError) as err:
        missing.put_result(KEY, b"x")
    assert err.value.reason == "ObjectStoreBucketMissing"
    assert "the bucket does not exist" in str(err.value)
    with pytest.raises(ObjectNotFound):
        ObjectStore.from_settings(settings_for(aws_env, s3_bucket)).get("ks/none")


def test_the_last_request_out_deletes_the_result_and_its_cache_entries(store, objects, redis_server):
    store.put_result(KEY, RESULT, owner=Owner("uid-1", "ns/a"))
    assert store.get_result(KEY, owner=Owner("uid-2", "ns/b")) == RESULT  # a cache hit takes a reference
    client = redis_server.client()
    client.set("kubescribe:analysis:" + KEY, b"{}")
    assert sorted(objects.holders(KEY)) == ["uid-1", "uid-2"]

    assert store.release(KEY, "uid-1") is False
    assert objects.get_result(KEY) is not None and client.exists(result_key(KEY)) == 1
    assert store.release(KEY, "uid-2") is True
    assert objects.keys(objects.result_dir(KEY)) == [] and objects.holders(KEY) == []
    assert client.exists(result_key(KEY), "kubescribe:analysis:" + KEY) == 0
    assert store.release(KEY, "uid-2") is False  # twice is harmless


def test_a_reference_taken_while_the_result_is_deleted_gets_the_result_back(store, objects):
    """The interleaving a lock would otherwise be needed for: request B takes its reference
    after A's release found none, while A deletes. A looks again and puts it back."""
    store.put_result(KEY, RESULT, formats=["txt"], owner=Owner("uid-a", "ns/a"))
    before = sorted(objects.keys(objects.result_dir(KEY)))
    delete = objects.delete

    def delete_then_b_arrives(keys, **kw):
        n = delete(keys, **kw)
        objects.retain(KEY, "uid-b", "ns/b")
        return n

    objects.delete = delete_then_b_arrives
    try:
        assert store.release(KEY, "uid-a") is False
    finally:
        objects.delete = delete
    assert sorted(objects.keys(objects.result_dir(KEY))) == before
    assert store.get_result(KEY, count=False) == RESULT


def test_a_hit_served_from_redis_alone_is_written_back_to_the_bucket(store, objects, redis_server):
    """A cached copy whose bucket object went (deleted by a release that raced a cache
    read) is stored again by the request that is answered with it."""
    store.put_result(KEY, RESULT, owner=Owner("uid-1", "ns/a"))
    objects.delete_result(KEY)
    assert store.get_result(KEY, owner=Owner("uid-2", "ns/b")) == RESULT
    assert objects.get_result(KEY) is not None
    assert "uid-2" in objects.holders(KEY)


def test_redis_only_stores_keep_todays_behaviour(redis_server):
    client = redis_server.client()
    client.flushdb()
    store = Store(client)
    store.put_result(KEY, RESULT, formats=["srt"], owner=Owner("uid-1", "ns/a"))
    assert store.release(KEY, "uid-1") is False
    client.flushall()
    assert store.read_result_key(RESULT_PREFIX + KEY) is None
    assert "no object store is configured" in gone_message("req", store)


def test_s3_urls_are_parsed_or_refused_with_a_reason():
    assert S3Location.parse("s3://audio/2026/hearing.flac") == S3Location("audio", "2026/hearing.flac")
    assert str(S3Location("b", "k/x")) == "s3://b/k/x"
    for bad in ("s3://bucket", "s3:///key", "https://bucket/key", "bucket/key"):
        with pytest.raises(ValueError, match="is not an s3://bucket/key URL"):
            S3Location.parse(bad)


def test_the_sweep_releases_references_of_requests_that_no_longer_exist(store, objects):
    from kubescribe.operator.retention import SWEEP_MIN_AGE_SECONDS, Retention
    import time

    store.put_result(KEY, RESULT, owner=Owner("gone", "ns/gone"))
    store.get_result(KEY, count=False, owner=Owner("alive", "ns/alive"))
    other = "d" * 64
    store.put_result(other, RESULT, owner=Owner("gone-too", "ns/gone-too"))

    now = [time.time()]
    retention = Retention(store, sweep_seconds=3600, clock=lambda: now[0])
    assert retention.sweep_due()
    assert retention.sweep({"alive"}) == 0, "references younger than the minimum age are left alone"
    assert not retention.sweep_due()
    now[0] += SWEEP_MIN_AGE_SECONDS + 3600
    assert retention.sweep_due()
    assert retention.sweep({"alive"}) == 2
    assert objects.holders(KEY) == ["alive"] and objects.get_result(KEY) is not None
    assert objects.get_result(other) is None and retention.released == 1


def test_the_sweep_deletes_uploads_no_request_names_once_they_are_old(store, objects):
    """A presigned upload never followed by a transcription, and a multipart upload cut off
    mid-way, do not stay in the bucket for ever; an upload a request names stays."""
    from kubescribe.operator.retention import Retention, uploaded_audio
    import time

    named, orphan = f"{objects.prefix}uploads/named", f"{objects.prefix}uploads/orphan"
    objects.put(named, b"RIFF named")
    objects.put(orphan, b"RIFF orphan")
    mine = f"{objects.prefix}mine/kept"  # not under uploads/: never the sweep's
    objects.put(mine, b"RIFF mine")
    cut_off = objects.client.create_multipart_upload(Bucket=objects.bucket, Key=f"{objects.prefix}uploads/cut")
    body = {"spec": {"audio": {"s3": {"bucket": objects.bucket, "key": named}}}}
    assert uploaded_audio(body, objects) == named

    now = [time.time()]
    retention = Retention(store, sweep_seconds=1, clock=lambda: now[0], upload_max_age=3600)
    retention.sweep(set(), {named})
    assert retention.uploads_deleted == 0, "uploads younger than the maximum age are left alone"
    now[0] += 3600 + 120
    retention.sweep(set(), {named})
    assert retention.uploads_deleted == 2
    assert sorted(objects.keys(f"{objects.prefix}uploads/")) == [named]
    assert objects.keys(mine) == [mine]
    pending = objects.client.list_multipart_uploads(Bucket=objects.bucket, Prefix=f"{objects.prefix}uploads/")
    assert cut_off["UploadId"] not in [u["UploadId"] for u in pending.get("Uploads") or ()]


def test_a_part_refused_is_final_at_once_and_a_server_gone_is_tried_again_then_unavailable(objects, aws_env):
    """Parts go up as presigned PUTs (kubescribe.uploads.PartWriter): a 4xx answer is
    classified from the server's error document without a second try; a server that is
    gone is tried PUT_ATTEMPTS times, then ObjectStoreUnavailable. The object written in
    parts and completed reads back byte for byte."""
    from kubescribe.uploads import PartWriter, upload_key, new_upload_id

    writer = PartWriter(objects, upload_key(objects, new_upload_id()))
    writer.begin()
    first, second = b"a" * (5 * 1024 * 1024), b"tail"
    writer.put_part(1, first)
    writer.finish(second)
    assert objects.get(writer.key) == first + second
    # a part given as the pieces it arrived in (the gateway's): sent in order, never joined
    pieces = [bytes([65 + i]) * (256 * 1024 + i) for i in range(21)]
    joined = PartWriter(objects, upload_key(objects, new_upload_id()))
    joined.begin()
    joined.put_part(1, pieces)
    joined.finish([b"end", b"!"])
    assert objects.get(joined.key) == b"".join(pieces) + b"end!"

    refused = PartWriter(objects, upload_key(objects, new_upload_id()))
    refused.begin()
    objects.client.abort_multipart_upload(Bucket=refused.bucket, Key=refused.key, UploadId=refused.upload_id)
    with pytest.raises(ObjectStoreError) as err:
        refused.put_part(1, b"x" * 1024)
    assert err.value.reason == "ObjectStoreUnavailable" and "NoSuchUpload" in str(err.value), err.value

    gone = PartWriter(objects, upload_key(objects, new_upload_id()))
    gone.begin()
    aws_env.stop()
    try:
        with pytest.raises(ObjectStoreError) as err:
            gone.put_part(1, b"x" * 1024)
        assert err.value.reason == "ObjectStoreUnavailable" and "(part 1)" in str(err.value)
    finally:
        aws_env.start()
