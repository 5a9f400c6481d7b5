"""The Redis store against a real redis-server."""

import gzip
import json

import pytest

from kubescribe.metrics import Metrics
from kubescribe.models import parse_spec
from kubescribe.cache_layout import cache_key, decode_result, encode_result, result_key, sha256_hex
from kubescribe.store import AudioNotFound, MemoryStore, Store, StoreError, connect
from harness.redis_servers import RedisServer

KEY = "kubescribe:audio:" + "a" * 64


def test_audio_round_trip_by_sha256_with_ttl(redis_store):
    key = redis_store.put_audio(b"RIFF....WAVE", ttl=600)
    assert key == "kubescribe:audio:" + sha256_hex(b"RIFF....WAVE")
    assert redis_store.get_audio(key) == b"RIFF....WAVE"
    assert 590 <= redis_store.client.ttl(key) <= 600


def test_missing_audio_says_upload_again(redis_store):
    with pytest.raises(AudioNotFound, match="upload it again"):
        redis_store.get_audio("kubescribe:audio:" + "0" * 64)


def test_results_are_gzip_json_with_24h_ttl(redis_store):
    doc = {"text": "héllo wörld", "segments": [{"start": 0, "end": 1, "text": "héllo wörld"}]}
    rkey = redis_store.put_result("k1", doc)
    raw = redis_store.client.get(rkey)
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw)) == doc
    assert 86390 <= redis_store.client.ttl(rkey) <= 86400
    assert redis_store.get_result("k1") == doc


def test_zstd_results_are_readable_by_a_gzip_store(redis_server):
    client = redis_server.client()
    client.flushdb()
    Store(client, codec="zstd").put_result("z", {"text": "zstd"})
    assert client.get(result_key("z"))[:4] == b"\x28\xb5\x2f\xfd"
    assert Store(client).get_result("z") == {"text": "zstd"}
    assert decode_result(encode_result({"a": 1}, "none")) == {"a": 1}


@pytest.mark.parametrize(
    "change",
    [{"model": "small"}, {"language": "en"}, {"beamSize": 1}, {"vad": False}, {"wordTimestamps": True},
     {"initialPrompt": "Kubernetes"}, {"batchSize": 16}, {"decoding": "batched"}, {"computeType": "float32"}],
)
def test_cache_key_changes_with_every_output_parameter(change):
    base = parse_spec({"audio": {"redisKey": KEY}})
    other = parse_spec({"audio": {"redisKey": KEY}, **change})
    assert cache_key("a" * 64, base.output_params()) != cache_key("a" * 64, other.output_params())


def test_cache_key_ignores_operational_fields():
    base = parse_spec({"audio": {"redisKey": KEY}})
    other = parse_spec({"audio": {"redisKey": KEY}, "priority": 9, "formats": ["srt"], "retries": 0,
                        "timeoutSeconds": 60, "device": "cpu", "cache": {"ttlSeconds": 120}})
    assert cache_key("a" * 64, base.output_params()) == cache_key("a" * 64, other.output_params())
    assert cache_key("b" * 64, base.output_params()) != cache_key("a" * 64, base.output_params())


def test_hit_rate_is_shared_between_processes_through_redis(redis_server):
    client = redis_server.client()
    client.flushdb()
    m1, m2 = Metrics(), Metrics()
    a, b = Store(redis_server.client(), metrics=m1), Store(redis_server.client(), metrics=m2)
    assert a.get_result("x") is None  # miss in A
    b.put_result("x", {"text": "t"})
    assert b.get_result("x") == {"text": "t"}  # hit in B
    assert a.get_result("x") == {"text": "t"}  # hit in A
    stats = b.stats()
    assert (stats.hits, stats.misses, stats.results) == (2, 1, 1)
    assert m1.registry.get_sample_value("kubescribe_cache_hit_rate") == pytest.approx(2 / 3)
    assert m2.registry.get_sample_value("kubescribe_cache_operations_total",
                                        {"operation": "get", "result": "hit"}) == 1


def test_clear_deletes_results_and_stats(redis_store):
    redis_store.put_result("a", {"text": "a"})
    audio = redis_store.put_audio(b"x")
    redis_store.get_result("a")
    assert redis_store.clear() == 1
    assert redis_store.stats().lookups == 0
    assert redis_store.has_audio(audio)
    redis_store.clear(audio=True)
    assert not redis_store.has_audio(audio)


def test_clears_are_counted_in_redis_where_the_operator_exports_them(redis_store):
    """A CLI that clears the cache is never scraped: the count lives in Redis, and the
    operator's scrape copies it into kubescribe_cache_clears_total."""
    from kubescribe.metrics import OperatorMetrics

    redis_store.client.flushdb()
    metrics = OperatorMetrics()
    redis_store.clear()
    redis_store.clear()
    stats = redis_store.stats(count_keys=False)
    assert stats.clears == 2
    metrics.sync_cache_stats(stats.hit_rate, stats.clears)
    metrics.sync_cache_stats(stats.hit_rate, stats.clears)  # a second scrape adds nothing
    assert metrics.registry.get_sample_value("kubescribe_cache_clears_total") == 2
    redis_store.clear()
    metrics.sync_cache_stats(0.0, redis_store.stats(count_keys=False).clears)
    assert metrics.registry.get_sample_value("kubescribe_cache_clears_total") == 3


def test_a_redis_error_during_a_clear_is_a_store_error(tmp_path):
    server = RedisServer(tmp_path)  # never started
    with pytest.raises(StoreError):
        Store(connect(server.url, socket_timeout=1)).clear()


def test_password_protected_redis(tmp_path):
    server = RedisServer(tmp_path, password="s3cret pass").start()
    try:
        with pytest.raises(StoreError):
            Store(connect(server.url, None)).put_audio(b"x")
        store = Store(connect(server.url, "s3cret pass"))
        assert store.get_audio(store.put_audio(b"x")) == b"x"
    finally:
        server.stop()


def test_unreachable_redis_is_a_transient_store_error(tmp_path):
    server = RedisServer(tmp_path)  # never started: nothing listens on the port
    store = Store(connect(server.url, socket_timeout=1))
    with pytest.raises(StoreError, match="redis: ConnectionError"):
        store.get_result("k")


def test_bad_redis_url_is_refused():
    with pytest.raises(ValueError, match="must start with redis://, rediss://"):
        connect("http://localhost:6379")


def test_memory_store_behaves_like_redis():
    store = MemoryStore()
    key = store.put_audio(b"abc")
    assert store.get_audio(key) == b"abc"
    assert store.get_result("k") is None
    store.put_result("k", {"text": "t"})
    assert store.get_result("k") == {"text": "t"}
    assert store.stats().hit_rate == 0.5


def test_rediss_tls_with_private_ca_and_password(tmp_path):
    from harness.redis_servers import TlsRedisServer

    server = TlsRedisServer(tmp_path, password="tls-pass").start()
    try:
        store = Store(connect(server.url, "tls-pass", ca_file=str(server.certs["ca"])))
        key = store.put_audio(b"over tls")
        assert store.get_audio(key) == b"over tls"
        # Without the CA the server's certificate is not trusted: a clear, transient error.
        with pytest.raises(StoreError, match="redis: ConnectionError"):
            Store(connect(server.url, "tls-pass", socket_timeout=2)).get_audio(key)
        # A plain redis:// client cannot talk to the TLS port.
        with pytest.raises(StoreError):
            Store(connect(server.url.replace("rediss://", "redis://"), "tls-pass", socket_timeout=2)).get_audio(key)
    finally:
        server.stop()
