"""One vocabulary for how a request ends: reasons, exit codes and the runner's outcome.

Every reason a request can fail with has one entry in :data:`REASONS`: the error type it
is counted under in ``kubescribe_errors_total``, whether retrying can help, and the exit
code a runner leaves with. The runner picks its exit code here, the Job's
podFailurePolicy fails the Job at once on :data:`EXIT_BAD_INPUT`, the operator counts
errors by the same table, and the CLI exits with the same codes.

A runner's outcome crosses the process boundary (a termination message in Job mode, the
``kubescribe:done`` stream in pool mode) as a :class:`RunnerOutcome`, never as a loose
dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

EXIT_OK = 0
#: CLI: the request ended Failed, or did not finish in time.
EXIT_FAILED = 1
#: CLI: usage error or invalid options (argparse's own code).
EXIT_USAGE = 2
#: Bad input (EX_DATAERR): retrying cannot help. The Job's podFailurePolicy fails the
#: Job on this code at once instead of burning retries on a file that will never decode.
EXIT_BAD_INPUT = 65
#: Transient failure (EX_TEMPFAIL): the Job retries up to ``spec.retries`` times.
EXIT_TRANSIENT = 75

#: Error types of ``kubescribe_errors_total``, in the order the help text lists them.
ERROR_TYPES = ("invalid_spec", "bad_audio", "audio_not_found", "redis", "storage", "model_load", "transcription",
               "job_failed", "timeout", "internal")


@dataclass(frozen=True)
class Reason:
    """A failure reason: its error type, whether it is final, who reports it.

    ``by_runner`` reasons are decided inside the runner and carry an exit code; the
    others are seen by the operator on the Job or its pods (a kill, a timeout, an image
    that cannot be pulled).
    """

    name: str
    error_type: str
    final: bool
    by_runner: bool
    help: str

    @property
    def exit_code(self) -> int | None:
        if not self.by_runner:
            return None
        return EXIT_BAD_INPUT if self.final else EXIT_TRANSIENT


REASONS: dict[str, Reason] = {r.name: r for r in (
    Reason("InvalidSpec", "invalid_spec", True, True, "the spec cannot run as written"),
    Reason("AudioNotFound", "audio_not_found", True, True, "never uploaded or expired: upload again"),
    Reason("BadAudio", "bad_audio", True, True, "corrupt, empty, truncated or not audio"),
    Reason("AudioTooLarge", "bad_audio", True, True, "over KUBESCRIBE_MAX_AUDIO_BYTES"),
    Reason("AudioChecksumMismatch", "bad_audio", True, True, "the audio does not match spec.audio.sha256"),
    Reason("AudioURLForbidden", "invalid_spec", True, True, "audio.url points where runners may not connect"),
    Reason("AudioDownloadFailed", "audio_not_found", True, True, "audio.url answered 4xx or redirected too often"),
    Reason("AudioServerUnavailable", "internal", False, True, "audio.url unreachable or answered 5xx"),
    Reason("ModelLoadFailed", "model_load", True, True, "the model's files cannot be loaded, or the hub refused it"),
    Reason("ModelNotFound", "model_load", True, True, "offline, and the model is not on the model volume: "
           "kubescribe models pull NAME"),
    Reason("RedisUnavailable", "redis", False, True, "Redis unreachable"),
    Reason("ObjectStoreUnavailable", "storage", False, True, "the object store is unreachable or answered 5xx"),
    Reason("ObjectStoreAccessDenied", "storage", True, True, "the object store refused the credentials or the access"),
    Reason("ObjectStoreBucketMissing", "storage", True, True, "the bucket does not exist"),
    Reason("OutOfMemory", "transcription", False, True, "the runner ran out of memory"),
    Reason("RunnerKilled", "job_failed", False, False, "the runner was killed (SIGKILL/SIGTERM)"),
    Reason("RunnerCrashed", "job_failed", False, False, "the runner exited without an outcome"),
    Reason("OOMKilled", "job_failed", False, False, "the kernel killed the runner for memory"),
    Reason("RunnerFailed", "job_failed", False, False, "the runner Job failed for another reason"),
    Reason("BadInput", "bad_audio", True, False, "the Job failed on exit code 65 with no outcome"),
    Reason("Timeout", "timeout", True, False, "not finished within spec.timeoutSeconds"),
    Reason("NoResult", "internal", True, False, "the runner succeeded but left no result"),
    Reason("ImagePullFailed", "job_failed", True, False, "the runner image cannot be pulled"),
    Reason("RunnerStartFailed", "job_failed", True, False, "the runner container cannot start"),
)}


def reason(name: str | None) -> Reason:
    """The table entry of ``name``; an unknown reason (a Job condition's own) is a
    retryable Job failure."""
    if name in REASONS:
        return REASONS[name]
    return Reason(name or "RunnerFailed", "job_failed", False, False, "")


class Timings(BaseModel):
    """Where a runner's seconds went, in seconds (milliseconds kept), for the operator's
    ``kubescribe_request_phase_seconds``. ``startedAt`` is the runner process's start
    (Unix time, psutil's create_time): the operator subtracts the Job's creation from it
    for the pod start. A pooled runner leaves ``startedAt`` and ``startup`` out (its
    start-up is not the request's) and reports ``modelLoad`` 0 once the model is loaded.
    The audio is decoded as it is transcribed, so decoding counts in ``transcription``;
    ``fetch`` is the cache check and the opening of the audio (a Redis GET, a first
    chunk of a URL or a bucket)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    started_at: float | None = None
    startup: float | None = None
    model_load: float | None = None
    fetch: float | None = None
    transcription: float | None = None

    def phases(self) -> dict[str, float]:
        """The durations given, by the ``phase`` label of their histogram."""
        named = {"startup": self.startup, "model_load": self.model_load, "fetch": self.fetch,
                 "transcription": self.transcription}
        return {k: max(0.0, v) for k, v in named.items() if v is not None}


def timings(**seconds: float | None) -> Timings:
    """Timings rounded to milliseconds: the outcome stays small."""
    return Timings(**{k: (round(v, 3) if v is not None else None) for k, v in seconds.items()})


class RunnerOutcome(BaseModel):
    """How a runner's task ended: the summary of a result, or a failure reason.

    camelCase on the wire, the names the request's status uses, so the operator copies
    fields across unchanged. Small on purpose: Kubernetes keeps 4096 bytes of a
    termination message.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    ok: bool
    reason: str | None = None
    message: str | None = None
    final: bool | None = None
    exit_code: int | None = None
    cached: bool = False
    cache_key: str | None = None
    result_key: str | None = None
    audio_sha256: str | None = None
    language: str | None = None
    language_probability: float | None = None
    audio_duration_seconds: float | None = None
    processing_seconds: float | None = None
    realtime_factor: float | None = None
    decoding: str | None = None
    text_preview: str | None = None
    size_bytes: int | None = None
    #: s3:// URLs of the files written for spec.output (status.outputs): a few short URLs,
    #: bounded by the spec (four formats, a 256-character prefix), so the outcome stays
    #: within the termination message.
    outputs: list[str] | None = None
    #: hit or miss when the runner's own lookup counted (the audio hash was unknown to
    #: the operator before the download); None when the operator's lookup counted.
    cache_lookup: str | None = None
    #: where the runner's seconds went (:class:`Timings`); about 120 bytes on the wire.
    timings: Timings | None = None

    @classmethod
    def failure(cls, name: str, message: str) -> "RunnerOutcome":
        r = reason(name)
        return cls(ok=False, reason=r.name, message=message, final=r.final, exit_code=r.exit_code)

    @classmethod
    def from_result(cls, result: Mapping[str, Any], cache_key: str, result_key: str, *, cached: bool,
                    size_bytes: int | None = None, cache_lookup: str | None = None) -> "RunnerOutcome":
        """The summary of a result document (``kubescribe:result:<key>``)."""
        return cls(ok=True, cached=cached, cache_key=cache_key, result_key=result_key,
                   audio_sha256=result.get("audio_sha256"), language=result.get("language"),
                   language_probability=result.get("language_probability"),
                   audio_duration_seconds=result.get("audio_duration_seconds"),
                   processing_seconds=result.get("processing_seconds"),
                   realtime_factor=result.get("realtime_factor"),
                   decoding=(result.get("decoding") or {}).get("mode"),
                   text_preview=(result.get("text") or "")[:200], size_bytes=size_bytes,
                   cache_lookup=cache_lookup)

    @property
    def error_type(self) -> str:
        return reason(self.reason).error_type

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)
