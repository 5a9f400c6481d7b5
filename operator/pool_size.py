"""How many pooled runners there should be (pool mode): a pure decision, like
``scheduler.plan``, from the registry's entries and the pool's Jobs.
"""

from __future__ import annotations

import math
from typing import Any

from kubescribe.models import Phase

from .registry import Entry


def active_pool_jobs(jobs: list[dict[str, Any]]) -> int:
    """Pooled runner Jobs that have not finished."""
    return sum(1 for j in jobs if not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                          for c in (j.get("status") or {}).get("conditions") or []))


def desired_runners(entries: list[Entry], max_runners: int, per_runner: int) -> int:
    """Pooled runners the dispatched work asks for, within the budget."""
    outstanding = sum(1 for e in entries if e.phase == Phase.Running.value and not e.job_name)
    return min(max_runners, math.ceil(outstanding / per_runner))

