"""Progress and checkpoints of a running transcription, in Redis, behind one class.

::

    kubescribe:progress:<request uid>    hash {done, total, at}: seconds of audio behind
                                         the runner, the audio's length, when (epoch s)
    kubescribe:checkpoint:<cache key>    list of finished segments (JSON), in order

Runners have no API rights, so they report here and the operator copies the figure into
``status.progress`` (at most every ``KUBESCRIBE_PROGRESS_SECONDS``). Checkpoints are keyed
by the cache key, not the request: a retried Job, a reclaimed pool entry or another
request for the same audio and settings all resume after the last finished segment.
Both expire on their own (a runner that dies leaves nothing behind for long).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PROGRESS_PREFIX = "kubescribe:progress:"
CHECKPOINT_PREFIX = "kubescribe:checkpoint:"
#: A report older than this belongs to a runner that stopped reporting long ago.
PROGRESS_TTL = 3600
#: Checkpoints live as long as a result would: a retry within a day still resumes.
CHECKPOINT_TTL = 86400


@dataclass(frozen=True)
class Progress:
    """A runner's last report: seconds of audio behind it of ``total_seconds``."""

    done_seconds: float
    total_seconds: float
    at: float = 0.0

    @property
    def percent(self) -> int:
        """Whole percent, rounded down: 100 only when everything is done."""
        if self.total_seconds <= 0:
            return 0
        return max(0, min(100, int(100 * self.done_seconds / self.total_seconds)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RunBoard:
    """The progress reports and segment checkpoints of running transcriptions.

    Args:
        client: a ``redis.Redis``.
    """

    def __init__(self, client):
        self.client = client

    # -- progress: runner -> operator ---------------------------------------------------
    def report(self, uid: str, done_seconds: float, total_seconds: float) -> None:
        pipe = self.client.pipeline()
        pipe.hset(PROGRESS_PREFIX + uid, mapping={"done": f"{done_seconds:.3f}", "total": f"{total_seconds:.3f}",
                                                  "at": f"{time.time():.3f}"})
        pipe.expire(PROGRESS_PREFIX + uid, PROGRESS_TTL)
        pipe.execute()

    def progress(self, uids: Iterable[str]) -> dict[str, Progress]:
        """The last report of each request that has one (one round trip for all)."""
        uids = list(uids)
        if not uids:
            return {}
        pipe = self.client.pipeline()
        for uid in uids:
            pipe.hgetall(PROGRESS_PREFIX + uid)
        out: dict[str, Progress] = {}
        for uid, raw in zip(uids, pipe.execute()):
            got = {_text(k): _text(v) for k, v in (raw or {}).items()}
            try:
                out[uid] = Progress(float(got["done"]), float(got["total"]), float(got.get("at", 0)))
            except (KeyError, ValueError):
                continue
        return out

    def forget(self, uid: str) -> None:
        self.client.delete(PROGRESS_PREFIX + uid)

    # -- checkpoints: runner -> a later runner ----------------------------------------------
    def checkpoint(self, cache_key: str, segment: dict[str, Any]) -> None:
        """Append one finished segment."""
        pipe = self.client.pipeline()
        pipe.rpush(CHECKPOINT_PREFIX + cache_key, json.dumps(segment, separators=(",", ":"), ensure_ascii=False))
        pipe.expire(CHECKPOINT_PREFIX + cache_key, CHECKPOINT_TTL)
        pipe.execute()

    def checkpointed(self, cache_key: str) -> list[dict[str, Any]]:
        """The segments finished so far, in order; a damaged entry ends the list there
        (what follows it would leave a gap)."""
        out: list[dict[str, Any]] = []
        for raw in self.client.lrange(CHECKPOINT_PREFIX + cache_key, 0, -1) or []:
            try:
                seg = json.loads(raw)
                float(seg["start"]), float(seg["end"]), seg["text"]
            except (ValueError, KeyError, TypeError):
                break
            out.append(seg)
        return out

    def drop_checkpoint(self, cache_key: str) -> None:
        self.client.delete(CHECKPOINT_PREFIX + cache_key)


class ProgressReporter:
    """A runner's progress callback that writes at most every ``every`` seconds (and
    always the final 100 %), so a long transcription costs Redis a write every few
    seconds, not one per segment. Reporting never fails the transcription.

    Args:
        board: where to report.
        uid: the request's uid.
        every: seconds between reports.
    """

    def __init__(self, board: RunBoard, uid: str, every: float = 2.0, clock=time.monotonic):
        self.board, self.uid, self.every, self.clock = board, uid, every, clock
        self._last: float | None = None
        self.reports = 0

    def __call__(self, done: float, total: float) -> None:
        now = self.clock()
        if done < total and self._last is not None and now - self._last < self.every:
            return
        self._last = now
        try:
            self.board.report(self.uid, done, total)
            self.reports += 1
        except Exception:  # noqa: BLE001 - progress is best effort; the result is what counts
            pass
