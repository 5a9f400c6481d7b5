"""A real Redis Sentinel cluster on loopback: a primary, a replica and three sentinels.

Debian's ``redis-server`` and ``redis-sentinel``, each process with its own config file in
a temporary directory (sentinels rewrite theirs as they learn the topology), passwords in
the files and never on a command line. Failure detection is tuned down
(``down-after-milliseconds`` 1000) so a failover takes seconds, not the production minute.
"""

from __future__ import annotations

from pathlib import Path

from harness.envtest import free_port, require_binary, wait_for
from harness.process import ManagedProcess

SERVICE = "kubescribe"
QUORUM = 2


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels monitoring them as
    ``kubescribe`` with quorum 2.

    Args:
        workdir: where the config files, logs and working directories go.
        password: ``requirepass`` and ``masterauth`` of the data nodes (the
            KUBESCRIBE_REDIS_PASSWORD of clients); the sentinels know it as ``auth-pass``.
        sentinel_password: ``requirepass`` of the sentinels themselves (clients'
            KUBESCRIBE_REDIS_SENTINEL_PASSWORD); None leaves them open.
        down_after_ms: how long a primary must be silent before a sentinel calls it down.
        failover_timeout_ms: sentinel ``failover-timeout``: a stuck failover is retried after
            twice this.
    """

    def __init__(self, workdir: Path, password: str | None = "data-pass", sentinel_password: str | None = None,
                 replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        self.server_binary = require_binary("redis-server", "redis-server")
        self.sentinel_binary = require_binary("redis-sentinel", "redis-sentinel")
        self.workdir = workdir
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, ManagedProcess] = {}

    # -- what clients use --------------------------------------------------------------
    @property
    def url(self) -> str:
        """The redis+sentinel:// URL of the cluster, without credentials (they come from
        the environment, as from a Secret)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def node(self, port: int):
        """A plain client of one data node, to check what it holds."""
        import redis

        return redis.Redis(port=port, password=self.password, socket_timeout=5)

    def sentinel(self, port: int):
        import redis

        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=2, decode_responses=True)

    def primary_port(self) -> int:
        """The primary's port as the sentinels' majority report it."""
        ports = [p for p in (self._reported_primary(s) for s in self.sentinel_ports) if p]
        if not ports:
            raise RuntimeError("no sentinel reports a primary")
        return max(set(ports), key=ports.count)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> "SentinelCluster":
        primary, *replicas = self.data_ports
        self._start_data_node(primary)
        for port in replicas:
            self._start_data_node(port, replica_of=primary)
        # Replicas in sync first: a sentinel lists the replicas it finds in the primary's
        # INFO, which it reads every 10 s once the first reading is done.
        self._wait(lambda: all(self._synced(p) for p in replicas), 30, "replicas in sync with the primary")
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self._wait_ready(primary, timeout=60)
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def kill_primary(self, wait_replicated: bool = True) -> int:
        """SIGKILL the current primary, as when its node dies; returns its port.

        Redis replicates asynchronously: a write the primary acknowledged in its last
        milliseconds may not have reached a replica, and dies with it. ``wait_replicated``
        first waits (``WAIT``) until a replica has everything acknowledged so far, so a test
        of the clients' failover does not depend on that race; False leaves it to chance,
        like a real crash.
        """
        port = self.primary_port()
        if wait_replicated:
            self.node(port).execute_command("WAIT", 1, 5000)
        self.procs[port].kill()
        return port

    def failover(self) -> int:
        """A failover the sentinels are told to make (``SENTINEL FAILOVER``), as in planned
        maintenance; returns the old primary's port. The old primary stays up: the sentinels
        promote the replica at once but make the old primary a replica only when they next
        see it claim to be a primary (seconds later). Until then it still accepts writes,
        and those are dropped when it resynchronises from the new primary: Redis's
        documented behaviour, which is why Redis is a cache here and not the system of record."""
        port = self.primary_port()
        self.sentinel(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)
        return port

    def wait_for_new_primary(self, old_port: int, timeout: float = 30.0) -> int:
        """The new primary's port once every live sentinel reports a node other than
        ``old_port`` and that node says it is a primary."""
        reported: set[int | None] = set()

        def new_primary() -> int | None:
            reported.clear()
            reported.update(self._reported_primary(s) for s in self.sentinel_ports if self._alive(s))
            port = next(iter(reported)) if len(reported) == 1 else None
            return port if port and port != old_port and self.role(port) == "master" else None

        try:
            return wait_for(new_primary, timeout=timeout, interval=0.05, description="a new primary")
        except TimeoutError:
            raise TimeoutError(f"no new primary after {timeout} s (sentinels report {reported}, "
                               f"old primary :{old_port})\n{self.logs()}") from None

    def logs(self, tail: int = 20) -> str:
        out = []
        for log in sorted(self.workdir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # -- plumbing ----------------------------------------------------------------------
    def _spawn(self, port: int, binary: str, conf: Path) -> None:
        # The servers log to the file their configuration names; this one gets the rest.
        self.procs[port] = ManagedProcess(f"{Path(binary).name} :{port}", [binary, str(conf)],
                                          self.workdir / f"process-{port}.out").start()

    def _start_data_node(self, port: int, replica_of: int | None = None) -> None:
        data = self.workdir / f"redis-{port}"
        data.mkdir()
        # repl-diskless-sync-delay 0: a replica's full sync starts at once, not after the
        # default 5 s wait for more replicas to share it.
        lines = [f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no", "repl-diskless-sync-delay 0",
                 f"dir {data}", f"logfile {self.workdir / f'redis-{port}.log'}"]
        if self.password:
            # Both: a demoted primary must authenticate to the new one (masterauth).
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf = self.workdir / f"redis-{port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self._spawn(port, self.server_binary, conf)

    def _start_sentinel(self, port: int, primary: int) -> None:
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {self.workdir}",
                 f"logfile {self.workdir / f'sentinel-{port}.log'}",
                 f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {QUORUM}",
                 f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                 f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {SERVICE} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password:
            # Sentinels talk to each other too: sentinel-pass is what they present.
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        conf = self.workdir / f"sentinel-{port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self._spawn(port, self.sentinel_binary, conf)

    def _alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.running

    def _reported_primary(self, sentinel_port: int) -> int | None:
        try:
            addr = self.sentinel(sentinel_port).execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
        except Exception:
            return None
        return int(addr[1]) if addr else None

    def role(self, port: int) -> str | None:
        """What a data node says it is: master, slave, or None when it does not answer."""
        try:
            return self.node(port).info("replication")["role"]
        except Exception:
            return None

    def _synced(self, replica: int) -> bool:
        try:
            return self.node(replica).info("replication").get("master_link_status") == "up"
        except Exception:
            return False

    def _check_alive(self) -> None:
        for port, proc in self.procs.items():
            if not proc.running:
                raise RuntimeError(f"process on :{port} exited with {proc.proc.returncode}\n{self.logs()}")

    def _wait(self, ready, timeout: float, what: str) -> None:
        def alive_and_ready() -> bool:
            self._check_alive()
            return ready()

        try:
            wait_for(alive_and_ready, timeout=timeout, interval=0.05, description=what)
        except TimeoutError:
            raise TimeoutError(f"no {what} after {timeout} s\n{self.logs()}") from None

    def _wait_ready(self, primary: int, timeout: float) -> None:
        """Every sentinel reports the primary, sees every replica up and the other sentinels;
        every replica's link to the primary is up (a failover needs a synced replica)."""
        want_replicas = len(self.data_ports) - 1
        want_sentinels = len(self.sentinel_ports) - 1

        def ready() -> bool:
            self._check_alive()
            for port in self.data_ports[1:]:
                if self.node(port).info("replication").get("master_link_status") != "up":
                    raise LookupError(f"replica :{port} not in sync")
            for s in self.sentinel_ports:
                client = self.sentinel(s)
                if self._reported_primary(s) != primary:
                    raise LookupError(f"sentinel :{s} does not report :{primary}")
                replicas = [r for r in client.execute_command("SENTINEL", "replicas", SERVICE)
                            if "s_down" not in _fields(r).get("flags", "")
                            and "disconnected" not in _fields(r).get("flags", "")]
                if len(replicas) < want_replicas:
                    raise LookupError(f"sentinel :{s} sees {len(replicas)} of {want_replicas} replicas")
                seen = len(client.execute_command("SENTINEL", "sentinels", SERVICE))
                if seen < want_sentinels:
                    raise LookupError(f"sentinel :{s} sees {seen} of {want_sentinels} other sentinels")
            return True

        import redis

        # LookupError above, or a server still starting: not yet. A process that exited is final.
        try:
            wait_for(ready, timeout=timeout, interval=0.1, description="the sentinel cluster ready",
                     ignore=(LookupError, redis.RedisError, OSError))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None


def _fields(reply) -> dict[str, str]:
    """A SENTINEL replicas entry: a flat [key, value, ...] list (RESP2) or a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))
