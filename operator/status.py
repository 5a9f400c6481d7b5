"""Status documents, conditions in the metav1.Condition shape, and Events."""

from __future__ import annotations

import logging
from typing import Any

from kubescribe.models import now_rfc3339

log = logging.getLogger(__name__)

#: Condition types. Ready follows kstatus: False from the first moment, so Flux and
#: Argo CD never mistake a request in progress for a finished one.
READY = "Ready"
ADMITTED = "Admitted"
CACHED = "Cached"


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type_`` set; keeps lastTransitionTime when the
    status did not change, as metav1.Condition requires."""
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in (conditions or [])]
    for c in out:
        if c.get("type") == type_:
            if c.get("status") != status_s:
                c["lastTransitionTime"] = now_rfc3339()
            c.update(status=status_s, reason=reason, message=message[:32000])
            if generation is not None:
                c["observedGeneration"] = generation
            return out
    cond = {"type": type_, "status": status_s, "reason": reason, "message": message[:32000],
            "lastTransitionTime": now_rfc3339()}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return out


def queued(body: dict, *, cache_key: str | None, audio_sha: str | None, position: int | None = None) -> dict:
    status = body.get("status") or {}
    gen = body["metadata"].get("generation")
    conds = set_condition(status.get("conditions"), READY, False, "Queued",
                          "waiting for a runner slot in the GPU budget", gen)
    conds = set_condition(conds, ADMITTED, False, "Queued", "waiting for a runner slot", gen)
    return {
        "phase": "Queued",
        "reason": "Queued",
        "message": "waiting for a runner slot in the GPU budget",
        "observedGeneration": gen,
        "queuedAt": status.get("queuedAt") if status.get("observedGeneration") == gen and status.get("queuedAt") else now_rfc3339(),
        "queuePosition": position,
        "cacheKey": cache_key,
        "audioSha256": audio_sha,
        "conditions": conds,
        "jobName": None,
        "startedAt": None,
        "completedAt": None,
        "cached": None,
    }


def failed(body: dict, reason: str, message: str) -> dict:
    status = body.get("status") or {}
    gen = body["metadata"].get("generation")
    conds = set_condition(status.get("conditions"), READY, False, reason, message, gen)
    return {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
        "completedAt": now_rfc3339(),
        "queuePosition": None,
        "conditions": conds,
    }


def succeeded(body: dict, summary: dict[str, Any], *, cached: bool, message: str) -> dict:
    status = body.get("status") or {}
    gen = body["metadata"].get("generation")
    conds = set_condition(status.get("conditions"), READY, True, "Succeeded", message, gen)
    conds = set_condition(conds, CACHED, cached, "CacheHit" if cached else "Transcribed",
                          "answered from the result cache" if cached else "transcribed by a runner", gen)
    out = {
        "phase": "Succeeded",
        "reason": "CacheHit" if cached else "Transcribed",
        "message": message,
        "observedGeneration": gen,
        "completedAt": now_rfc3339(),
        "queuePosition": None,
        "cached": cached,
        "conditions": conds,
    }
    for src, dst in (
        ("cacheKey", "cacheKey"), ("resultKey", "resultKey"), ("audioSha256", "audioSha256"),
        ("language", "language"), ("languageProbability", "languageProbability"),
        ("audioDurationSeconds", "audioDurationSeconds"), ("processingSeconds", "processingSeconds"),
        ("realtimeFactor", "realtimeFactor"), ("textPreview", "textPreview"),
    ):
        if summary.get(src) is not None:
            out[dst] = summary[src]
    if out.get("textPreview"):
        out["textPreview"] = out["textPreview"][:200]
    return out
