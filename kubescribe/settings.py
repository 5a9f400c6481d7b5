"""Settings of the operator and the runner, read from ``KUBESCRIBE_*`` environment variables.

The Helm chart sets these on the operator Deployment; the operator sets the runner's on
every Job. Complex values (maps, lists) are JSON. Every field says why its default is
what it is.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def describe_invalid(exc: Exception) -> str:
    """One line naming each bad ``KUBESCRIBE_*`` variable and what is wrong with it.

    For the programs' entry points: a user who mistyped a setting reads which variable
    to fix, not a pydantic traceback.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for err in errors():
        field = ".".join(str(p) for p in err.get("loc") or ())
        if not field:  # a rule across settings names its variables itself
            parts.append(str(err.get("msg")).removeprefix("Value error, "))
            continue
        parts.append(f"KUBESCRIBE_{field.split('.')[0].upper()}={err.get('input')!r}: {err.get('msg')}")
    return "invalid setting " + "; ".join(parts)


_S = TypeVar("_S", bound=BaseSettings)


def load_or_exit(cls: type[_S], prog: str, exit_code: int) -> _S:
    """An entry point's settings, or ``describe_invalid``'s one line on stderr (prefixed
    with the program's name) and ``SystemExit(exit_code)``."""
    try:
        return cls()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"{prog}: {describe_invalid(exc)}", file=sys.stderr)
        raise SystemExit(exit_code) from None


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBESCRIBE_", extra="ignore")


def _cidr_list(value: str) -> str:
    """Comma-separated CIDRs, checked and normalised (``10.1.2.3/8`` -> ``10.0.0.0/8``)."""
    nets = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            nets.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP range in CIDR notation (e.g. 10.0.0.0/8, fd00::/8)") from None
    return ",".join(nets)


#: Comma-separated CIDRs ("127.0.0.0/8,fd00::/8"); a bare address is a /32 or /128.
CidrList = Annotated[str, AfterValidator(_cidr_list)]

AUDIO_URL_ALLOW_CIDRS_HELP = (
    "Comma-separated CIDRs that runners may download spec.audio.url from even though they "
    "are refused by default (loopback, link-local and cloud metadata, unspecified, "
    "multicast, the Kubernetes API server). Private ranges are allowed without it. Empty: "
    "nothing refused is allowed."
)


class ProcessSettings(_Settings):
    log_level: str = Field(
        "INFO", description="Log level of the process: DEBUG, INFO, WARNING or ERROR."
    )


class StreamSettings(_Settings):
    claim_idle_ms: int = Field(
        60000,
        ge=0,
        description="Pool mode: a runner's queue entry may be reclaimed by another after "
        "this long without a heartbeat (runners renew it every 10 s while they work), and a "
        "dispatched request times out this long after its timeoutSeconds. A minute rides out "
        "a long garbage collection without handing live work to a second runner.",
    )


class RedisSettings(_Settings):
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL, redis:// or rediss:// (TLS), or redis+sentinel://"
        "[:password@]host1:26379,host2:26379/<service>[/<db>] (rediss+sentinel:// for TLS) "
        "to find the primary through Redis Sentinel and follow it when it fails over. A local "
        "default so that `kubescribe` on a laptop works with `redis-server` and no flags.",
    )
    redis_password: str | None = Field(
        None,
        repr=False,
        description="Redis password. Set from a Secret (secretKeyRef); never from a custom "
        "resource, so it cannot leak through `kubectl get -o yaml`.",
    )
    redis_ca_file: str | None = Field(
        None, description="CA bundle for rediss:// when the server's CA is private."
    )
    redis_sentinel_password: str | None = Field(
        None,
        repr=False,
        description="Password of the Redis Sentinels (redis+sentinel:// URLs), from a Secret "
        "like the Redis password. Sentinels are separate servers with their own `requirepass`: "
        "some installs give them the Redis password, some another, some none; unset asks them "
        "without one. KUBESCRIBE_REDIS_PASSWORD still authenticates to the primary.",
    )


class ObjectStoreSettings(_Settings):
    """Where transcripts are kept for good: an S3-compatible object store
    (kubescribe.objectstore). Credentials are not settings: the standard AWS chain reads
    them (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret, a web identity token,
    the pod's cloud identity), so every way a cluster grants S3 access works unchanged."""

    s3_bucket: str = Field(
        "",
        description="Bucket that keeps every transcript while its request exists. Empty: no "
        "object store, transcripts live only in Redis (they expire with the result cache's TTL "
        "or under memory pressure).",
    )
    s3_endpoint: str = Field(
        "",
        description="S3 API endpoint, e.g. https://minio.storage:9000 or a Ceph RGW; empty: "
        "AWS S3 of s3_region (or AWS_ENDPOINT_URL_S3, which the AWS SDK reads itself).",
    )
    s3_region: str = Field(
        "us-east-1",
        description="Region of the bucket; us-east-1 is what most S3-compatible servers accept.",
    )
    s3_prefix: str = Field(
        "kubescribe/",
        description="Key prefix of everything kubescribe writes, so one bucket can serve several "
        "installs or applications.",
    )
    s3_path_style: Annotated[bool, BeforeValidator(lambda v: v or False)] = Field(
        False,
        description="Path-style addressing (endpoint/bucket/key) instead of virtual hosts "
        "(bucket.endpoint/key): MinIO, SeaweedFS and most in-cluster servers need it; AWS "
        "prefers virtual hosts. Empty is false.",
    )
    s3_ca_file: str | None = Field(
        None, description="CA bundle for an https:// endpoint whose certificate a private CA signed."
    )

    @property
    def s3_enabled(self) -> bool:
        return bool(self.s3_bucket)


#: Uploads larger than this go to the object store in parts instead of into Redis whole
#: (the gateway's and ``kubescribe submit``'s default): one 8 MiB multipart part.
STREAM_UPLOAD_BYTES = 8 * 1024 * 1024


class ApiServerSettings(_Settings):
    """Where the API server is, as the kubelet tells every container."""

    kubernetes_service_host: str | None = Field(
        None,
        validation_alias="KUBERNETES_SERVICE_HOST",
        description="The API server's Service address, which the kubelet sets in every "
        "container: in a pod the ServiceAccount is used, and audio URLs may not point at "
        "it. Unset outside a cluster.",
    )


class KubeconfigSettings(_Settings):
    """The kubeconfig of a process that may run outside a cluster."""

    kubeconfig: str | None = Field(
        None, validation_alias="KUBECONFIG",
        description="kubeconfig for running outside a cluster; in a pod the ServiceAccount is used.",
    )


class PoolIdleSettings(_Settings):
    """Shared by the operator, which passes it to the pooled runners it starts, and the runner."""

    pool_idle_seconds: float = Field(
        60.0,
        description="A pooled runner exits after this long with no work: long enough to "
        "absorb a burst's stragglers, short enough to give the GPU back.",
    )
    pool_preload_model: str = Field(
        "tiny.en",
        description="A pooled runner loads this model (with spec's default device and compute "
        "type) before it takes work, so the requests it takes first do not wait for a model load "
        "while another runner could have had them; empty: load on first use.",
    )


class AudioUrlSettings(ApiServerSettings):
    """What the runner may download ``spec.audio.url`` from (kubescribe.url_guard)."""

    audio_url_allow_cidrs: CidrList = Field("", description=AUDIO_URL_ALLOW_CIDRS_HELP)


class AudioInputSettings(AudioUrlSettings):
    """What the runner accepts as audio."""

    max_audio_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1,
        description="Largest audio a runner accepts, checked before decoding: a 2 GiB upload "
        "would need several times that in RAM once decoded to float32 samples (512 MiB).",
    )


class CliSettings(RedisSettings, ObjectStoreSettings, KubeconfigSettings):
    """What the ``kubescribe`` command line reads from the environment."""

    stream_upload_bytes: int = Field(
        STREAM_UPLOAD_BYTES,
        ge=0,
        description="`kubescribe submit` streams files larger than this into the object store "
        "(<prefix>uploads/<id>, in 8 MiB parts, hashed as read) when one is configured "
        "(KUBESCRIBE_S3_BUCKET), instead of reading them whole into memory and Redis; the "
        "same default as the gateway's KUBESCRIBE_GATEWAY_STREAM_UPLOAD_BYTES.",
    )

    @property
    def redis_url_given(self) -> bool:
        """KUBESCRIBE_REDIS_URL is set: ``transcribe`` then shares that Redis's cache
        instead of its in-process store."""
        return "redis_url" in self.model_fields_set



class EngineSettings(_Settings):
    """How the runner's engine finds and runs models (kubescribe.runner.engine)."""

    model_dir: str | None = Field(
        None, description="Model volume: models are looked up and downloaded here."
    )
    offline: Annotated[bool, BeforeValidator(lambda v: v or False)] = Field(
        False, description="Never contact a model hub (air-gapped clusters); empty is false."
    )
    cpu_threads: int = Field(
        0, ge=0, description="CTranslate2 intra-op threads; 0: the CPUs the runner may use (its "
        "container's CPU limit, else the CPUs it may run on). faster-whisper's own default is 4 "
        "threads whatever the machine: over a 2-CPU limit, the kernel throttles them."
    )
    batched_min_seconds: float = Field(
        60.0,
        ge=0,
        description="spec.decoding auto: audio this long or longer is decoded in batches of "
        "VAD-cut speech chunks, shorter audio sequentially. Below a minute there are too few "
        "30 s chunks to fill a batch, and sequential decoding conditions each window on the "
        "text before it.",
    )
    piece_seconds: float = Field(
        300.0,
        ge=35,
        description="Long audio is decoded and transcribed this many seconds at a time, cut in a "
        "pause near the end of each piece, so a runner's memory follows the piece, not the "
        "recording (a 3-hour file peaked 1.03x a 10-minute one). Five minutes keeps seams rare; "
        "under 35 s a piece may hold no pause to cut in.",
    )
    clip_gap_seconds: float = Field(
        6.0,
        ge=0,
        description="Batched decoding joins speech into clips of up to 30 s of speech (the "
        "pauses between its stretches left out, as faster-whisper's own batched pipeline "
        "does) and ends a clip at a pause longer than this, so a segment (and a subtitle) "
        "never spans a long silence. Every clip costs a full 30 s window: on a 10-minute "
        "recording with a 3-4 s pause every ninth sentence, 6 s made 18 clips and 2 s made "
        "24, 1.2x the time (BENCHMARKS.md, long_vs_faster_whisper).",
    )
    keep_models: int = Field(
        2,
        ge=1,
        description="Models a runner keeps loaded at once (a pooled runner serves requests for "
        "several); the least recently used is unloaded when another is needed. Two: tiny.en "
        "and base together held 184 MiB of RSS and each loads in about a second "
        "(BENCHMARKS.md, wer_by_model), so a pool alternating between them reloads nothing.",
    )


class RunnerSettings(RedisSettings, ObjectStoreSettings, AudioInputSettings, PoolIdleSettings, StreamSettings,
                     ProcessSettings):
    spec: str | None = Field(
        None, description="The request spec as JSON; the operator sets it on the Job."
    )
    request: str | None = Field(None, description="namespace/name of the request, for logs.")
    request_uid: str | None = Field(
        None, description="uid of the request; progress is reported in Redis under it (the operator sets it)."
    )
    progress_report_seconds: float = Field(
        2.0,
        gt=0,
        description="A runner writes its progress to Redis at most this often: every few "
        "seconds is fresh enough for the operator, which reads it every "
        "KUBESCRIBE_PROGRESS_SECONDS, and costs Redis next to nothing.",
    )
    metrics_port: int = Field(
        9400,
        description="Port of /metrics and /healthz; -1 disables. 9400 avoids the ports of "
        "common exporters (9100 node, 9090 Prometheus).",
    )
    termination_log: str = Field(
        "/dev/termination-log",
        description="Where the summary JSON goes; the kubelet copies it into the pod "
        "status, where the operator reads it.",
    )
    pool_batch_max: int = Field(
        1,
        ge=1,
        le=64,
        description="A pooled runner takes up to this many queued requests at once and packs "
        "the short ones of one namespace with the same model, task, language, beam and prompt "
        "into shared 30 s decoding windows (each keeps its own result and status). The "
        "operator sets it on its pooled runners to its KUBESCRIBE_REQUESTS_PER_RUNNER (4); "
        "1, the default of a runner started by hand, takes one request at a time.",
    )
    pool_batch_wait_ms: int = Field(
        50,
        ge=0,
        le=5000,
        description="Once a pooled runner has a request, it waits up to this long for each "
        "further one, until it has KUBESCRIBE_POOL_BATCH_MAX: requests that arrive a few "
        "milliseconds apart (a burst being admitted) share windows instead of the first being "
        "decoded alone, which costs nearly a whole window. A lone request starts this much "
        "later. 0: take only what is queued at that moment.",
    )
    consumer: str | None = Field(
        None, description="Consumer name in the stream group; defaults to the pod name."
    )
    pod_name: str | None = Field(
        None, validation_alias="POD_NAME",
        description="The runner pod's name (downward API), the default consumer name.",
    )


class InstallSink(BaseModel):
    """One install-wide notification sink (KUBESCRIBE_NOTIFY_SINKS), checked at start so a
    bad entry is a one-line settings error, not a failure on the first delivery."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=2048, pattern=r"^https?://[^/?#\s]+\S*$", description="http(s) URL.")
    events: list[Literal["Succeeded", "Failed"]] = Field(["Succeeded", "Failed"], min_length=1,
                                                        description="Finished phases it hears of.")
    mode: Literal["structured", "binary"] = Field("structured", description="CloudEvents HTTP content mode.")


class NotifyKeySettings(_Settings):
    """The install's notification signing key, which the operator signs with and the
    gateway derives its callers' keys from (kubescribe.sinks)."""

    notify_signing_key: str = Field(
        "",
        description="The install's Standard Webhooks key (whsec_ and base64): it signs the "
        "install-wide sinks' events, and each gateway caller's callback_url key is derived from "
        "it. From the Secret of chart value notifications.signingSecret. Empty: no install-wide "
        "sink is delivered to and the gateway takes no callback_url.",
    )


class OperatorSettings(RedisSettings, ObjectStoreSettings, AudioInputSettings, PoolIdleSettings, StreamSettings,
                       ProcessSettings, NotifyKeySettings):
    instance: str = Field(
        "",
        description="Release name, copied to runner Jobs as app.kubernetes.io/instance so two "
        "installs in one cluster scrape and manage only their own runners.",
    )
    namespace: str = Field(
        "",
        description="Namespace to watch; empty watches the whole cluster (the chart's "
        "ClusterRole allows that).",
    )
    gpu_budget: int = Field(
        1,
        ge=1,
        description="GPUs the runner Jobs may hold at once (a CPU-only Job takes one slot). "
        "1 is safe on any cluster; set it to the GPUs you have.",
    )
    admission_engine: Literal["kubescribe", "kueue"] = Field(
        "kubescribe",
        description="Who admits runner Jobs. kubescribe: the operator's own queue under "
        "gpu_budget (priority, then age). kueue: Jobs are created suspended with the "
        "kueue.x-k8s.io/queue-name label and Kueue admits them against its quotas; the "
        "operator's budget is then off. kubescribe needs nothing installed, so it is the default.",
    )
    kueue_default_queue: str = Field(
        "default",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="LocalQueue for requests without spec.queueName when the admission engine "
        "is kueue. \"default\" is the LocalQueue Kueue itself gives a Job without a queue name "
        "(its LocalQueueDefaulting), so one queue per namespace serves both.",
    )
    mode: Literal["job", "pool"] = Field(
        "job",
        description="job: one runner Job per request (simple, isolated). pool: warm runner "
        "Jobs take requests from a Redis stream while the model stays loaded.",
    )
    pool_size_max: int = Field(
        0, ge=0, description="Cap on pooled runner Jobs; 0 means the GPU budget."
    )
    requests_per_runner: int = Field(
        4, ge=1, description="Dispatched requests per pooled runner before another is started, "
        "and the most queued requests a pooled runner takes at once (its "
        "KUBESCRIBE_POOL_BATCH_MAX, unless runner env sets that). Twice this many are kept "
        "dispatched per runner: the batch it decodes and the next, ready when it finishes. 4 "
        "keeps a short backlog per runner, packed into shared decoding windows, without "
        "hoarding work."
    )
    pool_command: list[str] = Field(
        ["kubescribe-runner", "pool"], description="Pooled runner container command."
    )
    pool_namespace: str = Field(
        "", description="Namespace of pooled runner Jobs; empty: the operator's own "
        "(POD_NAMESPACE), else the watched namespace, else default."
    )
    pod_namespace: str = Field(
        "", validation_alias="POD_NAMESPACE",
        description="The operator's own namespace (downward API), where pooled runners go by default.",
    )
    pool_gpus: int = Field(1, ge=0, le=8, description="GPUs per pooled runner.")
    runner_image: str = Field(
        "ghcr.io/kubescribe/kubescribe-runner:0.1.0", description="Runner container image."
    )
    runner_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the runner image; the image is large (CUDA), "
        "so pulling it once per node is the default."
    )
    runner_command: list[str] = Field(
        ["kubescribe-runner", "run"], description="Runner container command."
    )
    runner_service_account: str = Field(
        "", description="ServiceAccount of runner pods; runners need no API access, so the "
        "default (none mounted) is the safe choice."
    )
    runner_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector for runner pods (GPU node pools)."
    )
    runner_tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Tolerations for runner pods (tainted GPU nodes)."
    )
    runner_runtime_class: str = Field(
        "", description="RuntimeClass for runner pods, e.g. nvidia where the GPU runtime is not the default."
    )
    runner_priority_class: str = Field("", description="PriorityClass of runner pods.")
    runner_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
        description="CPU and memory for runner pods; GPUs are added per request. "
        "8 GiB covers large-v3 on CPU with room for long audio.",
    )
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", description="Extended resource name the GPU device plugin advertises."
    )
    runner_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for runner containers."
    )
    model_cache_pvc: str = Field(
        "", description="PersistentVolumeClaim with models, mounted read-only in runners."
    )
    model_cache_mount_path: str = Field("/models", description="Where the model volume is mounted.")
    redis_secret_name: str = Field(
        "", description="Secret with the Redis password, passed to runners by secretKeyRef."
    )
    redis_secret_key: str = Field("redis-password", description="Key in that Secret.")
    redis_sentinel_secret_name: str = Field(
        "", description="Secret with the Redis Sentinels' password, passed to runners by "
        "secretKeyRef as KUBESCRIBE_REDIS_SENTINEL_PASSWORD. Empty: sentinels without a password."
    )
    redis_sentinel_secret_key: str = Field("sentinel-password", description="Key in that Secret.")
    s3_sweep_seconds: float = Field(
        3600.0,
        gt=0,
        description="How often the resync looks for object-store references of requests that "
        "were deleted while the operator was down (or whose release failed) and releases them. "
        "It lists every reference of the install, so hourly, not every resync.",
    )
    s3_upload_max_age_seconds: float = Field(
        86400.0,
        ge=3600,
        description="The sweep deletes an object under <prefix>uploads/ that no request names once "
        "it is this old (a presigned upload never followed by a transcription), and aborts "
        "unfinished multipart uploads there as old: a day leaves a client time to create the "
        "transcription after its upload, and bounds what abandoned uploads cost.",
    )
    s3_secret_name: str = Field(
        "", description="Secret with the object store's credentials (keys access-key-id and "
        "secret-access-key), passed to runners by secretKeyRef like the Redis password. Empty: "
        "runners use their own identity (IRSA, workload identity)."
    )
    job_ttl_seconds: int = Field(
        3600,
        ge=0,
        description="ttlSecondsAfterFinished of runner Jobs: an hour to read logs, then "
        "the Job and its pod are garbage collected.",
    )
    request_ttl_seconds: int = Field(
        86400,
        ge=0,
        description="Finished requests (Succeeded or Failed) are deleted this many seconds "
        "after they finished, unless their spec.ttlSecondsAfterFinished says otherwise; 0 "
        "keeps them for ever. A day, like the result cache's default TTL: after that the "
        "transcript a request points to has expired too, and a platform running thousands of "
        "requests a day would otherwise grow etcd without bound.",
    )
    normal_events: bool = Field(
        False,
        description="Also post Normal Events for a request's progress (Queued, JobCreated, "
        "Dispatched, Succeeded, CacheHit). Off: only Warning Events (failures, retries, Redis "
        "down, lost Jobs), so a request costs no Event writes when nothing goes wrong; its "
        "progress is in status.conditions, with their lastTransitionTime.",
    )
    queue_positions: int = Field(
        20,
        ge=0,
        description="Only the first N queued requests get status.queuePosition, once they "
        "have waited an admission period (5 s), refreshed at most once per period. Every admission shifts everyone behind it by "
        "one: writing positions for a long queue would cost more API writes than the work "
        "itself. 20 shows the head of the queue where it changes often; the rest read "
        "\"waiting for a runner slot\". 0 writes no positions.",
    )
    image_pull_grace_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a runner pod may wait in ErrImagePull/ImagePullBackOff (or a "
        "container config error) before its request fails. A registry outage of a few "
        "minutes should not fail work; a typo in the image should not leave a request "
        "Pending for ever. ErrImageNeverPull and InvalidImageName fail without the grace, at the "
        "next resync pass (KUBESCRIBE_RESYNC_SECONDS).",
    )
    runner_metrics_port: int = Field(9400, description="Runner /metrics port (named `metrics`).")
    metrics_port: int = Field(8080, description="Operator /metrics and /healthz port.")
    progress_seconds: float = Field(
        10.0,
        ge=5,
        description="How often the operator copies runners' progress into status.progress: at "
        "most one API write per running request per period, and none for a request that "
        "ends within its first period. 10 s is live enough for a progress bar on long "
        "audio and keeps the API writes per request bounded.",
    )
    resync_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds between full re-lists of the requests. The watch delivers changes "
        "at once; the resync retries requests left Pending (Redis down) and finds Jobs deleted "
        "while the operator was down. 30 s bounds that recovery without loading the API server.",
    )
    workers: int = Field(
        16, ge=1, description="Threads handling watch events (from the operator's event queue), and "
        "as many admissions at once: events and admissions of many requests proceed while one "
        "waits on the API server."
    )
    notify_sinks: list[InstallSink] = Field(
        [],
        description="Install-wide notification sinks, a JSON list of {url, events, mode}: every "
        "request's Succeeded/Failed event goes there too (a Knative Broker, an Argo Events "
        "webhook), signed with KUBESCRIBE_NOTIFY_SIGNING_KEY. Chart value notifications.sinks.",
    )
    notify_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads delivering notifications, apart from admission and the watch: a "
        "sink that answers slowly holds one of these, never an admission. 4 delivers about "
        "4/KUBESCRIBE_NOTIFY_TIMEOUT_SECONDS events a second when every sink hangs.",
    )
    notify_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How long one POST to a sink may take (connect and answer) before it counts "
        "as a failed attempt: receivers are expected to answer at once and work afterwards.",
    )
    notify_max_attempts: int = Field(
        10, ge=1, le=50, description="POSTs per event and sink before its delivery Fails for good."
    )
    notify_backoff_seconds: float = Field(
        300.0,
        gt=0,
        description="Wait before the second attempt; each later wait doubles, up to "
        "KUBESCRIBE_NOTIFY_BACKOFF_CAP_SECONDS, scaled by a random 0.8-1.2. With the defaults "
        "the ten attempts span about a day (300 s, 600 s, ... 6 h).",
    )
    notify_backoff_cap_seconds: float = Field(
        21600.0, gt=0, description="Longest wait between two attempts (6 h)."
    )

    @model_validator(mode="after")
    def _kueue_runs_jobs(self) -> "OperatorSettings":
        if self.admission_engine == "kueue" and self.mode != "job":
            # Pooled runners serve many requests each: Kueue would admit the pool, not the
            # requests, so its quotas and fair sharing would not apply to them.
            raise ValueError("KUBESCRIBE_ADMISSION_ENGINE=kueue needs KUBESCRIBE_MODE=job: Kueue admits "
                             "one Job per request, not a pool of runners")
        return self


class GatewaySettings(RedisSettings, ObjectStoreSettings, ApiServerSettings, KubeconfigSettings, ProcessSettings,
                      NotifyKeySettings):
    """What ``kubescribe-gateway`` (kubescribe.gateway) reads from the environment."""

    gateway_host: str = Field(
        "0.0.0.0", description="Address the HTTP API listens on; all interfaces, since a "
        "Service sends traffic to the pod IP."
    )
    gateway_port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP API (named `http`).")
    gateway_metrics_port: int = Field(
        8080, ge=-1, le=65535,
        description="Port of /metrics, apart from the API so that an Ingress never exposes it; "
        "-1 disables. 8080 as on the operator.",
    )
    gateway_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces the gateway creates requests in (JSON list); empty: any "
        "namespace its RBAC allows. A caller naming another namespace gets 403.",
    )
    gateway_default_namespace: str = Field(
        "",
        description="Namespace of callers that name none (X-Kubescribe-Namespace header) and "
        "are not ServiceAccounts (whose own namespace is the default) nor API keys (which "
        "carry theirs). Empty: such callers must name one.",
    )
    gateway_max_upload_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1,
        description="Largest audio upload, in bytes: 25 MiB, OpenAI's own limit, so clients "
        "written for it fit; raise it for long recordings (the runners' own limit is "
        "KUBESCRIBE_MAX_AUDIO_BYTES).",
    )
    gateway_stream_upload_bytes: int = Field(
        STREAM_UPLOAD_BYTES,
        ge=0,
        description="Uploads larger than this, when an object store is configured "
        "(KUBESCRIBE_S3_BUCKET), are written to <prefix>uploads/<id> in its bucket while they "
        "arrive, in 8 MiB parts, instead of into memory and Redis: a replica then holds a few "
        "parts per upload whatever its size, and Redis never holds a large value (a 1 GiB "
        "SET blocks Redis while it is written and counts against its maxmemory). 8 MiB, one "
        "part: smaller uploads, most calls, keep the one-round-trip Redis path and leave no "
        "object to clean up. Without an object store every upload goes to Redis.",
    )
    gateway_single_put_bytes: int = Field(
        5 * 1024**3,
        ge=0,
        le=5 * 1024**3,
        description="A streamed upload of at most this many bytes whose length is known before "
        "its first byte (the form's file is its last part, and the request has a "
        "Content-Length, as OpenAI's SDKs, curl and browsers send it) goes into the object "
        "store as one PUT instead of parts: the server assembles no parts, which on versitygw "
        "costs 1.5x the CPU per byte of one PUT. One PUT is not retried part by part: a failed "
        "one fails the upload, and the client sends it again. 0: always parts; at most 5 GiB, "
        "S3's largest PUT.",
    )
    gateway_upload_url_seconds: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="How long a presigned upload URL from POST /v1/uploads may be used: an hour "
        "starts a multi-GiB PUT on a slow link (the object store checks the expiry when the PUT "
        "begins, not when it ends) without leaving a usable URL around for a day. At most 7 "
        "days, SigV4's limit.",
    )
    gateway_wait_seconds: float = Field(
        600.0,
        gt=0,
        description="How long a synchronous /v1/audio/* call waits for its request to finish "
        "before answering 504 (the request keeps running; its name is in the error). Ten "
        "minutes covers a long file on a warm GPU; longer audio belongs on /v1/transcriptions.",
    )
    gateway_sse_keepalive_seconds: float = Field(
        15.0,
        gt=0,
        description="Seconds without a change after which an events stream "
        "(/v1/transcriptions/{name}/events) sends a `: keep-alive` comment, which SSE clients "
        "ignore: a request queued or transcribing for minutes would otherwise leave the "
        "connection idle past a proxy's timeout (nginx and AWS load balancers: 60 s). 15 s "
        "stays under every common one at a few bytes per stream.",
    )
    gateway_max_concurrent_per_identity: int = Field(
        8,
        ge=1,
        description="Calls one identity may have in flight at once on one gateway replica; "
        "more get 429. Keeps one client from holding every connection and upload buffer.",
    )
    gateway_model_aliases: dict[str, str] = Field(
        default_factory=lambda: {"whisper-1": "large-v3,medium,small,base,tiny,tiny.en"},
        description="OpenAI model names mapped to faster-whisper models (JSON object); a name "
        "not in the table is passed through as the model. A value may list models in order of "
        "preference, comma-separated: the alias becomes the first of them the runners have "
        "(KUBESCRIBE_GATEWAY_MODELS, KUBESCRIBE_GATEWAY_MODEL_DIR, the bundled tiny.en) that can "
        "do the call's task and language, so whisper-1 translates wherever a multilingual "
        "model is installed and still works with tiny.en alone; English-only models are "
        "refused translation only when no listed model can do it.",
    )
    gateway_models: list[str] = Field(
        default_factory=list,
        description="Models the runners' model volume holds (JSON list), for aliases and GET "
        "/v1/models when the gateway does not mount the volume: the chart sets it from "
        "models.preload. The bundled tiny.en is always there.",
    )
    gateway_model_dir: str | None = Field(
        None,
        description="The runners' model volume, if mounted into the gateway (read-only): its "
        "models count as installed, as KUBESCRIBE_GATEWAY_MODELS does.",
    )
    gateway_api_keys_file: str | None = Field(
        None,
        description="JSON file of API keys (mounted from a Secret): {\"<name>\": {\"sha256\": "
        "\"<hex of the key>\", \"namespace\": \"...\", \"user\": \"...\", \"groups\": [...]}}. "
        "Keys are stored hashed; RBAC still decides what the mapped identity may do. Re-read "
        "when the file changes, so a rotated Secret takes effect without a restart.",
    )
    gateway_auth_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a TokenReview or SubjectAccessReview answer is reused for the "
        "same token and action: a client making many calls costs the API server one review "
        "per 10 s, and a revoked right stops working within 10 s. 0 reviews every call.",
    )
    gateway_audio_ttl_seconds: int = Field(
        86400, ge=60, description="TTL of uploaded audio in Redis, as the CLI's uploads (24 h)."
    )
    gateway_analysis_ttl_seconds: int = Field(
        7 * 86400, ge=60, description="TTL of a cached analysis: 7 days, as the inherited service kept it."
    )
