"""What the fake kubelet works out from a pod without running anything: the container's
environment, its termination message and the pod status of a finished container, as the
kubelet computes them (kubelet.py runs the process and reports through the API)."""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path
from typing import Any, Callable, Optional

TERMINATION_MESSAGE_LIMIT = 4096  # bytes, as the kubelet truncates /dev/termination-log
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the kubelet's tail size...
FALLBACK_LOG_BYTES = 2048  # ...and byte cap

#: Reads a Secret or ConfigMap of the pod's namespace by name, as a dict.
Reader = Callable[[str], dict]


def timestamp() -> str:
    """Now, as the API's timestamps are written."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, text)


class ConfigError(Exception):
    """The container's environment cannot be built yet (CreateContainerConfigError)."""


def container_env(pod: dict, container: dict, node_name: str, *, secret: Reader, config_map: Reader) -> dict[str, str]:
    """The environment of ``container``: ``envFrom``, then ``env`` in order (values with
    ``$(VAR)`` expanded, Secret and ConfigMap keys, the downward API's ``fieldRef`` and
    ``resourceFieldRef``). ``secret`` and ``config_map`` read an object of the pod's
    namespace by name (an ``ApiException`` 404 when absent). Raises ``ConfigError`` where
    the kubelet reports CreateContainerConfigError."""
    from kubernetes.client.rest import ApiException

    meta = pod["metadata"]
    ns = meta["namespace"]
    cache: dict[tuple[str, str], Optional[dict]] = {}

    def source(kind: str, name: str, optional: bool) -> Optional[dict]:
        if (kind, name) not in cache:
            try:
                if kind == "secret":
                    obj = secret(name)
                    cache[(kind, name)] = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
                else:
                    obj = config_map(name)
                    cache[(kind, name)] = dict(obj.get("data") or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                cache[(kind, name)] = None
        data = cache[(kind, name)]
        if data is None and not optional:
            raise ConfigError(f'{kind} "{name}" not found')
        return data

    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            ref = src.get(key)
            if ref:
                data = source(kind, ref["name"], bool(ref.get("optional")))
                for k, v in (data or {}).items():
                    env[prefix + k] = v

    def field_value(path: str) -> str:
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        values = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": ns,
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path not in values:
            raise ConfigError(f"unsupported fieldRef {path!r}")
        return values[path]

    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or not var.get("valueFrom"):
            env[name] = expand_vars(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind, ref = ("secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("configmap", vf["configMapKeyRef"])
            optional = bool(ref.get("optional"))
            data = source(kind, ref["name"], optional)
            if data is None or ref["key"] not in data:
                if optional:
                    continue
                raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
            env[name] = data[ref["key"]]
        elif "fieldRef" in vf:
            env[name] = field_value(vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            res = vf["resourceFieldRef"]["resource"]  # e.g. limits.cpu
            section, _, key = res.partition(".")
            env[name] = str(((container.get("resources") or {}).get(section) or {}).get(key, ""))
        else:
            raise ConfigError(f"unsupported valueFrom for {name}: {sorted(vf)}")
    return env


def termination_message(termination_log: Path, log_path: Path, container: dict, exit_code: int) -> str:
    """What the kubelet reports as the container's message: its termination log, or the
    tail of its output under ``FallbackToLogsOnError`` when that is empty after a failure."""
    try:
        data = termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT]
    except OSError:
        data = b""
    message = data.decode("utf-8", "replace")
    if not message.strip() and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        try:
            lines = log_path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode("utf-8", "replace")
        except OSError:
            pass
    return message

def terminal_status(
    run: Any,
    base_status: dict,
    start_time: str,
    exit_code: int,
    reason: str,
    message: str,
    pid: Optional[int] = None,
) -> dict:
    """The pod status of a finished container (``run`` has ``started_at`` and ``finished_at``)."""
    finished = run.finished_at or timestamp()
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": run.started_at or finished,
        "finishedAt": finished,
    }
    if message:
        terminated["message"] = message
    if pid is not None:
        terminated["containerID"] = f"kubescribe-fake://{pid}"
    phase = "Succeeded" if exit_code == 0 else "Failed"
    return {
        "phase": phase,
        "startTime": start_time,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": finished},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
        ],
        "containerStatuses": [{
            **base_status,
            **({"containerID": f"kubescribe-fake://{pid}"} if pid is not None else {}),
            "ready": False,
            "started": False,
            "state": {"terminated": terminated},
        }],
    }
