"""The Redis streams of pooled mode, behind one class: :class:`WorkQueue`.

::

    kubescribe:queue   operator -> runners   group "runners": one runner takes each entry,
                                             acknowledges it only after the outcome is
                                             written; entries of a crashed runner are
                                             reclaimed by another after claim_idle_ms
    kubescribe:done    runners -> operator   group "operator": outcomes, acknowledged
                                             after the request's status is patched

Both streams are trimmed (approximately) to MAXLEN entries so Redis memory stays flat.
Callers never issue stream commands themselves: the operator dispatches and reads
outcomes, a runner takes, renews, retries and finishes work, all through this class.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kubescribe.outcomes import RunnerOutcome

log = logging.getLogger(__name__)

QUEUE_STREAM = "kubescribe:queue"
DONE_STREAM = "kubescribe:done"
RUNNERS_GROUP = "runners"
OPERATOR_GROUP = "operator"
#: A runner renews its claim on the entry it works on this often, so only a dead
#: runner's entries go idle for ``claim_idle_ms``.
HEARTBEAT_SECONDS = 10.0
#: An entry delivered this many times took a runner down with it each time: it is
#: answered as failed instead of crashing the next runner too.
MAX_DELIVERIES = 3
MAXLEN = 100_000


def _text(fields: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()}


@dataclass(frozen=True)
class WorkItem:
    """One request sent to the pool; ``attempt`` counts the transient failures so far."""

    uid: str
    namespace: str
    name: str
    generation: int
    spec: dict[str, Any]
    attempt: int = 0

    def fields(self) -> dict[str, str]:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name,
                "generation": str(self.generation), "spec": json.dumps(self.spec, separators=(",", ":")),
                "attempt": str(self.attempt)}

    @classmethod
    def from_fields(cls, f: dict) -> "WorkItem":
        g = _text(f)
        return cls(uid=g["uid"], namespace=g["namespace"], name=g["name"], generation=int(g["generation"]),
                   spec=json.loads(g["spec"]), attempt=int(g.get("attempt", 0)))


@dataclass(frozen=True)
class Finished:
    """A runner's outcome for one request, as the operator reads it from the done stream."""

    uid: str
    namespace: str
    name: str
    generation: int
    attempts: int
    outcome: RunnerOutcome

    def fields(self) -> dict[str, str]:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name,
                "generation": str(self.generation), "attempts": str(self.attempts),
                "summary": self.outcome.to_json()}

    @classmethod
    def from_fields(cls, f: dict) -> "Finished":
        g = _text(f)
        return cls(uid=g["uid"], namespace=g["namespace"], name=g["name"], generation=int(g["generation"]),
                   attempts=int(g.get("attempts", 1)), outcome=RunnerOutcome.model_validate_json(g["summary"]))

    @classmethod
    def of(cls, item: WorkItem, attempts: int, outcome: RunnerOutcome) -> "Finished":
        return cls(item.uid, item.namespace, item.name, item.generation, attempts, outcome)


@dataclass(frozen=True)
class Delivery:
    """An entry a runner took: its stream id and the work."""

    entry_id: Any
    item: WorkItem


class WorkQueue:
    """The stream protocol of pooled mode.

    Consumer groups are created once per process (and again if Redis lost them, e.g. a
    restart without persistence: the next call after a NOGROUP error recreates them).

    Args:
        client: a ``redis.Redis``.
        claim_idle_ms: an entry taken by a runner that stopped renewing it for this long
            is reclaimed by another runner.
    """

    def __init__(self, client, claim_idle_ms: int = 60000):
        self.client = client
        self.claim_idle_ms = claim_idle_ms
        self._groups: set[tuple[str, str]] = set()

    def _ensure(self, stream: str, group: str) -> None:
        if (stream, group) in self._groups:
            return
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)  # id 0: nothing skipped
        except Exception as exc:  # redis.ResponseError: BUSYGROUP Consumer Group name already exists
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((stream, group))

    def _guarded(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "NOGROUP" in str(exc):
                self._groups.clear()
            raise

    # -- operator -> runners ----------------------------------------------------------
    def dispatch(self, item: WorkItem) -> None:
        self._ensure(QUEUE_STREAM, RUNNERS_GROUP)
        self.client.xadd(QUEUE_STREAM, item.fields(), maxlen=MAXLEN, approximate=True)

    # -- runners ----------------------------------------------------------------------
    def join(self, consumer: str) -> None:
        """Make ``consumer`` in the runners' group now (a :meth:`take` that finds nothing
        makes none), so that whoever counts the group's consumers sees it at once."""
        self._ensure(QUEUE_STREAM, RUNNERS_GROUP)
        self._guarded(self.client.xgroup_createconsumer, QUEUE_STREAM, RUNNERS_GROUP, consumer)

    def take(self, consumer: str, block_ms: int) -> Delivery | None:
        """A reclaimed entry of a dead runner first, else a new one, else None.

        A reclaimed entry delivered more than MAX_DELIVERIES times is answered as failed
        (RunnerCrashed) and acknowledged; a malformed entry is dropped.
        """
        self._ensure(QUEUE_STREAM, RUNNERS_GROUP)
        claimed = self._guarded(self.client.xautoclaim, QUEUE_STREAM, RUNNERS_GROUP, consumer,
                                self.claim_idle_ms, "0-0", count=1)
        entries = [e for e in (claimed[1] if claimed and len(claimed) > 1 else []) if e and e[1]]
        if entries:
            entry_id, fields = entries[0]
            pending = self.client.xpending_range(QUEUE_STREAM, RUNNERS_GROUP, min=entry_id, max=entry_id, count=1)
            deliveries = pending[0]["times_delivered"] if pending else 1
            if deliveries > MAX_DELIVERIES:
                self._give_up(entry_id, fields, deliveries)
                return None
        else:
            got = self._guarded(self.client.xreadgroup, RUNNERS_GROUP, consumer, {QUEUE_STREAM: ">"},
                                count=1, block=block_ms)
            entries = [item for _stream, items in got or [] for item in items]
            if not entries:
                return None
            entry_id, fields = entries[0]
        try:
            return Delivery(entry_id, WorkItem.from_fields(fields))
        except (KeyError, ValueError) as exc:
            log.error("dropping malformed queue entry %s: %s", entry_id, exc)
            self.client.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
            return None

    def _give_up(self, entry_id, fields, deliveries: int) -> None:
        """A poison entry: report it failed and acknowledge it, so no more runners die on it."""
        try:
            item = WorkItem.from_fields(fields)
        except (KeyError, ValueError):
            self.client.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
            return
        self.finish(entry_id, item, deliveries, RunnerOutcome.failure(
            "RunnerCrashed", f"the request was taken by {deliveries} runners and none finished it "
                             "(each crashed or was killed); giving up"))
        log.error("%s/%s given up after %d deliveries", item.namespace, item.name, deliveries)

    def heartbeat(self, consumer: str, entry_id) -> None:
        """Renew ``consumer``'s claim on an entry it is still working on."""
        self.client.xclaim(QUEUE_STREAM, RUNNERS_GROUP, consumer, 0, [entry_id], justid=True)

    def retry(self, entry_id, item: WorkItem) -> None:
        """Queue the item again with one more attempt counted, and release this entry."""
        again = WorkItem(item.uid, item.namespace, item.name, item.generation, item.spec, item.attempt + 1)
        pipe = self.client.pipeline()
        pipe.xadd(QUEUE_STREAM, again.fields(), maxlen=MAXLEN, approximate=True)
        pipe.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
        pipe.execute()

    def finish(self, entry_id, item: WorkItem, attempts: int, outcome: RunnerOutcome) -> None:
        """Write the outcome for the operator and acknowledge the entry, atomically."""
        self._ensure(DONE_STREAM, OPERATOR_GROUP)
        pipe = self.client.pipeline()
        pipe.xadd(DONE_STREAM, Finished.of(item, attempts, outcome).fields(), maxlen=MAXLEN, approximate=True)
        pipe.xack(QUEUE_STREAM, RUNNERS_GROUP, entry_id)
        pipe.execute()

    # -- runners -> operator ----------------------------------------------------------
    def outcomes(self, consumer: str, *, pending: bool, block_ms: int) -> list[tuple[Any, Finished | None]]:
        """Outcomes for the operator: its own unacknowledged ones when ``pending`` (after a
        restart), else new ones. A malformed entry comes back as ``(id, None)``."""
        self._ensure(DONE_STREAM, OPERATOR_GROUP)
        got = self._guarded(self.client.xreadgroup, OPERATOR_GROUP, consumer,
                            {DONE_STREAM: "0" if pending else ">"}, count=100,
                            block=None if pending else block_ms)
        out: list[tuple[Any, Finished | None]] = []
        for _stream, items in got or []:
            for entry_id, fields in items:
                if not fields:
                    continue  # trimmed away while pending
                try:
                    out.append((entry_id, Finished.from_fields(fields)))
                except (KeyError, ValueError) as exc:
                    log.error("malformed outcome %s: %s", entry_id, exc)
                    out.append((entry_id, None))
        return out

    def ack_outcome(self, entry_id) -> None:
        self.client.xack(DONE_STREAM, OPERATOR_GROUP, entry_id)
