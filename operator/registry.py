"""The operator's in-memory view of the requests: one :class:`Entry` per request, fed by
watch events and the applier's own writes, and re-listed by the resync.

The queue is not stored anywhere: it is derived from the TranscriptionRequests
themselves (phase Queued, priority, creation time), so an operator restart loses
nothing; the registry is only where a pass reads it from without a LIST.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Entry:
    namespace: str
    name: str
    uid: str
    generation: int
    phase: str | None
    observed_generation: int | None
    priority: int
    created: str  # RFC 3339, sorts chronologically
    slots: int
    cache_key: str | None = None
    job_name: str | None = None
    queue_position: int | None = None
    resource_version: int = 0
    #: Queued here and not on the server yet: a new request's Queued status is written
    #: only if the next admission pass does not admit it at once (``intake.on_seen``), so
    #: one admitted at once costs one status write less. ``audio_sha`` goes with it, and
    #: the ``body`` it was held on, which that pass admits without reading it again.
    unwritten: bool = False
    audio_sha: str | None = None
    body: dict | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def current(self) -> bool:
        return self.observed_generation == self.generation


def entry_from_body(body: dict) -> Entry:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    gpus = spec.get("gpus")
    if gpus is None:
        gpus = 0 if spec.get("device") == "cpu" else 1
    try:
        priority = int(spec.get("priority") or 0)
    except (TypeError, ValueError):
        priority = 0
    return Entry(
        namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        generation=meta.get("generation") or 1, phase=status.get("phase"),
        observed_generation=status.get("observedGeneration"), priority=priority,
        created=meta.get("creationTimestamp") or "", slots=max(1, int(gpus or 0)),
        cache_key=status.get("cacheKey"), job_name=status.get("jobName"),
        queue_position=status.get("queuePosition"),
        resource_version=_rv(meta.get("resourceVersion")),
    )


def _rv(value) -> int:
    """resourceVersions are opaque strings by contract, but etcd's are increasing integers;
    they only order events here, and an unparsable one simply never wins."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class Registry:
    """Thread-safe map uid -> Entry, the operator's view of every request."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def upsert(self, entry: Entry) -> None:
        with self._lock:
            self._entries[entry.uid] = entry

    def upsert_if_newer(self, entry: Entry) -> bool:
        """Apply a watched object unless the registry already holds that version or a
        later one (a resync LIST can be ahead of a queued watch event)."""
        with self._lock:
            seen = self._entries.get(entry.uid)
            if seen is not None and entry.resource_version and entry.resource_version <= seen.resource_version:
                return False
            self._entries[entry.uid] = entry
            return True

    def remove(self, uid: str) -> None:
        with self._lock:
            self._entries.pop(uid, None)

    def merge(self, entries: Iterable[Entry]) -> None:
        """One page of a LIST: each entry unless the registry holds a newer version, or
        the same version with a Queued status of its own still to write."""
        with self._lock:
            for e in entries:
                seen = self._entries.get(e.uid)
                if seen is None or seen.resource_version < e.resource_version or (
                        seen.resource_version == e.resource_version and not seen.unwritten):
                    self._entries[e.uid] = e

    def drop_unlisted(self, listed: set[str], list_version: int = 0) -> None:
        """After a whole LIST, every page of it given to :meth:`merge`: drop what it did not
        hold, unless newer than the list itself (created after it)."""
        with self._lock:
            self._entries = {uid: e for uid, e in self._entries.items()
                             if uid in listed or (list_version and e.resource_version > list_version)}

    def snapshot(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, uid: str) -> Entry | None:
        with self._lock:
            return self._entries.get(uid)

    def mark(self, uid: str, **changes) -> None:
        with self._lock:
            e = self._entries.get(uid)
            if e is not None:
                self._entries[uid] = replace(e, **changes)
