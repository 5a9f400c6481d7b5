"""Memory release and resource readings for the runner.

A runner that transcribes several requests (pooled mode, or the local CLI in a loop)
must give memory back between tasks: the original service leaked a model's worth of RAM
per task until it ran gc, unloaded models and emptied torch's CUDA cache after each one.
torch is optional: it is imported only when it is already installed (the GPU image), so
the CPU path never pays for it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from kubescribe.metrics import RunnerMetrics
from kubescribe.serving import MetricsServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its container's CPU limit (the cgroup's CPU quota,
    rounded up), else the CPUs it may run on. CTranslate2's own default is 4 threads
    whatever the machine: more than a 2-CPU limit allows (the kernel throttles the
    container) and fewer than a large node has."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of the cgroup at ``root`` in CPUs (cgroup v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is none."""
    try:
        quota, _, period = Path(root, "cpu.max").read_text().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period_us = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def process_start_time() -> float:
    """When this process started, as Unix time, to 10 ms.

    psutil's ``create_time`` adds the start (clock ticks since boot) to the boot time,
    which Linux gives in whole seconds, so it can be off by up to a second: too coarse for
    a start-up of a second or two. Here the start is placed against the boot clock read
    now instead; psutil's answer where that clock or /proc is missing.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rpartition(")")[2].split()[19])
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_start
    except (OSError, ValueError, IndexError, AttributeError):
        return psutil.Process().create_time()


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS, in every malloc arena (glibc only); RSS
    otherwise stays high."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_memory() -> dict[str, int]:
    """Collect garbage, trim the heap and empty torch's CUDA cache when torch is present.

    Returns RSS before and after, for logs and tests.
    """
    before = rss_bytes()
    gc.collect()
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.ipc_collect()
        except Exception as exc:  # a broken CUDA install must not fail the task
            log.warning("could not empty the CUDA cache: %s", exc)
    malloc_trim()
    return {"rss_before": before, "rss_after": rss_bytes()}


class Nvml:
    """GPU readings through NVML (nvidia-ml-py), or nothing when no driver is present."""

    def __init__(self) -> None:
        self._ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._pynvml = pynvml
            self._ok = True
        except Exception:  # no package, no driver, no GPU: all mean "no readings"
            self._ok = False

    @property
    def available(self) -> bool:
        return self._ok

    def readings(self) -> list[GpuReading]:
        if not self._ok:
            return []
        n = self._pynvml
        out = []
        try:
            for i in range(n.nvmlDeviceGetCount()):
                h = n.nvmlDeviceGetHandleByIndex(i)
                util = n.nvmlDeviceGetUtilizationRates(h)
                mem = n.nvmlDeviceGetMemoryInfo(h)
                out.append(GpuReading(i, float(util.gpu), int(mem.used), int(mem.total)))
        except Exception as exc:
            log.warning("NVML reading failed: %s", exc)
        return out


def cuda_device_count() -> int:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    except Exception:
        return 0


def refresh_resource_gauges(metrics: RunnerMetrics, nvml: Nvml) -> None:
    metrics.ram_usage_bytes.set(rss_bytes())
    for g in nvml.readings():
        metrics.gpu_utilization_percent.labels(gpu=str(g.index)).set(g.utilization_percent)
        metrics.gpu_memory_used_bytes.labels(gpu=str(g.index)).set(g.memory_used_bytes)


def start_metrics_server(port: int, metrics: RunnerMetrics, nvml: Nvml) -> MetricsServer | None:
    """Serve a runner's live gauges on /metrics (and /healthz) on ``port``; -1: not at all."""
    if port < 0:
        return None
    try:
        return MetricsServer(metrics.registry, port=port,
                             before_scrape=lambda: refresh_resource_gauges(metrics, nvml)).start()
    except OSError as exc:  # metrics are not worth failing a transcription over
        log.warning("metrics server not started on :%d: %s", port, exc)
        return None
