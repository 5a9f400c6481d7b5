"""The runner Job for a TranscriptionRequest, as a plain manifest (no API calls here)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kubescribe import API_VERSION, KIND
from kubescribe.models import TranscriptionSpec
from kubescribe.outcomes import EXIT_BAD_INPUT
from kubescribe.settings import OperatorSettings

from .kueue_api import LABEL_QUEUE_NAME

CONTAINER = "runner"
RUNNER_UID = 10001

LABEL_REQUEST = "kubescribe.io/request"
LABEL_REQUEST_UID = "kubescribe.io/request-uid"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubescribe-operator"
#: Every runner Job's name starts with it (a cheap filter for other controllers' objects).
JOB_NAME_PREFIX = "kubescribe-"


def job_name(request_name: str, uid: str, generation: int | None) -> str:
    """Deterministic: the same request and generation always give the same name, so a
    retried or restarted operator finds its Job (409) instead of making a second one."""
    digest = hashlib.sha256(f"{uid}/{generation or 1}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]", "-", request_name.lower())[:63 - len(JOB_NAME_PREFIX) - 1 - 8].strip("-")
    return f"{JOB_NAME_PREFIX}{stem}-{digest}" if stem else f"{JOB_NAME_PREFIX}{digest}"


def _label_value(value: str) -> str:
    """Label values: 63 chars of [A-Za-z0-9._-]; long names are cut and hashed."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", value).strip("-._")
    if len(clean) <= 63:
        return clean
    return clean[:54].rstrip("-._") + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def redis_url_without_credentials(url: str) -> str:
    """Runners get the password from the Secret, never inside a URL written into a Job.

    A Sentinel URL (``redis+sentinel://h1:26379,h2:26379/<service>``) keeps its host list,
    service and database: runners find the primary through the same sentinels."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _instance(settings: OperatorSettings) -> dict[str, str]:
    return {"app.kubernetes.io/instance": _label_value(settings.instance)} if settings.instance else {}


def _base_env(settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KUBESCRIBE_REDIS_URL", "value": redis_url_without_credentials(settings.redis_url)},
        {"name": "KUBESCRIBE_METRICS_PORT", "value": str(settings.runner_metrics_port)},
        {"name": "KUBESCRIBE_MAX_AUDIO_BYTES", "value": str(settings.max_audio_bytes)},
        # Writable scratch for model downloads and caches on a read-only root filesystem.
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if settings.redis_secret_name:
        env.append({"name": "KUBESCRIBE_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": settings.redis_secret_name, "key": settings.redis_secret_key}}})
    if settings.redis_sentinel_secret_name:
        env.append({"name": "KUBESCRIBE_REDIS_SENTINEL_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": settings.redis_sentinel_secret_name, "key": settings.redis_sentinel_secret_key}}})
    if settings.s3_enabled:
        env += [{"name": f"KUBESCRIBE_S3_{name.upper()}", "value": str(value)} for name, value in (
            ("bucket", settings.s3_bucket), ("endpoint", settings.s3_endpoint), ("region", settings.s3_region),
            ("prefix", settings.s3_prefix), ("path_style", "true" if settings.s3_path_style else "")) if value]
        # Not KUBESCRIBE_S3_CA_FILE: the operator's path does not exist in runner pods; a
        # private CA reaches runners through their image or KUBESCRIBE_RUNNER_ENV (README).
        if settings.s3_secret_name:
            env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret_name, "key": key}}}
                    for var, key in (("AWS_ACCESS_KEY_ID", "access-key-id"),
                                     ("AWS_SECRET_ACCESS_KEY", "secret-access-key"))]
    if settings.model_cache_pvc:
        env.append({"name": "KUBESCRIBE_MODEL_DIR", "value": settings.model_cache_mount_path})
    if settings.audio_url_allow_cidrs:
        env.append({"name": "KUBESCRIBE_AUDIO_URL_ALLOW_CIDRS", "value": settings.audio_url_allow_cidrs})
    return env


def pod_spec(settings: OperatorSettings, command: list[str], env: list[dict[str, Any]], gpus: int) -> dict[str, Any]:
    """The runner pod: restricted security context, GPU resources, scheduling settings."""
    env = env + [{"name": k, "value": v} for k, v in sorted(settings.runner_env.items())]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if settings.model_cache_pvc:
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": settings.model_cache_pvc, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": settings.model_cache_mount_path, "readOnly": True})
    resources = json.loads(json.dumps(settings.runner_resources))
    if gpus > 0:
        resources.setdefault("limits", {})[settings.gpu_resource_name] = str(gpus)
        resources.setdefault("requests", {})[settings.gpu_resource_name] = str(gpus)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job retries instead
        "automountServiceAccountToken": False,  # the runner talks to Redis, never to the API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.runner_image,
                "imagePullPolicy": settings.runner_image_pull_policy,
                "command": list(command),
                "env": env,
                "ports": [{"name": "metrics", "containerPort": settings.runner_metrics_port}],
                "resources": resources,
                "volumeMounts": mounts,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    if settings.runner_service_account:
        spec["serviceAccountName"] = settings.runner_service_account
    if settings.runner_node_selector:
        spec["nodeSelector"] = dict(settings.runner_node_selector)
    if settings.runner_tolerations:
        spec["tolerations"] = list(settings.runner_tolerations)
    if settings.runner_runtime_class:
        spec["runtimeClassName"] = settings.runner_runtime_class
    if settings.runner_priority_class:
        spec["priorityClassName"] = settings.runner_priority_class
    return spec


def build_job(body: dict[str, Any], spec: TranscriptionSpec, settings: OperatorSettings,
              *, kueue_queue: str | None = None) -> dict[str, Any]:
    """One runner Job for one request, owned by it (deleting the request deletes the Job).

    With ``kueue_queue`` the Job is created suspended in that Kueue LocalQueue: Kueue
    unsuspends it when it admits it, and no pod exists before that.
    """
    meta = body["metadata"]
    name = job_name(meta["name"], meta["uid"], meta.get("generation"))
    labels = {
        "app.kubernetes.io/name": "kubescribe",
        LABEL_COMPONENT: "runner",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_REQUEST: _label_value(meta["name"]),
        LABEL_REQUEST_UID: meta["uid"],
        **_instance(settings),
    }
    # On the Job only: Kueue's pod integration would take a labelled pod for a workload
    # of its own.
    job_labels = {**labels, LABEL_QUEUE_NAME: kueue_queue} if kueue_queue else labels
    env = [
        {"name": "KUBESCRIBE_SPEC", "value": json.dumps(spec.model_dump(by_alias=True, mode="json"),
                                                     separators=(",", ":"))},
        {"name": "KUBESCRIBE_REQUEST", "value": f"{meta['namespace']}/{meta['name']}"},
        # The runner reports progress in Redis under the request's uid.
        {"name": "KUBESCRIBE_REQUEST_UID", "value": meta["uid"]},
    ] + _base_env(settings)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": job_labels,
            "annotations": {"kubescribe.io/generation": str(meta.get("generation") or 1)},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            **({"suspend": True} if kueue_queue else {}),
            "backoffLimit": spec.retries,
            "activeDeadlineSeconds": spec.timeout_seconds,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "podFailurePolicy": {"rules": [
                # The runner's exit code for a final reason (the reason table): retrying
                # cannot help, so the Job fails at once instead of burning retries.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [EXIT_BAD_INPUT]}},
                # Evictions, preemption and node drains are not the request's fault.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": dict(labels),
                             "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER}},
                "spec": pod_spec(settings, settings.runner_command, env, spec.effective_gpus),
            },
        },
    }


LABEL_POOL = "kubescribe.io/pool"


def build_pool_job(settings: OperatorSettings, namespace: str, name: str) -> dict[str, Any]:
    """A warm runner that takes requests from the Redis stream until it is idle.

    Not owned by any request: it serves many. backoffLimit 0 because a crashed pooled
    runner is replaced by the operator's pool sizing, and its unfinished entry is
    reclaimed from the stream by another runner.
    """
    labels = {
        "app.kubernetes.io/name": "kubescribe",
        LABEL_COMPONENT: "runner",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POOL: "true",
        **_instance(settings),
    }
    env = _base_env(settings) + [{"name": "KUBESCRIBE_POOL_IDLE_SECONDS", "value": str(settings.pool_idle_seconds)},
                                 {"name": "KUBESCRIBE_POOL_PRELOAD_MODEL", "value": settings.pool_preload_model}]
    if "KUBESCRIBE_POOL_BATCH_MAX" not in settings.runner_env:
        # A runner takes as many queued requests at once as the pool sizing gives it, and
        # packs the short ones into shared windows (runner.engine.Engine.transcribe_many).
        env.append({"name": "KUBESCRIBE_POOL_BATCH_MAX", "value": str(min(settings.requests_per_runner, 64))})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": min(settings.job_ttl_seconds, 600),
            "template": {
                "metadata": {"labels": dict(labels),
                             "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER}},
                "spec": pod_spec(settings, settings.pool_command, env, settings.pool_gpus),
            },
        },
    }
