"""The Redis streams of pooled mode: requests to runners, outcomes back to the operator.

::

    kubescribe:queue   operator -> runners   group "runners": one runner takes each entry,
                                             acknowledges it only after the result is
                                             written; entries of a crashed runner are
                                             reclaimed by another after CLAIM_IDLE_MS
    kubescribe:done    runners -> operator   group "operator": outcomes, acknowledged
                                             after the request's status is patched

Both streams are trimmed (approximately) to MAXLEN entries so Redis memory stays flat.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

QUEUE_STREAM = "kubescribe:queue"
DONE_STREAM = "kubescribe:done"
RUNNERS_GROUP = "runners"
OPERATOR_GROUP = "operator"
#: A runner's entry is reclaimable after this long without a heartbeat. Runners renew
#: their claim every HEARTBEAT_SECONDS while they transcribe, so only a dead runner's
#: entries go idle this long.
CLAIM_IDLE_MS = int(os.environ.get("KUBESCRIBE_CLAIM_IDLE_MS", "60000"))
HEARTBEAT_SECONDS = 10.0
#: An entry delivered this many times took a runner down with it each time: it is
#: answered as failed instead of crashing the next runner too.
MAX_DELIVERIES = 3
MAXLEN = 100_000


def ensure_group(client, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; id 0 so nothing is skipped."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except Exception as exc:  # redis.ResponseError: BUSYGROUP Consumer Group name already exists
        if "BUSYGROUP" not in str(exc):
            raise


@dataclass(frozen=True)
class WorkItem:
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
        g = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in f.items()}
        return cls(uid=g["uid"], namespace=g["namespace"], name=g["name"], generation=int(g["generation"]),
                   spec=json.loads(g["spec"]), attempt=int(g.get("attempt", 0)))


def outcome_fields(item: WorkItem, summary: dict[str, Any], attempts: int) -> dict[str, str]:
    return {"uid": item.uid, "namespace": item.namespace, "name": item.name,
            "generation": str(item.generation), "attempts": str(attempts),
            "summary": json.dumps(summary, separators=(",", ":"), ensure_ascii=False)}


def parse_outcome(f: dict) -> dict[str, Any]:
    g = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in f.items()}
    return {"uid": g["uid"], "namespace": g["namespace"], "name": g["name"],
            "generation": int(g["generation"]), "attempts": int(g.get("attempts", 1)),
            "summary": json.loads(g["summary"])}
