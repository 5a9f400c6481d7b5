"""Real Prometheus and promtool for the tests.

Recording/alerting rules are checked by ``promtool`` and evaluated by a real server,
and dashboard queries run against series a real server scraped from the operator's
and runner's ``/metrics`` endpoints, so a renamed metric or a broken label shows up
as a failing test rather than an empty Grafana panel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import yaml

from harness.envtest import find_tool, free_port, log_tail, wait_for
from harness.process import ManagedProcess, http_ok

Target = Union[str, tuple[str, Mapping[str, str]], Mapping[str, Any]]


class PrometheusError(RuntimeError):
    """Prometheus did not start, or an API call failed."""


class PromtoolError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return (
            f"promtool failed with exit code {self.returncode}: {' '.join(map(str, self.cmd))}\n"
            f"{(self.stdout or '').strip()}\n{(self.stderr or '').strip()}"
        )


def _promtool(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    argv = [find_tool("promtool"), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PromtoolError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def promtool_check_rules(paths: Iterable[os.PathLike[str] | str], *, lint: str = "all", check: bool = True) -> subprocess.CompletedProcess[str]:
    """``promtool check rules --lint=<lint> --lint-fatal`` on rule files.

    Lint findings (duplicate rules, ...) are fatal: a rule file the tests accept should
    be one Prometheus Operator and a reviewer accept too.
    """
    args = ["check", "rules", f"--lint={lint}"]
    if lint != "none":
        args.append("--lint-fatal")
    return _promtool(*args, *map(str, paths), check=check)


def promtool_check_config(path: os.PathLike[str] | str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` (also checks the rule files the config names)."""
    return _promtool("check", "config", str(path), check=check)


def promtool_test_rules(paths: Iterable[os.PathLike[str] | str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``promtool test rules``: unit tests for recording and alerting rules."""
    return _promtool("test", "rules", *map(str, paths), check=check)


def _static_config(target: Target) -> dict[str, Any]:
    if isinstance(target, str):
        return {"targets": [target]}
    if isinstance(target, tuple):
        addr, labels = target
        return {"targets": [addr], "labels": dict(labels)}
    cfg: dict[str, Any] = {"targets": [target["target"]] if "target" in target else list(target["targets"])}
    if target.get("labels"):
        cfg["labels"] = dict(target["labels"])
    return cfg


class PrometheusServer:
    """A Prometheus server scraping static targets every second.

    Args:
        targets: ``"host:port"``, ``("host:port", {"label": "value"})`` or
            ``{"target": "host:port", "labels": {...}}`` entries.
        rule_files: recording/alerting rule files to load (``promtool``-checked by
            Prometheus itself at startup).
        job_name: the ``job`` label of the scrape config.
        scrape_interval: also the rule evaluation interval.
        metrics_path: path scraped on every target.
        extra_scrape_configs: more ``scrape_configs`` entries, as dicts.
        workdir: config, TSDB and log; temporary (removed by ``stop()``) when not given.
        config: a whole configuration instead of the one built from the arguments above
            (e.g. what the Prometheus Operator generated).
    """

    def __init__(
        self,
        targets: Sequence[Target] = (),
        *,
        rule_files: Sequence[os.PathLike[str] | str] = (),
        job_name: str = "kubescribe",
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        workdir: Optional[os.PathLike[str] | str] = None,
        startup_timeout: float = 60.0,
        config: Optional[dict[str, Any]] = None,
    ) -> None:
        self.binary = find_tool("prometheus")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-prometheus-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self.process: Optional[ManagedProcess] = None
        self.config: dict[str, Any] = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job_name,
                    "metrics_path": metrics_path,
                    "static_configs": [_static_config(t) for t in targets],
                },
                *extra_scrape_configs,
            ],
        }
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "PrometheusServer":
        promtool_check_config(self.config_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "prometheus",
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            self.log_path,
            error=PrometheusError,
        )
        self.process.start()

        try:  # /-/ready is 503 while the TSDB opens
            self.process.wait_ready(lambda: http_ok(f"{self.url}/-/ready"), timeout=self.startup_timeout,
                                    description="prometheus /-/ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- HTTP API

    def api(self, path: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; errors raise ``PrometheusError``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except Exception:
                raise PrometheusError(f"{path}: HTTP {exc.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, *, at: Optional[float] = None) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (vector entries have ``metric`` and ``value``).

        Scalars and strings come back as a one-element list holding the ``[ts, value]`` pair.
        """
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [data["result"]]
        return data["result"]

    def query_value(self, promql: str) -> Optional[float]:
        """The single sample value of an instant query, or ``None`` when it is empty."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series, expected one")
        entry = result[0]
        value = entry["value"][1] if isinstance(entry, dict) else entry[1]
        return float(value)

    def query_range(self, promql: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return self.api("query_range", {"query": promql, "start": start, "end": end, "step": step})["result"]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], Any] = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(result)`` is truthy; return that result."""
        last: list[Any] = []

        def probe() -> Any:
            last[:] = [self.query(promql)]
            return last[0] if predicate(last[0]) else None

        try:
            return wait_for(probe, timeout=timeout, interval=interval, description=f"PromQL {promql!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last result: {last[0] if last else None!r}") from None

    def wait_for_scrapes(self, count: int = 1, timeout: float = 30.0) -> None:
        """Until every target has been scraped ``count`` times after this call.

        ``timestamp(up)`` is the start of a target's latest scrape, so a scrape that began
        before the call does not count: what the scraped process held at the call is in
        Prometheus when this returns.
        """
        for _ in range(count):
            since = time.time()
            self.wait_for("min(timestamp(up))", lambda r: r and float(r[0]["value"][1]) > since, timeout=timeout)

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """``/api/v1/targets`` entries (``health``, ``lastError``, ``labels``, ...)."""
        data = self.api("targets", {"state": state})
        return data.get("activeTargets" if state == "active" else "droppedTargets", []) if state != "any" else data

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until every active target was scraped successfully at least once."""
        return wait_for(
            lambda: (lambda ts: ts if ts and all(t["health"] == "up" for t in ts) else None)(self.targets()),
            timeout=timeout,
            interval=0.25,
            description="all scrape targets up",
        )

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups with their last evaluation state."""
        return self.api("rules")["groups"]

    def series_names(self) -> list[str]:
        """Every metric name Prometheus has ingested."""
        return self.api("label/__name__/values")

    def log(self) -> str:
        return log_tail(self.log_path, 200)
