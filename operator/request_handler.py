"""Watch events of TranscriptionRequests: keep the registry, and reconcile a request that
is new, edited, or left Pending (validate, look the cache up, queue): ``intake.on_seen``
decides, the applier writes.
"""

from __future__ import annotations

from kubescribe.models import TERMINAL_PHASES, InvalidSpec, Phase, TranscriptionSpec, parse_spec
from kubescribe.cache_layout import known_cache_key
from kubescribe.store import Store
from kubescribe.url_guard import parse_networks

from . import intake
from .applier import Applier
from .cache_lookup import cache_answer
from .intake import NOT_ASKED
from .kube import Kube
from .lifecycle import needs_reconcile, stale_job
from .notify_plan import admission_refusal
from .registry import entry_from_body
from .retention import Retention


class RequestHandler:
    """One per operator; every method may run on several threads at once.

    Args:
        applier: writes the transitions; its registry and locks are shared.
        kube: reads nothing here, deletes a Job made for an older spec.
        store: the result cache, asked when a request is first seen.
        retention: releases a deleted request's hold on its result and uploaded audio.
    """

    def __init__(self, applier: Applier, kube: Kube, store: Store, retention: Retention):
        self.applier = applier
        self.kube = kube
        self.store = store
        self.retention = retention
        self.sink_allow = parse_networks(applier.settings.audio_url_allow_cidrs)
        # A new request's Queued status waits for the admission pass (``intake.on_seen``);
        # not under Kueue, where every request is Queued on its Job first.
        self.hold = applier.settings.admission_engine != "kueue"

    def on_request(self, event_type: str | None, body: dict) -> None:
        """Every watch event of a request: keep the registry, reconcile when needed."""
        a = self.applier
        uid = body["metadata"]["uid"]
        with a.lock_for(uid):
            if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
                a.registry.remove(uid)
                a.wake()
                if event_type == "DELETED":
                    self.retention.on_deleted(body)
                return
            entry = entry_from_body(body)
            if not a.registry.upsert_if_newer(entry):
                return  # an older view than one already handled (e.g. by the resync)
            if needs_reconcile(entry):
                self.reconcile(body)
            elif entry.phase in TERMINAL_PHASES or entry.phase == Phase.Queued.value:
                a.wake()

    def reconcile(self, body: dict) -> None:
        """A new request, a changed spec, or one left Pending: validate, cache, queue."""
        a = self.applier
        meta = body["metadata"]
        with a.lock_for(meta["uid"]):
            seen = a.registry.get(meta["uid"])
            if (seen is not None and seen.current and seen.phase not in (None, Phase.Pending.value)
                    and seen.generation >= (meta.get("generation") or 1)):
                return  # handled already by another path since this body was read
            old_job = stale_job(body)
            if old_job:
                self.kube.delete_job(meta["namespace"], old_job)  # it works on the old spec
            try:
                spec: TranscriptionSpec | InvalidSpec = parse_spec(body.get("spec") or {})
            except InvalidSpec as exc:
                spec = exc
            refused = admission_refusal(spec, self.sink_allow) if isinstance(spec, TranscriptionSpec) else None
            if refused:
                spec = InvalidSpec(refused)  # a notification sink the URL guard refuses
            key, sha = known_cache_key(spec) if isinstance(spec, TranscriptionSpec) else (None, None)
            cache = cache_answer(self.store, key, spec, body) if isinstance(spec, TranscriptionSpec) else NOT_ASKED
            a.apply(body, intake.on_seen(body, spec, key, sha, cache, hold=self.hold))
