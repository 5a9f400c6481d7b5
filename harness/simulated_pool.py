"""Pooled runners simulated the way kwok simulates kubelets: processes that take work from
the real Redis stream through :class:`kubescribe.streams.WorkQueue`, as ``kubescribe-runner
pool`` does (one entry blocking, then what else is queued, up to a batch), hold it for a
set time, and answer every entry with a runner's successful outcome. No model, no audio,
no result in Redis: what is measured is everything around the transcription.

    python -P -m harness.simulated_pool --redis-url URL --consumers 16 --run-seconds 0.5

Each consumer is a thread with its own name in the stream's consumer group, so a process
of 16 consumers stands for 16 pooled runner pods.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from harness.envtest import wait_for
from harness.envtest.kwok import simulated_outcome
from harness.process import ManagedProcess
from kubescribe.streams import QUEUE_STREAM, RUNNERS_GROUP, WorkQueue

REPO = Path(__file__).resolve().parent.parent


def _consume(queue: WorkQueue, consumer: str, run_seconds: float, batch_max: int, stop: threading.Event) -> None:
    outcome = simulated_outcome(run_seconds, "a simulated pooled runner")
    queue.join(consumer)  # at once, so that SimulatedPool.start can count the runners ready
    while not stop.is_set():
        first = queue.take(consumer, block_ms=1000)
        if first is None:
            continue
        batch = [first]
        while len(batch) < batch_max:
            more = queue.take(consumer, block_ms=None)
            if more is None:
                break
            batch.append(more)
        time.sleep(run_seconds)  # the transcription this process stands in for
        for d in batch:
            queue.finish(d.entry_id, d.item, d.item.attempt + 1, outcome)


def main(argv: list[str] | None = None) -> int:
    import redis

    p = argparse.ArgumentParser(prog="python -m harness.simulated_pool")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--consumers", type=int, default=16)
    p.add_argument("--run-seconds", type=float, default=0.5)
    p.add_argument("--batch-max", type=int, default=4)
    p.add_argument("--name", default=f"sim-{os.getpid()}")
    a = p.parse_args(argv)
    client = redis.Redis.from_url(a.redis_url, max_connections=a.consumers + 4)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=_consume, args=(WorkQueue(client), f"{a.name}-{k}", a.run_seconds,
                                                       a.batch_max, stop), daemon=True)
               for k in range(a.consumers)]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        if not all(t.is_alive() for t in threads):
            print("a consumer thread died", file=sys.stderr)
            return 1
    return 0


class SimulatedPool:
    """``processes`` x ``consumers`` simulated pooled runners against ``redis_url``.

    ``start()`` returns once every consumer has joined the stream's consumer group.
    """

    def __init__(self, redis_url: str, workdir: Path, *, processes: int = 4, consumers: int = 16,
                 run_seconds: float = 0.5, batch_max: int = 4):
        self.redis_url = redis_url
        self.total = processes * consumers
        self.procs = [ManagedProcess(f"simulated pool {k}",
                                     [sys.executable, "-P", "-m", "harness.simulated_pool", "--redis-url", redis_url,
                                      "--consumers", str(consumers), "--run-seconds", str(run_seconds),
                                      "--batch-max", str(batch_max), "--name", f"sim{k}"],
                                     workdir / f"simulated-pool-{k}.log", cwd=REPO, stop_grace=5.0)
                      for k in range(processes)]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> "SimulatedPool":
        import redis

        for p in self.procs:
            p.start()
        client = redis.Redis.from_url(self.redis_url)

        def joined() -> bool:
            for p in self.procs:
                p.check_alive()
            try:
                return len(client.xinfo_consumers(QUEUE_STREAM, RUNNERS_GROUP)) >= self.total
            except redis.ResponseError:  # the group is made by the first take
                return False

        try:
            wait_for(joined, timeout=60, interval=0.1, description=f"{self.total} simulated runners to join")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
