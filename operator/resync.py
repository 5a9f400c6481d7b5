"""The periodic pass over every request: rebuild the registry, retry what is left Pending,
find Jobs whose end was missed or that were lost, time out pooled work nobody claims,
and delete finished requests past their TTL (``lifecycle.seconds_until_expiry``).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from kubescribe import KIND
from kubescribe.metrics import OperatorMetrics
from kubescribe.models import Phase
from kubescribe.settings import OperatorSettings

from . import runs
from .applier import Applier
from .job_handler import JobHandler
from .kube import Kube
from .lifecycle import needs_reconcile, seconds_until_expiry
from .registry import entry_from_body
from .request_handler import RequestHandler
from .retention import Retention, uploaded_audio

log = logging.getLogger("kubescribe.operator")

#: Requests per page of the resync's LIST.
RESYNC_PAGE = 500

#: The runner Jobs listed this pass, by (namespace, Job name, owner uid): ``None`` for a
#: Job that needs no look (running, healthy), else the Job's metadata and status.
Listed = dict[tuple[str, str, str], dict | None]


class Resync:
    """One pass at a time (``run``), from the resync loop in ``main``.

    Args:
        applier: writes the transitions; its registry is rebuilt here.
        kube: lists requests and Jobs, deletes expired requests.
        requests: reconciles requests that need it.
        jobs: looks at a Running request's Job.
        retention: sweeps the object store when due.
        settings: namespace, TTL, mode, admission engine, workers.
        metrics: counts expired requests.
        synced: set after the first full pass; the admitter waits for it.
    """

    def __init__(self, applier: Applier, kube: Kube, requests: RequestHandler, jobs: JobHandler,
                 retention: Retention, settings: OperatorSettings, metrics: OperatorMetrics, synced: threading.Event):
        self.applier = applier
        self.kube = kube
        self.requests = requests
        self.jobs = jobs
        self.retention = retention
        self.settings = settings
        self.metrics = metrics
        self.synced = synced
        self.pool = settings.mode == "pool"
        self.kueue = settings.admission_engine == "kueue"
        # The phases the install's sinks hear of (they are delivered to only with a key):
        # a finished request stays past its TTL until their delivery is final.
        self.install_events = frozenset(e for sink in settings.notify_sinks for e in sink.events) \
            if settings.notify_signing_key else frozenset()
        self._workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="resync")

    def run(self) -> None:
        """List every request: rebuild the registry, retry Pending ones, find lost Jobs.

        A page at a time (``RESYNC_PAGE`` requests): at 10,000 requests one LIST of them
        all held every body at once, and that transient doubled the operator's peak memory.
        Each page is merged into the registry before its requests are looked at, as the
        whole list used to be; what no page held is dropped at the end."""
        registry = self.applier.registry
        listed: set[str] = set()
        sweeping = self.retention.sweep_due()
        uploads: set[str] = set()  # upload keys the listed requests name (a sweep keeps them)
        list_rv = None
        jobs = self._listed_jobs()
        for page in self.kube.request_pages(self.settings.namespace, RESYNC_PAGE):
            if list_rv is None:
                list_rv = (page.get("metadata") or {}).get("resourceVersion")
            items = page["items"]
            live = [entry_from_body(b) for b in items if not b["metadata"].get("deletionTimestamp")]
            listed.update(e.uid for e in live)
            if sweeping:
                uploads.update(filter(None, (uploaded_audio(b, self.retention.store.objects) for b in items)))
            registry.merge(live)
            self._page(items, jobs)
        registry.drop_unlisted(listed, int(list_rv) if str(list_rv or "").isdigit() else 0)
        if sweeping:
            self.retention.sweep(listed, uploads)
        # Admission starts only after the first full pass: every request found at startup
        # is queued by then, so the budget goes by priority, not by watch-event order.
        self.synced.set()
        self.applier.wake()

    def _listed_jobs(self) -> Listed | None:
        """The runner Jobs that have not succeeded, from one paged LIST: for each, ``None``
        when it needs no look this pass (:func:`runs.quiet`: running, no pod failed,
        every pod ready), else its metadata and status, which the pass looks at instead
        of reading the Job again (at 10,000 requests, reading each starting Job on every
        pass was a tenth of the operator's CPU). Nothing else is kept of a Job: not its
        pod template. A Job missing from the list (created meanwhile, or succeeded: the
        list leaves those out) is read, so none is taken for lost; a Job that changes
        after the listing is seen by its watch event, or by the next pass.

        If the listing fails (None), no Job is looked at this pass: the watch still brings
        every Job's end, and the next pass lists again. Reading each Running request's Job
        instead made an API server too busy to answer the LIST within its timeout busier
        by thousands of reads every pass (a burst of 10,000 requests on two cores)."""
        listed: Listed = {}
        if self.kueue:
            return listed  # on_job reads every Job under Kueue: a suspended Job is not quiet
        try:
            for items in self.kube.job_pages(self.settings.namespace, RESYNC_PAGE):
                for job in items:
                    meta = job.get("metadata") or {}
                    owner = next((o.get("uid") for o in meta.get("ownerReferences") or []
                                  if o.get("kind") == KIND), None)
                    if owner and not meta.get("deletionTimestamp"):
                        meta.pop("managedFields", None)
                        listed[(meta.get("namespace"), meta.get("name"), owner)] = \
                            None if runs.quiet(job) else {"metadata": meta, "status": job.get("status") or {}}
        except Exception as exc:
            log.warning("listing runner Jobs failed; their check waits for the next pass: %s", exc)
            return None
        return listed

    def _page(self, items: list[dict], jobs: Listed | None) -> None:
        """The requests of one page, ``KUBESCRIBE_WORKERS`` at a time: what a pass does
        for each is API calls (a TTL deletion, a Job read), and after a burst thousands
        of them come due in the same pass."""
        now = datetime.now(timezone.utc)
        list(self._workers.map(lambda body: self._one(body, now, jobs), items))

    def _one(self, body: dict, now: datetime, jobs: Listed | None) -> None:
        entry = entry_from_body(body)
        job_key = (entry.namespace, entry.job_name, entry.uid)  # as _listed_jobs keys a Job
        try:
            left = seconds_until_expiry(body, self.settings.request_ttl_seconds, now, self.install_events)
            if left is not None and left <= 0:
                self.expire(body)
            elif needs_reconcile(entry):
                self.requests.reconcile(body)
            elif entry.job_name and entry.phase == Phase.Running.value and (jobs is None or job_key in jobs):
                listed = jobs[job_key] if jobs is not None else None
                if listed is not None:  # listed and not quiet: looked at as listed, not read again
                    self.jobs.on_job("MODIFIED", listed, watched=False)
            elif entry.job_name and (entry.phase == Phase.Running.value
                                     or (self.kueue and entry.phase == Phase.Queued.value)):
                self.jobs.check_job(body, entry.job_name)  # under Kueue a Queued request may wait on its Job
            elif entry.phase == Phase.Running.value and self.pool:
                with self.applier.lock_for(entry.uid):
                    self.applier.apply(body, runs.on_pool_timeout(body, datetime.now(timezone.utc),
                                                                  self.settings.claim_idle_ms / 1000))
        except Exception as exc:
            log.warning("resync of %s/%s failed: %s", entry.namespace, entry.name, exc)

    def expire(self, body: dict) -> None:
        """Delete a finished request whose TTL has passed (found by the resync, so within
        ``resync_seconds`` of it). Its Job, if still there, goes with it by garbage
        collection; its result stays in Redis."""
        meta = body["metadata"]
        with self.applier.lock_for(meta["uid"]):
            if self.kube.delete_request(meta["namespace"], meta["name"], meta["uid"], meta.get("resourceVersion")):
                self.applier.registry.remove(meta["uid"])
                self.metrics.requests_expired_total.inc()
                log.info("deleted %s/%s: finished and past its TTL", meta["namespace"], meta["name"])
