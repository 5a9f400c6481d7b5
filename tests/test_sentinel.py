"""Redis behind Sentinel: the URL form, and real failovers ridden out by the store, the
gateway's async client and the CLI (a primary, a replica and three sentinels on loopback,
harness/sentinel.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from kubescribe.redisconn import FAILOVER_RETRIES, SENTINEL_FORM, connect, connect_async, parse_redis_url
from kubescribe.store import Store, StoreError, open_store

USE = f"; use {SENTINEL_FORM}"


# -- the URL, no server ------------------------------------------------------------------


@pytest.mark.parametrize("url, sentinels, service, db, password", [
    ("redis+sentinel://h1:26379,h2:26379,h3:26379/mymaster", (("h1", 26379), ("h2", 26379), ("h3", 26379)),
     "mymaster", 0, None),
    ("redis+sentinel://:s3cret@h1:1,h2:2/kubescribe/2", (("h1", 1), ("h2", 2)), "kubescribe", 2, "s3cret"),
    ("redis+sentinel://h1,h2/m/", (("h1", 26379), ("h2", 26379)), "m", 0, None),
    ("redis+sentinel://:p%40ss@[::1]:5000,10.0.0.2/m", (("::1", 5000), ("10.0.0.2", 26379)), "m", 0, "p@ss"),
])
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(url, sentinels, service, db, password):
    target = parse_redis_url(url)
    assert (target.sentinel, target.tls, target.sentinels, target.service, target.db, target.password) == \
        (True, False, sentinels, service, db, password)


def test_rediss_sentinel_is_tls_and_the_password_never_shows_in_the_repr():
    target = parse_redis_url("rediss+sentinel://:hunter2@h1:26380/m")
    assert target.tls and target.sentinel and "hunter2" not in repr(target)


@pytest.mark.parametrize("url, tls", [("redis://h:6379/0", False), ("rediss://:pw@h:6380/1", True),
                                      ("unix:///run/redis.sock", False)])
def test_single_server_urls_are_left_to_redis_py(url, tls):
    target = parse_redis_url(url)
    assert (target.sentinel, target.tls, target.url) == (False, tls, url)


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel:///mymaster", "bad Redis Sentinel URL: no sentinel hosts" + USE),
    ("redis+sentinel://:pw@/mymaster", "bad Redis Sentinel URL: no sentinel hosts" + USE),
    ("redis+sentinel://h1:26379", "bad Redis Sentinel URL: no service name after the hosts" + USE),
    ("redis+sentinel://h1:26379/", "bad Redis Sentinel URL: no service name after the hosts" + USE),
    ("redis+sentinel://h1:x/m", "bad Redis Sentinel URL: port 'x' of sentinel 'h1:x' is not a port number" + USE),
    ("redis+sentinel://h1:99999/m",
     "bad Redis Sentinel URL: port '99999' of sentinel 'h1:99999' is not a port number" + USE),
    ("redis+sentinel://h1,,h2/m", "bad Redis Sentinel URL: an empty entry in the sentinel list 'h1,,h2'" + USE),
    ("redis+sentinel://h1/m/x", "bad Redis Sentinel URL: database 'x' is not a number" + USE),
    ("redis+sentinel://h1/m/0/1",
     "bad Redis Sentinel URL: 3 path parts after the hosts, at most 2 (service, db)" + USE),
    ("redis+sentinel://h1/m?db=1", "bad Redis Sentinel URL: query parameters and fragments are not read" + USE),
    ("redis+sentinel://::1:5/m",
     "bad Redis Sentinel URL: sentinel '::1:5' is not host:port (write an IPv6 address in brackets)" + USE),
    ("localhost:6391", "Redis URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
                       "rediss+sentinel:// (got 'localhost:6391')"),
    ("sentinel://:pw@h1/m", "Redis URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
                            "rediss+sentinel:// (got 'sentinel://:***@h1/m')"),
])
def test_a_bad_url_is_one_line_saying_what_a_good_one_looks_like(url, message):
    with pytest.raises(ValueError) as exc:
        parse_redis_url(url)
    assert str(exc.value) == message


def test_the_primary_and_the_sentinels_get_their_own_passwords_and_failover_retries():
    """Built without a server: nothing connects until the first command."""
    client = connect("redis+sentinel://h1:26379,h2:26380/mymaster/3", "data-pw", sentinel_password="sentinel-pw",
                     socket_timeout=4)
    pool = client.connection_pool
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "data-pw"
    assert pool.connection_kwargs["socket_timeout"] == 4 and pool.connection_kwargs["health_check_interval"] == 30
    assert pool.connection_kwargs["retry"].get_retries() == FAILOVER_RETRIES
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("h1", 26379), ("h2", 26380)]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-pw"}
    # A password written in the URL is the primary's, as in redis:// URLs.
    assert connect("redis+sentinel://:url-pw@h1/m", "env-pw").connection_pool.connection_kwargs["password"] == "url-pw"


def test_the_async_client_reads_the_url_the_same_way():
    client = connect_async("rediss+sentinel://h1:26379/mymaster", "data-pw", sentinel_password="sentinel-pw",
                           ca_file="/ca.pem", max_connections=1000)
    from redis.asyncio.connection import SSLConnection

    pool = client.connection_pool
    assert pool.service_name == "mymaster" and pool.max_connections == 1000
    assert issubclass(pool.connection_class, SSLConnection)  # rediss+sentinel: TLS to the primary too
    assert pool.connection_kwargs["password"] == "data-pw" and pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    (sentinel,) = pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_kwargs["password"] == "sentinel-pw"
    assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_runners_get_the_sentinel_url_unchanged_and_passwords_only_by_secret_reference(monkeypatch):
    from kubescribe.operator.jobs import build_pool_job, redis_url_without_credentials
    from kubescribe.settings import OperatorSettings

    for k in list(os.environ):
        if k.startswith("KUBESCRIBE_"):
            monkeypatch.delenv(k)
    url = "redis+sentinel://s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26379/mymaster/1"
    assert redis_url_without_credentials(url) == url
    assert redis_url_without_credentials(url.replace("//", "//:leaked@", 1)) == url
    conf = OperatorSettings(redis_url=url, redis_password="pw-1", redis_sentinel_password="pw-2",
                            redis_secret_name="redis", redis_sentinel_secret_name="sentinel")
    job = build_pool_job(conf, "ns", "pool-1")
    assert "pw-1" not in json.dumps(job) and "pw-2" not in json.dumps(job)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBESCRIBE_REDIS_URL"]["value"] == url
    assert env["KUBESCRIBE_REDIS_SENTINEL_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "sentinel", "key": "sentinel-password"}}


def test_a_bad_sentinel_url_is_a_one_line_cli_error():
    proc = subprocess.run([sys.executable, "-m", "kubescribe.cli", "cache", "stats", "--redis", "redis+sentinel://h1/"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "kubescribe: --redis: bad Redis Sentinel URL: no service name after the hosts" + USE]


# -- real failovers -----------------------------------------------------------------------


def test_writes_ride_out_the_primary_dying_and_every_acknowledged_write_is_on_the_new_primary(sentinel_cluster):
    cluster = sentinel_cluster
    store = open_store(cluster.url, cluster.password, sentinel_password=cluster.sentinel_password)
    old = cluster.primary_port()
    written: list[int] = []
    failed: list[tuple[int, str]] = []
    killed_at = first_after_kill = None
    deadline = time.monotonic() + 90
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if i == 50:
            cluster.kill_primary()
            killed_at = time.monotonic()
        try:
            store.put_result(f"w{i}", {"i": i})
        except StoreError as exc:
            failed.append((i, str(exc)[:200]))
            continue
        written.append(i)
        if killed_at is not None and first_after_kill is None:
            first_after_kill = time.monotonic()
        if killed_at is not None and i >= 150:
            break
    assert killed_at is not None and first_after_kill is not None
    assert failed == [], failed  # each write made during the failover waited for the new primary
    new = cluster.wait_for_new_primary(old, timeout=30)
    assert new != old
    assert len(written) == i >= 150
    on_new = Store(cluster.node(new))
    missing = [n for n in written if on_new.get_result(f"w{n}", count=False) != {"i": n}]
    assert missing == []
    print(f"primary :{old} killed; first write acknowledged by :{new} {first_after_kill - killed_at:.2f} s later")


def test_the_gateway_async_client_follows_a_failover_from_the_demoted_primary_to_the_new_one(sentinel_cluster):
    """Built the way gateway/main.py builds it, from GatewaySettings. The failover is one the
    sentinels are told to make: the old primary lives on, and once the sentinels demote it
    the client's next write there is refused (READONLY) and retried on the new primary.
    Writes the old primary acknowledged before its demotion are dropped by Redis when it
    resynchronises (SentinelCluster.failover); every write after it is on the new primary."""
    from kubescribe.gateway.main import _async_redis
    from kubescribe.settings import GatewaySettings

    cluster = sentinel_cluster
    conf = GatewaySettings(redis_url=cluster.url, redis_password=cluster.password,
                           redis_sentinel_password=cluster.sentinel_password)

    async def scenario() -> tuple[int, list[int], list[bytes | None], int]:
        client = _async_redis(conf)
        try:
            await client.set("kubescribe:test:0", 0)
            old = cluster.failover()
            acknowledged: list[int] = []
            read_back: list[bytes | None] = []
            demoted_after = 0
            deadline = time.monotonic() + 60
            for n in range(1, 100000):
                assert time.monotonic() < deadline, f"old primary not demoted within 60 s\n{cluster.logs()}"
                await client.set(f"kubescribe:test:{n}", n)  # never an error: retried through the switch
                acknowledged.append(n)
                # Read on the connection that wrote: during the switch it may be the old
                # primary, just demoted and emptied, hence None for the writes it dropped.
                read_back.append(await client.get(f"kubescribe:test:{n}"))
                if not demoted_after and cluster.role(old) == "slave":
                    demoted_after = n
                if demoted_after and n >= demoted_after + 20:
                    break
            return old, acknowledged, read_back, demoted_after
        finally:
            await client.aclose()

    old, acknowledged, read_back, demoted_after = asyncio.run(scenario())
    new = cluster.wait_for_new_primary(old, timeout=30)
    assert new != old
    assert [int(v) for n, v in zip(acknowledged, read_back) if n > demoted_after] == acknowledged[demoted_after:]
    values = cluster.node(new).mget([f"kubescribe:test:{n}" for n in acknowledged])
    after = [(n, v) for n, v in zip(acknowledged, values) if n > demoted_after]
    assert len(after) == 20 and all(v is not None and int(v) == n for n, v in after), after
    lost = sum(v is None for n, v in zip(acknowledged, values) if n <= demoted_after)
    print(f"old primary :{old} demoted after write {demoted_after}; {lost} writes it acknowledged before were dropped")


def test_the_cli_reads_cache_stats_through_the_sentinels(sentinel_cluster):
    cluster = sentinel_cluster
    store = open_store(cluster.url, cluster.password, sentinel_password=cluster.sentinel_password)
    store.put_result("cli", {"text": "hello"})
    assert store.get_result("cli") == {"text": "hello"}
    env = {**os.environ, "KUBESCRIBE_REDIS_URL": cluster.url, "KUBESCRIBE_REDIS_PASSWORD": cluster.password,
           "KUBESCRIBE_REDIS_SENTINEL_PASSWORD": cluster.sentinel_password}
    proc = subprocess.run([sys.executable, "-m", "kubescribe.cli", "cache", "stats"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["results"] == 1 and stats["hits"] == 1
