"""The real helm binary, pointed at the test cluster, with its own empty home.

Helm keeps repositories, plugins and a registry login under its cache/config/data
homes; the tests give it fresh ones so nothing on the machine (or from a previous
run) changes what ``helm lint`` or ``helm install`` sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from . import find_tool


class HelmError(subprocess.CalledProcessError):
    """helm exited non-zero; ``str()`` carries the command and its stderr."""

    def __str__(self) -> str:
        return (
            f"helm failed with exit code {self.returncode}: {' '.join(map(str, self.cmd))}\n"
            f"--- stderr ---\n{(self.stderr or '').strip()}\n--- stdout ---\n{(self.stdout or '').strip()[-4000:]}"
        )


class Helm:
    """Runs ``helm`` against a ``KubeCluster`` (or with no cluster for lint/template).

    Args:
        cluster: anything with ``kubeconfig_path``; ``None`` for offline commands.
        kubeconfig: overrides the cluster's admin kubeconfig, e.g. a ServiceAccount's.
        workdir: holds the helm homes and values files; a temporary directory
            (removed by ``close()``) when not given.
    """

    def __init__(
        self,
        cluster: Any = None,
        *,
        kubeconfig: Optional[str] = None,
        workdir: Optional[os.PathLike[str] | str] = None,
    ) -> None:
        self.binary = find_tool("helm")
        self.cluster = cluster
        self.kubeconfig = kubeconfig or (cluster.kubeconfig_path if cluster is not None else None)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-helm-"))
        self.env = dict(os.environ)
        for var in ("cache", "config", "data"):
            home = self.workdir / var
            home.mkdir(parents=True, exist_ok=True)
            self.env[f"HELM_{var.upper()}_HOME"] = str(home)
        for leaked in ("HELM_NAMESPACE", "HELM_KUBECONTEXT", "HELM_KUBETOKEN", "HELM_KUBEAPISERVER", "HELM_DRIVER"):
            self.env.pop(leaked, None)
        if self.kubeconfig:
            self.env["KUBECONFIG"] = self.kubeconfig
        else:
            self.env.pop("KUBECONFIG", None)
        self._values_files = 0

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Helm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def run(self, *args: str, check: bool = True, timeout: float = 300.0, cluster: bool = True) -> subprocess.CompletedProcess[str]:
        """``helm <args>``; with ``cluster`` the kubeconfig flag is added."""
        argv = [self.binary, *args]
        if cluster and self.kubeconfig:
            argv.append(f"--kubeconfig={self.kubeconfig}")
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise HelmError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def values_file(self, values: dict[str, Any]) -> str:
        """Write ``values`` to a YAML file for ``-f`` and return its path."""
        self._values_files += 1
        path = self.workdir / f"values-{self._values_files}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return str(path)

    def _values_args(self, values: Optional[dict[str, Any]], values_files: Sequence[str]) -> list[str]:
        args: list[str] = []
        for f in values_files:
            args += ["-f", str(f)]
        if values:
            args += ["-f", self.values_file(values)]
        return args

    # ----------------------------------------------------------------- commands

    def version(self) -> str:
        return self.run("version", "--short", cluster=False).stdout.strip()

    def lint(
        self,
        chart_dir: os.PathLike[str] | str,
        *,
        strict: bool = True,
        values: Optional[dict[str, Any]] = None,
        values_files: Sequence[str] = (),
        kube_version: Optional[str] = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm lint [--strict]``; raises ``HelmError`` when the chart has problems."""
        args = ["lint", str(chart_dir), *self._values_args(values, values_files)]
        if strict:
            args.append("--strict")
        if kube_version:
            args.append(f"--kube-version={kube_version}")
        return self.run(*args, check=check, cluster=False)

    def template(
        self,
        release: str,
        chart_dir: os.PathLike[str] | str,
        *,
        namespace: str = "default",
        values: Optional[dict[str, Any]] = None,
        values_files: Sequence[str] = (),
        kube_version: Optional[str] = None,
        api_versions: Sequence[str] = (),
        validate: bool = False,
        extra_args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm template``; with ``validate`` the manifests are checked by the test API server."""
        args = ["template", release, str(chart_dir), f"--namespace={namespace}", *self._values_args(values, values_files)]
        if kube_version:
            args.append(f"--kube-version={kube_version}")
        for av in api_versions:
            args.append(f"--api-versions={av}")
        if validate:
            args.append("--validate")
        args += list(extra_args)
        return self.run(*args, check=check, cluster=validate)

    def template_docs(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """``template(...)`` parsed into a list of manifests (empty documents dropped)."""
        out = self.template(*args, **kwargs).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def install(
        self,
        release: str,
        chart_dir: os.PathLike[str] | str,
        namespace: str,
        values: Optional[dict[str, Any]] = None,
        *,
        values_files: Sequence[str] = (),
        wait: bool = False,
        timeout: str = "120s",
        create_namespace: bool = False,
        extra_args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm install`` into the test cluster.

        ``wait=True`` waits for workloads to become ready; only Jobs can, here (the
        fake kubelet runs Job pods only), so leave it off for charts with Deployments.
        """
        args = [
            "install", release, str(chart_dir), f"--namespace={namespace}",
            *self._values_args(values, values_files), f"--timeout={timeout}",
        ]
        if wait:
            args.append("--wait")
        if create_namespace:
            args.append("--create-namespace")
        args += list(extra_args)
        return self.run(*args, check=check)

    def upgrade(
        self,
        release: str,
        chart_dir: os.PathLike[str] | str,
        namespace: str,
        values: Optional[dict[str, Any]] = None,
        *,
        values_files: Sequence[str] = (),
        install: bool = True,
        wait: bool = False,
        timeout: str = "120s",
        extra_args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm upgrade [--install]``."""
        args = [
            "upgrade", release, str(chart_dir), f"--namespace={namespace}",
            *self._values_args(values, values_files), f"--timeout={timeout}",
        ]
        if install:
            args.append("--install")
        if wait:
            args.append("--wait")
        args += list(extra_args)
        return self.run(*args, check=check)

    def uninstall(
        self,
        release: str,
        namespace: str,
        *,
        wait: bool = False,
        timeout: str = "120s",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm uninstall``."""
        args = ["uninstall", release, f"--namespace={namespace}", f"--timeout={timeout}"]
        if wait:
            args.append("--wait")
        return self.run(*args, check=check)

    def get_manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        """The manifests of an installed release."""
        out = self.run("get", "manifest", release, f"--namespace={namespace}").stdout
        return [d for d in yaml.safe_load_all(out) if d]
