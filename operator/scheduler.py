"""Admission under the GPU budget: who runs next, and where everyone is in the queue.

Pure functions over the registry's entries (``registry``): ``plan`` chooses who is
admitted on this pass, ``position_updates`` which queue positions are worth a write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubescribe.models import Phase

from . import status as st
from .lifecycle import age_seconds
from .registry import Entry

#: Queue-position status patches per admission pass. Positions shift by one for everyone
#: behind an admitted request; patching all of a long queue on every admission would be
#: O(n^2) API writes. The head is always exact, the tail catches up over the next passes.
POSITION_PATCHES_PER_STEP = 50


def queue_order(entry: Entry) -> tuple:
    """Higher priority first, then oldest first; the name breaks ties deterministically."""
    return (-entry.priority, entry.created, entry.namespace, entry.name)


@dataclass(frozen=True)
class Plan:
    admit: list[Entry]
    positions: dict[str, int]  # uid -> 1-based position among those still queued
    waiting_for_identical: set[str]  # uids held back: an identical request is running
    used_slots: int


def plan(entries: Iterable[Entry], budget: int) -> Plan:
    """Choose the queued requests to admit now.

    A request admitted by this process counts against the budget from the moment its
    registry entry is marked Running, before the watch brings the status back.

    Strict order: when the head of the queue needs more slots than are free, nothing
    behind it jumps ahead (no starvation of multi-GPU requests). A request whose cache
    key matches a running one waits, and is answered from the cache when that finishes.
    """
    entries = list(entries)
    used = sum(e.slots for e in entries if e.phase == "Running")
    busy_keys = {e.cache_key for e in entries if e.cache_key and e.phase == "Running" and e.current}
    queued = sorted((e for e in entries if e.phase == "Queued" and e.current), key=queue_order)
    admit: list[Entry] = []
    held: set[str] = set()
    free = budget - used
    blocked = False
    for e in queued:
        if e.cache_key and e.cache_key in busy_keys:
            held.add(e.uid)
            continue
        if not blocked and e.slots <= free:
            admit.append(e)
            free -= e.slots
            if e.cache_key:
                busy_keys.add(e.cache_key)
        else:
            blocked = True
    admitted = {e.uid for e in admit}
    positions = {}
    pos = 0
    for e in queued:
        if e.uid not in admitted:
            pos += 1
            positions[e.uid] = pos
    return Plan(admit, positions, held, used + sum(e.slots for e in admit))


def position_updates(entries: list[Entry], p: Plan, limit: int = POSITION_PATCHES_PER_STEP,
                     max_position: int | None = None, *, min_wait: float = 0.0, now: datetime | None = None,
                     ) -> tuple[list[tuple[Entry, dict[str, Any]]], bool]:
    """Queue-position patches for this pass, front of the queue first, at most ``limit``;
    and whether more are left for the next pass.

    Only the first ``max_position`` places are shown (None: all): every admission moves
    everyone behind it up by one, so numbering a long queue costs a write per waiting
    request per admission. Only a request that has waited ``min_wait`` seconds since it
    was created gets a number: one admitted within that time costs no position write at
    all. A request that had a place and fell behind the shown ones (higher priorities
    arrived) has it cleared, so no stale number stays on it.
    """
    shown = (lambda pos: True) if max_position is None else (lambda pos: pos <= max_position)
    stale = []
    for e in entries:
        if not (e.phase == Phase.Queued.value and e.current and e.uid in p.positions):
            continue
        pos = p.positions[e.uid]
        want = pos if shown(pos) else None
        if want is not None and e.queue_position is None and min_wait > 0:
            waited = age_seconds(e.created, now)
            if waited is None or waited < min_wait:
                continue  # it may well be admitted before anyone looks
        if want != e.queue_position:
            stale.append((pos, want, e))
    stale.sort(key=lambda t: t[0])
    out = []
    for pos, want, e in stale[:limit]:
        if want is None:
            doc = st.queue_position(None, "Queued", "waiting for a runner slot in the GPU budget")
        elif e.uid in p.waiting_for_identical:
            doc = st.queue_position(pos, "WaitingForIdentical",
                                    "an identical request is running; its result will answer this one")
        else:
            doc = st.queue_position(pos, "Queued", f"position {pos} in the queue")
        out.append((e, doc))
    return out, len(stale) > limit
