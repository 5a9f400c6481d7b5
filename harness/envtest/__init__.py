"""A real Kubernetes test environment, run as local processes.

There is no container runtime on the machines that run kubescribe's tests, so the tests
start the real control-plane binaries the way controller-runtime's envtest does: etcd,
kube-apiserver and kube-controller-manager (`cluster.KubeCluster`), plus real helm
(`helm.Helm`), Prometheus/promtool (`prometheus`) and Kueue's manager (`kueue`). Only
the kubelet is stood in for, and only for runner Jobs (`kubelet.FakeKubelet`).

The binaries are compiled from Go modules by ``hack/build-test-binaries.sh`` into a
cache directory outside the repository. A missing binary is a failure, never a skip:
a skipped integration test reads as a green build that tested nothing.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-test-binaries.sh"

T = TypeVar("T")


class ToolNotFoundError(RuntimeError):
    """A test binary is not built yet."""


@functools.lru_cache(maxsize=None)
def tool_dirs() -> tuple[str, ...]:
    """The directories holding the test binaries.

    ``KUBESCRIBE_TOOLS_PATH`` (colon-separated) wins, so a machine with binaries
    elsewhere needs no edit; otherwise the build script says where it puts them.
    """
    override = os.environ.get("KUBESCRIBE_TOOLS_PATH")
    if override:
        return tuple(d for d in override.split(os.pathsep) if d)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise ToolNotFoundError(
            f"{BUILD_SCRIPT} --print-path failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return tuple(d for d in proc.stdout.strip().split(os.pathsep) if d)


def find_tool(name: str) -> str:
    """Absolute path of a test binary, or a failure that says how to build it."""
    dirs = tool_dirs()
    for d in dirs:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ToolNotFoundError(
        f"{name!r} is not built (looked in: {', '.join(dirs) or '<nothing>'}). "
        f"Run `hack/build-test-binaries.sh` from the repository root once; it compiles "
        f"etcd, the Kubernetes control plane and node, helm, prometheus, promtool, coredns, kwok, "
        f"the Prometheus Operator, kueue, versitygw, kube-score, kube-linter and kube-router "
        f"(`hack/build-test-binaries.sh <tool>` builds one alone) "
        f"into a cache outside the repository (tens of minutes cold, a no-op afterwards). "
        f"KUBESCRIBE_TOOLS_PATH overrides where the binaries are looked for."
    )


def require_binary(binary: str, package: str) -> str:
    """Absolute path of a binary that a Debian package installs (redis-server, espeak-ng),
    or a failure that names the package; like ``find_tool``, never a skip."""
    path = shutil.which(binary)
    if path is None:
        raise ToolNotFoundError(f"{binary} is not installed: run `make test` (it installs the Debian package {package})")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    The kernel picks it; the small window before the caller binds it is the same one
    envtest lives with, and loopback ports are plentiful.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    description: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    A deadline, not a sleep: the loop ends as soon as the state is there. Exceptions
    listed in ``ignore`` count as "not yet" (for example a 404 before an object
    exists); the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: Optional[BaseException] = None
    while True:
        try:
            last = condition()
            last_exc = None
            if last:
                return last  # type: ignore[return-value]
        except ignore as exc:  # noqa: PERF203 - polling loop
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"last error: {last_exc!r}" if last_exc else f"last value: {last!r}"
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {description}; {detail}")
        time.sleep(interval)


def log_tail(path: os.PathLike[str] | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for failure messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


__all__ = [
    "BUILD_SCRIPT",
    "REPO_ROOT",
    "ToolNotFoundError",
    "find_tool",
    "free_port",
    "log_tail",
    "require_binary",
    "tool_dirs",
    "wait_for",
]
