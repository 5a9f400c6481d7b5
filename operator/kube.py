"""Kubernetes I/O of the operator: requests, status patches, Jobs, pods and Events.

Every call goes through :class:`~.kubeapi.Retrying` (429, 409 on updates, 5xx). What a
404 or a 409 means is decided here, once: a request deleted meanwhile has no status to
patch (``None``); a Job that already exists under its deterministic name is adopted if
it belongs to the same request. Nothing in this module decides what a request's next
phase is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from kubescribe import GROUP, PLURAL, VERSION

from . import kueue_api
from .jobs import LABEL_MANAGED_BY, LABEL_POOL, LABEL_REQUEST_UID, MANAGED_BY
from .kubeapi import REQUEST_TIMEOUT, Retrying

log = logging.getLogger("kubescribe.operator")

#: Events are posted as this component (kubectl describe shows "From: kubescribe-operator").
EVENT_SOURCE = "kubescribe-operator"


def _paged(fetch: Callable[[str], dict]) -> Iterator[dict]:
    """The pages of a LIST: ``fetch(continue_token)`` ("" for the first) until a page
    carries no continue token."""
    token = ""
    while True:
        page = fetch(token)
        yield page
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return


class JobGoingAway(Exception):
    """The Job of this name is still being deleted; create it again on a later pass."""


class Kube:
    """The API calls the operator makes, with their 404/409 meaning.

    Args:
        api_client: a configured ``kubernetes.client.ApiClient``.
    """

    def __init__(self, api_client):
        from kubernetes import client

        self.custom = Retrying(client.CustomObjectsApi(api_client))
        self.batch = Retrying(client.BatchV1Api(api_client))
        self.core = Retrying(client.CoreV1Api(api_client))
        # Events are best effort: one try, so a throttled API server does not slow admission.
        self.events_api = client.CoreV1Api(api_client)
        self.version_api = client.VersionApi(api_client)

    # -- requests ---------------------------------------------------------------------
    def get_request(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; ``None`` when the Secret or the key is missing;
        PermissionError when the operator may not read Secrets."""
        import base64

        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise PermissionError(f"the operator may not read Secret {namespace}/{name} (chart value "
                                      "notifications.readSigningSecrets)") from None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    def list_requests(self, namespace: str, limit: int = 0, continue_: str = "") -> dict:
        """One LIST of requests (a page of ``limit`` when set, from ``continue_``)."""
        kw: dict = {"limit": limit} if limit else {}
        if continue_:
            kw["_continue"] = continue_
        if namespace:
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)
        return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)

    def request_pages(self, namespace: str, limit: int = 500) -> Iterator[dict]:
        """Every request, a page at a time: one consistent snapshot (the API server serves
        every page at the first page's resourceVersion), never all the bodies in memory at
        once. An expired continue token (410) raises: the caller's next pass starts over."""
        return _paged(lambda token: self.list_requests(namespace, limit=limit, continue_=token))

    def delete_request(self, namespace: str, name: str, uid: str, resource_version: str | None) -> bool:
        """Delete a request if it is still the object that was judged (same uid and
        resourceVersion): an edit or a new request of the same name in between keeps it.
        ``False`` when it is gone already or changed (404, 409)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        opts = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid, resource_version=resource_version),
                                      propagation_policy="Background")
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=opts)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict | None:
        """Merge-patch the status subresource; ``None`` when the request is gone (404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        except ApiException as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: nothing to report to
            raise

    def event(self, body: dict, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the request; never fails the caller."""
        meta = body["metadata"]
        now = datetime.now(timezone.utc)
        ev = {
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": body.get("kind", "TranscriptionRequest"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.events_api.create_namespaced_event(meta["namespace"], ev, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

    # -- Jobs and pods ----------------------------------------------------------------
    def create_job(self, namespace: str, job: dict, owner_uid: str) -> bool:
        """Create a request's runner Job; ``False`` when it existed already and is adopted
        (an operator restart, or a Running patch that failed after the create)."""
        from kubernetes.client.exceptions import ApiException

        name = job["metadata"]["name"]
        try:
            # The created Job is not read back: client models of a runner Job cost more
            # CPU than the call. The body is read all the same, to free the connection.
            self.batch.create_namespaced_job(namespace, job, _preload_content=False).data
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.read_job(namespace, name)
        if existing is None:
            raise JobGoingAway(name)  # deleted since the 409: create it on a later pass
        meta = existing["metadata"]
        if (meta.get("labels") or {}).get(LABEL_REQUEST_UID) != owner_uid:
            raise RuntimeError(f"Job {name} exists and belongs to another request")
        if meta.get("deletionTimestamp"):
            raise JobGoingAway(name)
        log.info("Job %s/%s already exists (operator restart): adopting it", namespace, name)
        return False

    def job_pages(self, namespace: str, limit: int = 500) -> Iterator[list[dict]]:
        """The operator's runner Jobs that have not succeeded, a page of ``limit`` at a
        time, as dicts read from the response's JSON: the typed client's models would cost
        more CPU than the call, for Jobs the caller looks at once and drops.

        Succeeded Jobs stay until their request is deleted, and after a burst they are most
        of the runner Jobs; the API server leaves them out (field ``status.successful``),
        so a pass costs what is still running, not what ever ran."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

        def page(token: str) -> dict:
            kw: dict[str, Any] = {"label_selector": selector, "field_selector": "status.successful=0",
                                  "limit": limit, "_preload_content": False}
            if token:
                kw["_continue"] = token
            resp = (self.batch.list_namespaced_job(namespace, **kw) if namespace
                    else self.batch.list_job_for_all_namespaces(**kw))
            return json.loads(resp.data)

        return (p.get("items") or [] for p in _paged(page))

    def read_job(self, namespace: str, name: str) -> dict | None:
        """The Job as an API dict read from the response's JSON, or ``None`` when it no
        longer exists. (Through the client's models and back to a dict, a runner Job's
        read was most of the resync's CPU: 10,000 requests, py-spy.)"""
        from kubernetes.client.exceptions import ApiException

        try:
            return json.loads(self.batch.read_namespaced_job(name, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_job(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def job_workload(self, namespace: str, job_uid: str) -> dict | None:
        """Kueue's Workload for a Job (read only), or ``None`` when there is none yet."""
        from kubernetes.client.exceptions import ApiException

        try:
            items = self.custom.list_namespaced_custom_object(
                kueue_api.GROUP, kueue_api.VERSION, namespace, "workloads",
                label_selector=f"{kueue_api.LABEL_JOB_UID}={job_uid}")["items"]
        except ApiException as exc:
            if exc.status == 404:  # Kueue's CRDs are not installed (yet)
                return None
            raise
        return items[0] if items else None

    def job_pods(self, namespace: str, job: str) -> list[dict]:
        """A Job's pods as plain JSON, as ``pool_jobs`` reads Jobs: read on every runner
        Job's end, and client models of a runner pod cost more than the request."""
        resp = self.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}",
                                             _preload_content=False)
        return json.loads(resp.data)["items"]

    def pool_jobs(self, namespace: str) -> list[dict]:
        """The pooled runner Jobs as plain JSON (no client models: a pool's Jobs carry the
        whole pod template, and building models of them cost more than the request)."""
        resp = self.batch.list_namespaced_job(namespace, label_selector=f"{LABEL_POOL}=true", _preload_content=False)
        return json.loads(resp.data)["items"]

    def create_pool_job(self, namespace: str, job: dict) -> None:
        self.batch.create_namespaced_job(namespace, job)

    # -- readiness --------------------------------------------------------------------
    def ping(self) -> None:
        """One cheap authenticated call (GET /version); raises when the API server is out
        of reach. Not retried: readiness wants the answer now."""
        self.version_api.get_code(_request_timeout=5)
