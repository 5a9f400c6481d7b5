"""How every process reaches Redis: the URL forms, and the sync and async clients built from them.

One parser and two factories, so the operator, the runners, the CLI (``connect``) and the
gateway's async client (``connect_async``) read a URL the same way and get the same
timeouts and retries. URL forms:

    redis://[[user]:password@]host:6379/<db>           one server
    rediss://...                                       the same over TLS
    unix:///path/to/redis.sock                         a local socket
    redis+sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/<service>[/<db>]
    rediss+sentinel://...                              TLS to the sentinels and the primary

With a Sentinel URL the client asks the sentinels where the primary of ``<service>`` is,
and asks again whenever a connection fails or the server it reaches has become a replica:
a failover moves the primary and the clients follow, without a restart or a DNS change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

SENTINEL_FORM = "redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/<service>[/<db>]"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379

#: Backoff of a command whose connection failed behind Sentinel: 0.2, 0.4, 0.8, 1.6 s, then
#: 2 s a try, about 15 s in all. A Sentinel failover takes a few seconds after the primary is
#: seen down (down-after-milliseconds, then an election and a promotion), so a call made
#: during one waits for the new primary instead of failing; a Redis gone for longer
#: surfaces as the store's transient StoreError, which callers retry at their own pace.
FAILOVER_RETRIES = 10
FAILOVER_BACKOFF_BASE = 0.1
FAILOVER_BACKOFF_CAP = 2.0


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at. For ``redis://``, ``rediss://`` and ``unix://`` only the
    scheme is read here (redis-py reads the rest); a Sentinel URL is read whole."""

    url: str = field(repr=False)  # may carry a password
    tls: bool
    #: (host, port) of each sentinel; empty for a single server.
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the primary under (``sentinel monitor <name> ...``).
    service: str = ""
    db: int = 0
    #: Credentials written in a Sentinel URL (for the primary, not the sentinels).
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``: for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if sep and "@" in netloc:
        user = netloc.rsplit("@", 1)[0].split(":", 1)[0]
        netloc = f"{user}:***@{netloc.rsplit('@', 1)[1]}"
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _bad(reason: str) -> ValueError:
    return ValueError(f"bad Redis Sentinel URL: {reason}; use {SENTINEL_FORM}")


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise _bad(f"sentinel {item!r} is not host:port")
    elif item.count(":") > 1:
        raise _bad(f"sentinel {item!r} is not host:port (write an IPv6 address in brackets)")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise _bad(f"sentinel {item!r} has no host")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(f"port {port!r} of sentinel {item!r} is not a port number")
    return host, int(port)


def parse_redis_url(url: str) -> RedisTarget:
    """What ``url`` points at, or a one-line ValueError saying what a good URL looks like.

    Pure: no connection is made, so a mistyped URL is reported at start-up.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in PLAIN_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError("Redis URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
                         f"rediss+sentinel:// (got {redact(url)[:40]!r})")
    if scheme in PLAIN_SCHEMES:
        return RedisTarget(url=url, tls=scheme == "rediss")
    if "?" in rest or "#" in rest:
        raise _bad("query parameters and fragments are not read")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    hosts = [h.strip() for h in netloc.split(",")]
    if not any(hosts):
        raise _bad("no sentinel hosts")
    if not all(hosts):
        raise _bad(f"an empty entry in the sentinel list {netloc!r}")
    sentinels = tuple(_host_port(h) for h in hosts)
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":  # a trailing slash
        parts.pop()
    if not parts or not parts[0]:
        raise _bad("no service name after the hosts")
    if len(parts) > 2:
        raise _bad(f"{len(parts)} path parts after the hosts, at most 2 (service, db)")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _bad(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    return RedisTarget(url=url, tls=scheme == "rediss+sentinel", sentinels=sentinels, service=unquote(parts[0]),
                       db=db, username=username, password=password)


def _common(target: RedisTarget, password: str | None, ca_file: str | None, socket_timeout: float) -> dict[str, Any]:
    """Keyword arguments shared by the sync and async clients of one target.

    Timeouts are set because a silent network partition must surface as a retryable
    error, not a hang; ``health_check_interval`` re-validates pooled connections that sat
    idle past a Redis or proxy timeout.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 30,
    }
    password = target.password or password  # as redis-py reads redis://: the URL's own wins
    if password:
        kwargs["password"] = password
    if target.username:
        kwargs["username"] = target.username
    if target.tls:
        if target.sentinel:
            kwargs["ssl"] = True
        if ca_file:
            kwargs["ssl_ca_certs"] = ca_file
    return kwargs


def _sentinel_kwargs(target: RedisTarget, sentinel_password: str | None, ca_file: str | None,
                     socket_timeout: float, no_retry: Any) -> dict[str, Any]:
    """How the sentinels themselves are asked: their own password (they do not share the
    primary's unless configured to), TLS like the primary, and no retries, because
    redis-py tries the next sentinel when one does not answer, which is faster than
    waiting for a dead one."""
    kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
                              "retry": no_retry}
    if sentinel_password:
        kwargs["password"] = sentinel_password
    if target.tls:
        kwargs["ssl"] = True
        if ca_file:
            kwargs["ssl_ca_certs"] = ca_file
    return kwargs


@functools.cache
def _following_connections(use_asyncio: bool) -> tuple[type, type]:
    """Sentinel-managed connection classes (plain, TLS) that ask the sentinels where the
    primary is whenever they reconnect.

    redis-py's own ask only when the pool hands out a new connection: a command retried
    on the same connection after an error reconnects to the address it had (redis-py
    issue 3874, still open in 8.1). After a failover that address is the old primary:
    dead, or demoted to a replica that answers every write with READONLY, so every retry
    fails the same way. Asking again on each reconnect makes the retries follow the
    failover.
    """
    if use_asyncio:
        from redis.asyncio.connection import SSLConnection as AsyncSSL
        from redis.asyncio.sentinel import SentinelManagedConnection as AsyncManaged

        class AsyncFollowing(AsyncManaged):
            async def send_packed_command(self, command, check_health=True):
                if not self.is_connected:
                    await self._connect_retry()  # one try: the command's own retry repeats it
                return await super().send_packed_command(command, check_health)

        class AsyncFollowingSSL(AsyncFollowing, AsyncSSL):
            pass

        return AsyncFollowing, AsyncFollowingSSL
    from redis.connection import SSLConnection
    from redis.sentinel import SentinelManagedConnection

    class Following(SentinelManagedConnection):
        def send_packed_command(self, command, check_health=True):
            if not self._sock:
                self._connect_retry()  # one try: the command's own retry repeats it
            return super().send_packed_command(command, check_health)

    class FollowingSSL(Following, SSLConnection):
        pass

    return Following, FollowingSSL


def _failover_retry(retry_class: Any) -> Any:
    from redis.backoff import ExponentialBackoff

    return retry_class(ExponentialBackoff(cap=FAILOVER_BACKOFF_CAP, base=FAILOVER_BACKOFF_BASE), FAILOVER_RETRIES)


def connect(
    url: str,
    password: str | None = None,
    *,
    sentinel_password: str | None = None,
    ca_file: str | None = None,
    socket_timeout: float = 10.0,
):
    """A sync redis-py client for any URL form of this module.

    ``password`` authenticates to the server (with Sentinel: to the primary and replicas);
    ``sentinel_password`` to the sentinels. A single server keeps redis-py's own retry of
    a failed command (a few quick tries); behind Sentinel a command is retried for about
    15 s with backoff (``FAILOVER_*``), long enough to ride out a failover.
    """
    import redis
    from redis.exceptions import ConnectionError, TimeoutError

    target = parse_redis_url(url)
    kwargs = _common(target, password, ca_file, socket_timeout)
    if not target.sentinel:
        kwargs["retry_on_error"] = [TimeoutError]  # redis-py < 6 retried nothing by default
        return redis.Redis.from_url(url, **kwargs)
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    sentinel = Sentinel(list(target.sentinels),
                        sentinel_kwargs=_sentinel_kwargs(target, sentinel_password, ca_file, socket_timeout,
                                                         Retry(_no_backoff(), 0)))
    plain, tls = _following_connections(False)
    kwargs["connection_class"] = tls if kwargs.pop("ssl", False) else plain
    return sentinel.master_for(target.service, db=target.db, retry=_failover_retry(Retry),
                               retry_on_error=[ConnectionError, TimeoutError], **kwargs)


def connect_async(
    url: str,
    password: str | None = None,
    *,
    sentinel_password: str | None = None,
    ca_file: str | None = None,
    socket_timeout: float = 10.0,
    max_connections: int | None = None,
):
    """The redis.asyncio twin of :func:`connect`: same URL forms, credentials, timeouts and
    failover retries. ``max_connections`` bounds the pool (the gateway serves many
    requests at once)."""
    import redis.asyncio
    from redis.exceptions import ConnectionError, TimeoutError

    target = parse_redis_url(url)
    kwargs = _common(target, password, ca_file, socket_timeout)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if not target.sentinel:
        return redis.asyncio.Redis.from_url(url, **kwargs)
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(list(target.sentinels),
                        sentinel_kwargs=_sentinel_kwargs(target, sentinel_password, ca_file, socket_timeout,
                                                         Retry(_no_backoff(), 0)))
    plain, tls = _following_connections(True)
    kwargs["connection_class"] = tls if kwargs.pop("ssl", False) else plain
    return sentinel.master_for(target.service, redis_class=redis.asyncio.Redis, db=target.db,
                               retry=_failover_retry(Retry), retry_on_error=[ConnectionError, TimeoutError], **kwargs)


def _no_backoff() -> Any:
    from redis.backoff import NoBackoff

    return NoBackoff()
