"""The operator's parts, built once and each given what it needs, as kueue's
``SetupControllers`` does: one applier shared by a handler per event source, the
admitter, the periodic passes, and what the metrics server asks.

``main`` wires kopf's events and the loops to these; tests build a part alone from the
same constructors (every part takes its collaborators explicitly).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

from kubescribe.metrics import OperatorMetrics
from kubescribe.progress import RunBoard
from kubescribe.settings import OperatorSettings
from kubescribe.store import Store
from kubescribe.streams import WorkQueue

from .admitter import Admitter
from .applier import Applier
from .cache_lookup import cache_answer
from .health import Gauges, Health
from .job_handler import JobHandler
from .kube import Kube
from .notifier import Notifier
from .pool_outcome_handler import PoolOutcomeHandler
from .progress_reporter import ProgressReporter
from .request_handler import RequestHandler
from .resync import Resync
from .retention import Retention


@dataclass
class Controllers:
    applier: Applier
    requests: RequestHandler
    jobs: JobHandler
    pool_outcomes: PoolOutcomeHandler | None  # pool mode only
    resync: Resync
    progress: ProgressReporter
    admitter: Admitter
    gauges: Gauges
    health: Health
    notifier: Notifier


def build(settings: OperatorSettings, store: Store, kube: Kube, metrics: OperatorMetrics) -> Controllers:
    """Every part of one operator, sharing one applier (registry, locks, wake-up)."""
    applier = Applier(settings, kube, store, metrics)
    synced = threading.Event()
    retention = Retention(store, settings.s3_sweep_seconds, upload_max_age=settings.s3_upload_max_age_seconds)
    pool = settings.mode == "pool"
    queue = WorkQueue(store.client, claim_idle_ms=settings.claim_idle_ms) if pool else None
    requests = RequestHandler(applier, kube, store, retention)
    jobs = JobHandler(applier, kube, store, settings)
    gauges = Gauges(applier.registry, store, metrics)
    admitter = Admitter(applier, kube, settings, metrics, partial(cache_answer, store), gauges, synced, queue)
    metrics.gpu_budget.set(settings.gpu_budget)
    return Controllers(
        applier=applier, requests=requests, jobs=jobs,
        pool_outcomes=PoolOutcomeHandler(applier, kube, queue) if queue is not None else None,
        resync=Resync(applier, kube, requests, jobs, retention, settings, metrics, synced),
        progress=ProgressReporter(applier, kube, RunBoard(store.client), metrics, settings.progress_seconds),
        admitter=admitter, gauges=gauges, health=Health(admitter.healthy, store, kube),
        notifier=Notifier(applier, kube, settings))
