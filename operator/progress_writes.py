"""When the operator writes a runner's progress into ``status.progress``: a pure decision.

Every write is an API call and there is a budget of API writes per request, so the rule
is strict: only while Running, at most once per ``KUBESCRIBE_PROGRESS_SECONDS`` (the
caller asks once per period), only when the whole percent went up, and never in a
request's first period: a request that ends within it costs no write beyond its final
status (which carries ``progress: 100`` itself).
"""

from __future__ import annotations

from kubescribe.models import Phase
from kubescribe.progress import Progress

#: 100 belongs to the Succeeded patch: while Running the figure stops at 99.
RUNNING_CAP = 99


def progress_to_write(*, phase: str | None, written: int | None, reported: Progress | None,
                      running_for: float, period: float) -> int | None:
    """The percent to patch now, or None to write nothing.

    Args:
        phase: the request's phase.
        written: the percent already in its status (None: none yet).
        reported: the runner's last report in Redis (None: none yet).
        running_for: seconds since the operator first saw the request Running.
        period: KUBESCRIBE_PROGRESS_SECONDS.
    """
    if phase != Phase.Running.value or reported is None or running_for < period:
        return None
    percent = min(reported.percent, RUNNING_CAP)
    if written is not None and percent <= written:
        return None  # monotonic: a retry that starts over does not move the bar back
    return percent
