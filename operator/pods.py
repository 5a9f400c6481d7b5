"""Runner pods that will never start: a pure decision, like ``scheduler.plan``.

The Job controller only counts a pod as failed once it has run and exited. A pod whose
image cannot be pulled, or whose container cannot even be created, stays Pending for
ever, and the request with it. The kubelet says why in the container's ``waiting``
state; this module reads that and decides when to give up, so a typo in the runner
image ends the request as ``Failed`` with a reason naming the image, in bounded time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

#: Waiting reasons that no amount of waiting fixes: the kubelet will not pull
#: (pull policy Never) or the name cannot be parsed. Decided at once.
FINAL_WAITING = frozenset({"ErrImageNeverPull", "InvalidImageName"})
#: Waiting reasons that may clear up (a registry outage, a Secret or ConfigMap created a
#: little later): given ``grace`` seconds from the pod's creation first.
TRANSIENT_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                               "CreateContainerError", "RunContainerError"})
IMAGE_REASONS = frozenset({"ErrImageNeverPull", "InvalidImageName", "ErrImagePull", "ImagePullBackOff"})


@dataclass(frozen=True)
class StuckPod:
    """Why a runner pod will not start: ``reason`` for the request status, and a message."""

    reason: str
    message: str
    pod: str


def _parse_time(value: Any) -> Optional[datetime]:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def stuck_pod(pods: Iterable[dict[str, Any]], *, container: str, now: datetime, grace: float) -> Optional[StuckPod]:
    """The first pod whose ``container`` cannot start and will not, or ``None``.

    Args:
        pods: the Job's pods as API dicts (``sanitize_for_serialization`` form).
        container: the runner container's name.
        now: the current time (timezone-aware), passed in so the decision is testable.
        grace: seconds a transient reason (ErrImagePull, ImagePullBackOff, a config error)
            may last, counted from the pod's creation, before it is final. Image pulls of
            a multi-GB CUDA image legitimately take minutes, but the kubelet reports a
            slow pull as ``ContainerCreating``, never as these reasons.
    """
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        image = next((c.get("image", "") for c in (pod.get("spec") or {}).get("containers") or []
                      if c.get("name") == container), "")
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") != container:
                continue
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason") or ""
            if why not in FINAL_WAITING and why not in TRANSIENT_WAITING:
                continue
            created = _parse_time(meta.get("creationTimestamp"))
            age = (now - created).total_seconds() if created else 0.0
            if why in TRANSIENT_WAITING and age < grace:
                continue
            detail = (waiting.get("message") or "").strip()
            if why in IMAGE_REASONS:
                msg = f"runner image {image or cs.get('image') or '?'} cannot be pulled ({why})"
                reason = "ImagePullFailed"
            else:
                msg = f"runner container cannot start ({why})"
                reason = "RunnerStartFailed"
            if why in TRANSIENT_WAITING:
                msg += f" for {age:.0f}s"
            return StuckPod(reason=reason, message=msg + (f": {detail[:300]}" if detail else ""),
                            pod=meta.get("name", ""))
    return None
