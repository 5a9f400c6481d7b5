"""Pool mode: runner outcomes from the Redis done stream, applied to their requests
(``runs.on_pool_outcome`` decides). An entry is acknowledged only once applied, so one
left pending by a crash is applied after the restart, before any new one.
"""

from __future__ import annotations

import logging
import threading

from kubescribe.streams import Finished, WorkQueue

from . import runs
from .applier import Applier
from .kube import Kube

log = logging.getLogger("kubescribe.operator")


class PoolOutcomeHandler:
    """The done stream's consumer (one thread, ``consume``).

    Args:
        applier: writes the transitions; its locks are shared.
        kube: reads the request an outcome is for.
        queue: the Redis work queue whose done stream carries the outcomes.
    """

    def __init__(self, applier: Applier, kube: Kube, queue: WorkQueue):
        self.applier = applier
        self.kube = kube
        self.queue = queue

    def consume(self, stop: threading.Event) -> None:
        """Apply runner outcomes from the done stream; pending ones first after a restart."""
        pending = True  # our own unacknowledged entries first
        backoff = 0.5
        while not stop.is_set():
            try:
                got = self.queue.outcomes("operator", pending=pending, block_ms=2000)
                backoff = 0.5
            except Exception as exc:
                log.warning("reading outcomes failed (%s); retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
                continue
            if pending and not got:
                pending = False
                continue
            for entry_id, done in got:
                try:
                    if done is not None:
                        self.on_outcome(done)
                    self.queue.ack_outcome(entry_id)
                except Exception as exc:  # left pending; retried after a restart
                    log.exception("outcome %s not applied: %s", entry_id, exc)

    def on_outcome(self, done: Finished) -> None:
        with self.applier.lock_for(done.uid):
            body = self.kube.get_request(done.namespace, done.name)
            if body is not None:
                self.applier.apply(body, runs.on_pool_outcome(body, done))
