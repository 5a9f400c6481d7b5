"""Run ``kubescribe-gateway`` as a process against the test cluster, and make callers:
ServiceAccounts with TokenRequest tokens and the RBAC each one is meant to have."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from harness.envtest import free_port
from harness.process import ServiceProcess, settings_env
from kubescribe import GROUP, PLURAL


class GatewayProcess(ServiceProcess):
    """``kubescribe-gateway`` as a child process on free loopback ports, logs in a file."""

    module = "kubescribe.gateway.main"
    health_path = "/health"

    def __init__(self, kubeconfig: str, redis_url: str, workdir: Path, **settings: Any):
        self.port, metrics_port = free_port(), free_port()
        env = dict(os.environ, KUBECONFIG=kubeconfig, KUBESCRIBE_REDIS_URL=redis_url,
                   KUBESCRIBE_GATEWAY_HOST="127.0.0.1", KUBESCRIBE_GATEWAY_PORT=str(self.port),
                   KUBESCRIBE_GATEWAY_METRICS_PORT=str(metrics_port), KUBESCRIBE_LOG_LEVEL="INFO")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update(settings_env(settings))  # a setting given wins over the defaults above
        super().__init__(env, workdir / f"gateway-{self.port}.log", workdir, metrics_port)

    def use_object_store(self, s3_server, bucket: str, prefix: str = "ks/") -> "GatewayProcess":
        """Point the gateway at ``bucket`` on the test S3 server (versitygw), with the
        server's credentials in the standard AWS variables; before ``start()``."""
        self.env.update(s3_server.env(), AWS_EC2_METADATA_DISABLED="true", KUBESCRIBE_S3_BUCKET=bucket,
                        KUBESCRIBE_S3_ENDPOINT=s3_server.endpoint, KUBESCRIBE_S3_PATH_STYLE="true",
                        KUBESCRIBE_S3_PREFIX=prefix)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health_url(self) -> str:
        return f"{self.url}{self.health_path}"


#: What a caller who may transcribe in a namespace is granted.
WRITER_RULES = [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "watch", "delete"]}]
#: The gateway's admin permission (README, "HTTP gateway").
ADMIN_RULES = [{"apiGroups": [GROUP], "resources": ["cache"], "verbs": ["get", "delete"]}]


class Callers:
    """ServiceAccounts of one namespace and their TokenRequest tokens."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.namespace = namespace
        self.cluster_objects: list[tuple[str, str]] = []

    def token(self, name: str, *, rules: list[dict] | None = None, cluster_rules: list[dict] | None = None) -> str:
        from kubernetes import client

        ns = self.namespace
        self.core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        if rules:
            self.rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
            self.rbac.create_namespaced_role_binding(ns, {"metadata": {"name": name}, "subjects": subject,
                                                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                                      "kind": "Role", "name": name}})
        if cluster_rules:
            cname = f"{ns}-{name}"
            self.rbac.create_cluster_role({"metadata": {"name": cname}, "rules": cluster_rules})
            self.rbac.create_cluster_role_binding({"metadata": {"name": cname}, "subjects": subject,
                                                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                               "kind": "ClusterRole", "name": cname}})
            self.cluster_objects.append(("role", cname))
        req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
        return self.core.create_namespaced_service_account_token(name, ns, req).status.token

    def bind_user(self, user: str, rules: list[dict]) -> None:
        name = "u-" + uuid.uuid4().hex[:8]
        self.rbac.create_namespaced_role(self.namespace, {"metadata": {"name": name}, "rules": rules})
        self.rbac.create_namespaced_role_binding(
            self.namespace, {"metadata": {"name": name},
                             "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}})

    def cleanup(self) -> None:
        for _, name in self.cluster_objects:
            for fn in (self.rbac.delete_cluster_role_binding, self.rbac.delete_cluster_role):
                try:
                    fn(name)
                except Exception:
                    pass
