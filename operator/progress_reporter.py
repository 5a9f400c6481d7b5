"""Runners' progress reports (kept in Redis by kubescribe.progress) into each Running
request's ``status.progress`` and the per-request progress gauge. When a percent is worth
a status write is ``progress_writes.progress_to_write``'s decision.
"""

from __future__ import annotations

import logging
import time

from kubescribe.metrics import OperatorMetrics
from kubescribe.models import Phase
from kubescribe.progress import RunBoard

from . import status
from .applier import Applier
from .kube import Kube
from .progress_writes import progress_to_write

log = logging.getLogger("kubescribe.operator")


class ProgressReporter:
    """One pass per ``period`` seconds (``report``), from the progress loop in ``main``.

    Args:
        applier: its registry says who is Running; its locks guard the writes.
        kube: patches ``status.progress``.
        board: the runners' reports in Redis.
        metrics: the per-request progress gauge.
        period: KUBESCRIBE_PROGRESS_SECONDS, the least time between two writes.
    """

    def __init__(self, applier: Applier, kube: Kube, board: RunBoard, metrics: OperatorMetrics, period: float):
        self.applier = applier
        self.kube = kube
        self.board = board
        self.metrics = metrics
        self.period = period
        self._running_since: dict[str, float] = {}  # uid -> when first seen Running
        self._written: dict[str, int] = {}  # uid -> percent in its status
        self._series: set[tuple[str, str, str]] = set()  # gauge series: (namespace, name, uid)

    def report(self) -> None:
        """Runners' reports into status.progress (when ``progress_to_write`` says so)
        and the per-request gauge, whose series go away with the requests that leave
        Running."""
        now = time.monotonic()
        running = {e.uid: e for e in self.applier.registry.snapshot() if e.phase == Phase.Running.value}
        for uid in list(self._running_since):
            if uid not in running:
                self._running_since.pop(uid, None)
                self._written.pop(uid, None)
        for labels in list(self._series):
            if labels[2] not in running:
                self.metrics.request_progress_ratio.remove(labels[0], labels[1])
                self._series.discard(labels)
        if not running:
            return
        try:
            reports = self.board.progress(running)
        except Exception as exc:  # Redis down: no progress this period
            log.debug("progress reports unavailable: %s", exc)
            return
        for uid, e in running.items():
            since = self._running_since.setdefault(uid, now)
            got = reports.get(uid)
            if got is not None:
                self.metrics.request_progress_ratio.labels(e.namespace, e.name).set(got.percent / 100)
                self._series.add((e.namespace, e.name, uid))
            percent = progress_to_write(phase=e.phase, written=self._written.get(uid), reported=got,
                                        running_for=now - since, period=self.period)
            if percent is None:
                continue
            with self.applier.lock_for(uid):
                now_entry = self.applier.registry.get(uid)
                if now_entry is None or now_entry.phase != Phase.Running.value:
                    continue  # ended meanwhile: its final status says 100 (or why not)
                if self.kube.patch_status(e.namespace, e.name, status.progress(percent)) is not None:
                    self._written[uid] = percent
