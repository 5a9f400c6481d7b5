"""The API server's audit log, read as the writes it records: who wrote which
TranscriptionRequests, Jobs and Events. Tests and the scale benchmark count writes
per actor with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

#: Audit policy recording who wrote (create, update, patch, delete) TranscriptionRequests,
#: Jobs and Events at Metadata level (no bodies), status patches of requests with their
#: request body (small: what changed), and nothing else.
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
WRITES_AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Request", "verbs": ["patch", "update"],
         "resources": [{"group": "kubescribe.io", "resources": ["transcriptionrequests/status"]}]},
        {"level": "Metadata", "verbs": WRITE_VERBS,
         "resources": [{"group": "kubescribe.io", "resources": ["transcriptionrequests"]},
                       {"group": "batch", "resources": ["jobs"]},
                       {"group": "", "resources": ["events"]},
                       {"group": "events.k8s.io", "resources": ["events"]}]},
        {"level": "None"},
    ],
}



@dataclass(frozen=True)
class AuditWrite:
    """One write from the audit log: who, what, where."""

    user: str
    verb: str
    resource: str  # "transcriptionrequests", "transcriptionrequests/status", "jobs", "events"
    namespace: str
    name: str
    code: int
    body: Optional[dict[str, Any]] = None  # the request body, where the policy records it

    @property
    def status_fields(self) -> frozenset[str]:
        """The status fields a status patch set (empty for other writes)."""
        return frozenset(((self.body or {}).get("status") or {}))


def audit_writes(events: Iterable[dict[str, Any]], *, user: Optional[str] = None,
                 namespace: Optional[str] = None) -> list[AuditWrite]:
    """The successful writes (2xx) among audit ``events``, by ``user`` and in ``namespace``
    when given. A refused or conflicting write (4xx) changed nothing in etcd."""
    out = []
    for ev in events:
        ref = ev.get("objectRef") or {}
        if ev.get("verb") not in WRITE_VERBS or ev.get("stage") != "ResponseComplete":
            continue
        code = int((ev.get("responseStatus") or {}).get("code") or 0)
        if not 200 <= code < 300:
            continue
        who = (ev.get("user") or {}).get("username", "")
        if (user is not None and who != user) or (namespace is not None and ref.get("namespace") != namespace):
            continue
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.append(AuditWrite(who, ev["verb"], resource, ref.get("namespace", ""), ref.get("name", ""), code,
                              ev.get("requestObject")))
    return out
