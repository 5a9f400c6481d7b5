"""Status documents: merge patches of ``status``, built through the TranscriptionStatus
model and the Phase enum, with conditions in the metav1.Condition shape."""

from __future__ import annotations

from typing import Any

from kubescribe.models import Phase, TranscriptionStatus, now_rfc3339
from kubescribe.outcomes import RunnerOutcome

#: Condition types. Ready follows kstatus: False from the first moment, so Flux and
#: Argo CD never mistake a request in progress for a finished one.
READY = "Ready"
ADMITTED = "Admitted"
CACHED = "Cached"


def patch(**fields: Any) -> dict[str, Any]:
    """A status merge patch from TranscriptionStatus fields (snake_case). A field given as
    ``None`` is kept, as JSON null: in a merge patch that clears what an earlier run left.
    Validation refuses a field the CRD does not have, or a phase outside the enum."""
    return TranscriptionStatus.model_validate(fields).model_dump(by_alias=True, mode="json", exclude_unset=True)


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


def _status(body: dict) -> dict:
    return body.get("status") or {}


def pending(body: dict, reason: str, message: str) -> dict:
    gen = body["metadata"].get("generation")
    conds = set_condition(_status(body).get("conditions"), READY, False, reason, message, gen)
    return patch(phase=Phase.Pending, reason=reason, message=message, conditions=conds)


def queued(body: dict, *, cache_key: str | None, audio_sha: str | None, position: int | None = None) -> dict:
    status = _status(body)
    gen = body["metadata"].get("generation")
    conds = set_condition(status.get("conditions"), READY, False, "Queued",
                          "waiting for a runner slot in the GPU budget", gen)
    conds = set_condition(conds, ADMITTED, False, "Queued", "waiting for a runner slot", gen)
    same_generation = status.get("observedGeneration") == gen and status.get("queuedAt")
    return patch(
        phase=Phase.Queued, reason="Queued", message="waiting for a runner slot in the GPU budget",
        observed_generation=gen, queued_at=status.get("queuedAt") if same_generation else now_rfc3339(),
        queue_position=position, cache_key=cache_key, audio_sha256=audio_sha, conditions=conds,
        job_name=None, started_at=None, completed_at=None, cached=None, outputs=None, timings=None,
    )


def running(body: dict, *, reason: str, message: str, job_name: str | None) -> dict:
    """Admitted: a runner Job was created (``job_name``) or the request went to the pool.

    A new Job starts its first pod at once, so ``attempts`` is 1 from here: the Job's
    first pod needs no status write of its own, only a retry does."""
    gen = body["metadata"].get("generation")
    conds = set_condition(_status(body).get("conditions"), ADMITTED, True, reason, message, gen)
    conds = set_condition(conds, READY, False, "Running",
                          "transcribing" if job_name else "waiting for a pooled runner", gen)
    return patch(phase=Phase.Running, reason=reason, message=message, job_name=job_name,
                 started_at=now_rfc3339(), queue_position=None, attempts=1 if job_name else 0,
                 conditions=conds)


def failed(body: dict, reason: str, message: str, *, attempts: int | None = None) -> dict:
    gen = body["metadata"].get("generation")
    conds = set_condition(_status(body).get("conditions"), READY, False, reason, message, gen)
    fields: dict[str, Any] = dict(phase=Phase.Failed, reason=reason, message=message, observed_generation=gen,
                                  completed_at=now_rfc3339(), queue_position=None, conditions=conds)
    if attempts is not None:
        fields["attempts"] = attempts
    return patch(**fields)


def succeeded(body: dict, outcome: RunnerOutcome, *, message: str, attempts: int | None = None,
              pod_start: float | None = None) -> dict:
    gen = body["metadata"].get("generation")
    cached = outcome.cached
    conds = set_condition(_status(body).get("conditions"), READY, True, "Succeeded", message, gen)
    conds = set_condition(conds, CACHED, cached, "CacheHit" if cached else "Transcribed",
                          "answered from the result cache" if cached else "transcribed by a runner", gen)
    fields: dict[str, Any] = dict(
        phase=Phase.Succeeded, reason="CacheHit" if cached else "Transcribed", message=message,
        observed_generation=gen, completed_at=now_rfc3339(), queue_position=None, cached=cached,
        conditions=conds, progress=100,
    )
    for name in ("cache_key", "result_key", "audio_sha256", "language", "language_probability",
                 "audio_duration_seconds", "processing_seconds", "realtime_factor", "decoding", "text_preview",
                 "outputs"):
        value = getattr(outcome, name)
        if value is not None:
            fields[name] = value
    t = outcome.timings
    if t is not None and not cached:  # what a runner's task timed; null: an earlier run's are gone
        spent = {"pod_start": pod_start, "startup": t.startup, "model_load": t.model_load, "fetch": t.fetch,
                 "transcription": t.transcription}
        fields["timings"] = {k: v for k, v in spent.items() if v is not None}
    else:
        fields["timings"] = None
    if fields.get("text_preview"):
        fields["text_preview"] = fields["text_preview"][:200]
    if attempts is not None:
        fields["attempts"] = attempts
    return patch(**fields)


def progress(percent: int) -> dict:
    return patch(progress=percent)


def attempts(count: int) -> dict:
    return patch(attempts=count)


def queue_position(position: int | None, reason: str, message: str) -> dict:
    return patch(queue_position=position, reason=reason, message=message)
