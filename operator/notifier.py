"""Delivers the event of every finished request to its sinks, at least once.

Level-triggered like the rest of the operator: every watch event of a request (the
phase change to Succeeded or Failed, the operator's own re-list after a restart, its
own status writes) goes to :meth:`Notifier.consider`, which only looks at the object and
schedules the request for the time its earliest delivery is due (``notify_plan``
decides). Nothing is remembered in memory that the status does not also say, so an
operator killed between the phase change and the POST delivers after its restart, with
the same event id.

Deliveries run on their own bounded thread pool (``KUBESCRIBE_NOTIFY_WORKERS``), fed by
one scheduler thread: a sink that hangs holds a delivery thread for at most
``KUBESCRIBE_NOTIFY_TIMEOUT_SECONDS`` and never an admission, a watch handler or another
request's lock. One request is delivered by one thread at a time (its sinks in turn),
so its ``status.notifications`` list is written by one writer.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from kubescribe.models import TERMINAL_PHASES, NotificationRecord, NotifySink, parse_spec
from kubescribe.settings import OperatorSettings
from kubescribe.sinks import caller_key, sink_refusal
from kubescribe.url_guard import URLRefused, UrlGuard, open_url

from . import notify_plan as plan
from . import status as st
from .applier import Applier
from .cloudevent import signed_message
from .kube import Kube

log = logging.getLogger("kubescribe.operator")

NOTIFIED = "Notified"


def _doc(record: NotificationRecord) -> dict:
    return record.model_dump(by_alias=True, mode="json", exclude_none=True)


def _sinks_of(body: dict) -> list[NotifySink]:
    """The request's sinks, even when the rest of its spec is invalid (a Failed InvalidSpec
    request still tells its sinks); an invalid sink is left out."""
    try:
        return list(parse_spec(body.get("spec") or {}).notify)
    except ValueError:
        out = []
        for raw in (body.get("spec") or {}).get("notify") or []:
            try:
                out.append(NotifySink.model_validate(raw))
            except ValueError:
                continue
        return out


class Notifier:
    """Schedules and makes deliveries. ``start`` runs the scheduler thread; ``stop`` ends it.

    Args:
        applier: its per-request locks, so a status write of ours never interleaves with a
            transition's; its metrics registry; its ``settings`` (normal Events).
        kube: reads the request and the signing Secret, patches status, posts Events.
        settings: the notification settings and the allow-list of the URL guard.
    """

    def __init__(self, applier: Applier, kube: Kube, settings: OperatorSettings):
        self.applier = applier
        self.kube = kube
        self.guard = UrlGuard.from_settings(settings, purpose="Notification sinks")
        self.timeout = settings.notify_timeout_seconds
        self.signing_key = settings.notify_signing_key
        self.install = [plan.Sink(s.url, tuple(s.events), s.mode)
                        for s in settings.notify_sinks] if settings.notify_signing_key else []
        self.backoff = plan.Backoff(base=settings.notify_backoff_seconds, cap=settings.notify_backoff_cap_seconds,
                                    max_attempts=settings.notify_max_attempts)
        self.metrics = applier.metrics.notifications
        self.pool = ThreadPoolExecutor(settings.notify_workers, thread_name_prefix="notify")
        self._cond = threading.Condition()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, tuple[float, str, str]] = {}  # uid -> (when, namespace, name)
        self._busy: set[str] = set()
        self._stop = threading.Event()

    # -- scheduling --------------------------------------------------------------------
    def consider(self, event_type: str | None, body: dict) -> None:
        """A watch event: schedule the request if a delivery of its event is due or pending."""
        meta = body["metadata"]
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            return
        status = body.get("status") or {}
        phase = status.get("phase")
        if phase not in TERMINAL_PHASES:
            return
        sinks = self._sinks(body, phase)
        if not sinks:
            return
        eid = plan.event_id(meta["uid"], status.get("observedGeneration") or meta.get("generation"), phase)
        records = [NotificationRecord.model_validate(r) for r in status.get("notifications") or []]
        current = [plan.record_for(s, records, eid, phase) for s in sinks]
        when = plan.next_due(current)
        if when is not None:
            self.schedule(meta["uid"], meta["namespace"], meta["name"], when.timestamp())

    def schedule(self, uid: str, namespace: str, name: str, at: float) -> None:
        with self._cond:
            known = self._due.get(uid)
            if known is not None and known[0] <= at:
                return
            self._due[uid] = (at, namespace, name)
            heapq.heappush(self._heap, (at, uid))
            self._cond.notify()

    def start(self) -> "Notifier":
        threading.Thread(target=self._run, name="notify-scheduler", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.time()
                while self._heap and (self._heap[0][1] not in self._due
                                      or self._due[self._heap[0][1]][0] != self._heap[0][0]):
                    heapq.heappop(self._heap)  # superseded by an earlier time
                if not self._heap or self._heap[0][0] > now:
                    self._cond.wait(min(1.0, self._heap[0][0] - now) if self._heap else 1.0)
                    continue
                _, uid = heapq.heappop(self._heap)
                if uid in self._busy:
                    continue  # the delivery running now reschedules what is left
                _, namespace, name = self._due.pop(uid)
                self._busy.add(uid)
            self.pool.submit(self._deliver_safely, uid, namespace, name)

    def _deliver_safely(self, uid: str, namespace: str, name: str) -> None:
        try:
            self.deliver(uid, namespace, name)
        except Exception as exc:  # the API server or Redis away: try again shortly
            log.warning("notifying for %s/%s failed, retrying in 5s: %s", namespace, name, exc)
            self.schedule(uid, namespace, name, time.time() + 5)
        finally:
            with self._cond:
                self._busy.discard(uid)

    # -- delivery ----------------------------------------------------------------------
    def _sinks(self, body: dict, phase: str) -> list[plan.Sink]:
        return plan.sinks_for(_sinks_of(body), self.install, phase)

    def deliver(self, uid: str, namespace: str, name: str) -> None:
        """Every due delivery of one request, then its records in status."""
        body = self.kube.get_request(namespace, name)
        if body is None or body["metadata"]["uid"] != uid:
            return
        status = body.get("status") or {}
        phase = status.get("phase")
        if phase not in TERMINAL_PHASES:
            return
        eid = plan.event_id(uid, status.get("observedGeneration") or body["metadata"].get("generation"), phase)
        records = [NotificationRecord.model_validate(r) for r in status.get("notifications") or []]
        now = datetime.now(timezone.utc)
        updated = []
        for sink in self._sinks(body, phase):
            record = plan.record_for(sink, records, eid, phase)
            if plan.is_due(record, now):
                answer = self._attempt(body, sink, eid)
                record = plan.after_attempt(record, answer, self.backoff, datetime.now(timezone.utc), random.random())
                self._count(record, status.get("completedAt"))
            updated.append(record)
        self._write(body, updated)
        when = plan.next_due(updated)
        if when is not None:
            self.schedule(uid, namespace, name, when.timestamp())

    def _attempt(self, body: dict, sink: plan.Sink, eid: str) -> plan.Answer:
        """One signed POST; what the sink answered."""
        refused = sink_refusal(sink.url, self.guard.allow)
        if refused:
            return plan.Answer(error=refused, refused=True)
        if sink.caller is not None:
            try:
                key = caller_key(self.signing_key, sink.caller)
            except ValueError as exc:
                return plan.Answer(error=str(exc), refused=True)
        elif sink.secret is None:
            key = self.signing_key
        else:
            try:
                key = self.kube.secret_value(body["metadata"]["namespace"], sink.secret.name, sink.secret.key) or ""
            except PermissionError as exc:
                return plan.Answer(error=str(exc), refused=True)
            if not key:
                return plan.Answer(error=f"no key {sink.secret.key!r} in Secret {sink.secret.name}")
        try:
            message = signed_message(body, eid, key, sink.mode)
        except Exception as exc:  # a key that is not base64
            return plan.Answer(error=f"cannot sign with the key of Secret {sink.secret.name if sink.secret else ''}: "
                               f"{exc}", refused=True)
        headers = dict(message.headers, **{"User-Agent": "kubescribe-operator"})
        try:
            with open_url(sink.url, self.guard, timeout=self.timeout, headers=headers, data=message.body) as resp:
                return plan.Answer(code=resp.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return plan.Answer(code=exc.code, error=f"HTTP {exc.code} {exc.reason}")
        except URLRefused as exc:
            return plan.Answer(error=exc.message, refused=True)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return plan.Answer(error=f"no answer: {reason}")

    def _count(self, record: NotificationRecord, completed_at: str | None) -> None:
        outcome = {"Delivered": "delivered", "Pending": "retried"}.get(record.state, "failed")
        self.metrics.total.labels(outcome=outcome).inc()
        if record.state == "Delivered" and completed_at:
            done = datetime.fromisoformat(completed_at.replace("Z", "+00:00"))
            self.metrics.latency.observe(max(0.0, (datetime.now(timezone.utc) - done).total_seconds()))

    def _write(self, body: dict, updated: list[NotificationRecord]) -> None:
        """The records and the Notified condition, written under the request's lock onto
        the status as it is now; a Warning Event for a delivery that newly failed for good."""
        meta = body["metadata"]
        with self.applier.lock_for(meta["uid"]):
            fresh = self.kube.get_request(meta["namespace"], meta["name"])
            if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
                return
            status = fresh.get("status") or {}
            before = {r["sink"]: r for r in status.get("notifications") or []}
            if [before.get(r.sink) for r in updated] == [_doc(r) for r in updated]:
                return  # nothing new (a due time not reached yet)
            state, reason, message = plan.condition(updated)
            conds = st.set_condition(status.get("conditions"), NOTIFIED, state, reason, message,
                                     fresh["metadata"].get("generation"))
            records = plan.merged([NotificationRecord.model_validate(r) for r in before.values()], updated)
            # The list is replaced whole by a merge patch; a record leaves out unset fields.
            patch = dict(st.patch(conditions=conds), notifications=[_doc(r) for r in records])
            if self.kube.patch_status(meta["namespace"], meta["name"], patch) is None:
                return
        for r in updated:
            old = before.get(r.sink) or {}
            if r.state == "Failed" and (old.get("state") != "Failed" or old.get("eventId") != r.event_id):
                self.kube.event(fresh, "Warning", "NotificationFailed",
                                f"event {r.event_id} to {r.sink} failed after {r.attempts} attempts: {r.last_error}")
