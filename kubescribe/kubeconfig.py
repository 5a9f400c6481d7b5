"""Where a kubescribe process finds its cluster: one loader for the CLI, the operator and
the gateway.

The precedence is controller-runtime's, which Kubernetes tools share:

1. an explicit kubeconfig (the CLI's ``--kubeconfig``), then
2. ``KUBECONFIG`` (a path, or several joined with ``:``, merged as kubectl merges them), then
3. the pod's ServiceAccount, when the process runs in a cluster
   (``KUBERNETES_SERVICE_HOST`` set and the token mounted), then
4. ``~/.kube/config``.

The official client's loader reads the file, so every kubeconfig form works as in
kubectl: client certificates, tokens, token files and exec plugins. A token from an exec
plugin (cloud logins) or a rotating ServiceAccount token expires; :func:`bearer_token`
asks the loader again, which runs the plugin anew when its token has expired.
"""

from __future__ import annotations

import os
from typing import Any


class NoCredentials(RuntimeError):
    """No source in the precedence gave usable credentials; the message is one line that
    says what was tried and what to do."""


def in_cluster() -> bool:
    """The process runs in a pod with a ServiceAccount token mounted (where the
    official client's in-cluster loader reads it)."""
    from kubernetes.config import incluster_config

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(incluster_config.SERVICE_TOKEN_FILENAME)


def source(kubeconfig: str | None = None) -> str:
    """Which source :func:`load` uses: ``"kubeconfig"`` (explicit or KUBECONFIG),
    ``"in-cluster"`` or ``"default kubeconfig"``."""
    if kubeconfig or os.environ.get("KUBECONFIG"):
        return "kubeconfig"
    return "in-cluster" if in_cluster() else "default kubeconfig"


def load(configuration: Any = None, *, kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration`` filled from the first source of the
    precedence above (``configuration`` if given, else a new one). Raises
    :class:`NoCredentials`."""
    from kubernetes import client, config

    cfg = configuration if configuration is not None else client.Configuration()
    chosen = source(kubeconfig)
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        if chosen == "in-cluster":
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=path, context=context or None, client_configuration=cfg)
    except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        where = {"kubeconfig": f"kubeconfig {path}", "in-cluster": "the pod's ServiceAccount",
                 "default kubeconfig": "~/.kube/config (no KUBECONFIG set, not in a pod)"}[chosen]
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise NoCredentials(f"no Kubernetes credentials from {where}: {first}; set KUBECONFIG (or --kubeconfig) "
                            f"or run it in the cluster") from None
    return cfg


def bearer_token(cfg: Any) -> str | None:
    """The configuration's bearer token now, refreshed by the loader's hook when it has
    one (exec plugins and auth providers whose token expired run again)."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    if not header:
        return None
    parts = header.split(" ", 1)
    return parts[1] if len(parts) == 2 else parts[0]
