"""The one module that calls the Kubernetes API.

Why the official `kubernetes` client and not kopf's own API access: kopf's request functions
live in private modules (`kopf._cogs.clients`) that change between releases, while the client
is public, handles every way of logging in (in-cluster ServiceAccount, kubeconfig with exec
plugins, OIDC) and is what kopf itself piggybacks on to log in. We use only its transport
(`ApiClient`: auth, TLS, retries) and send and receive plain dicts, so the objects built in
`builders.py` go out exactly as built and observations come back exactly as served — no
round-trip through the client's generated models, which would drop fields they do not know.

The client is synchronous (urllib3): every call runs in a worker thread (`asyncio.to_thread`)
so the operator's event loop — kopf's watches — never blocks on the network.

Configuration: the in-cluster ServiceAccount first, then `KUBECONFIG` / `~/.kube/config`, like
kopf's own login, so the operator runs the same from a pod and from a workstation.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from refinery.api.v1alpha1 import GROUP, PLURAL, VERSION
from refinery.core.conditions import rfc3339

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: `/api/v1` for the core group, `/apis/<group>/<version>`."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The object's path; with `namespace` None, the kind's cluster-wide collection."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is None:
            return f"{base}/{self.plural}"
        path = f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


PIPELINES = Resource(GROUP, VERSION, PLURAL)
JOBS = Resource("batch", "v1", "jobs")
CONFIGMAPS = Resource("", "v1", "configmaps")
PODS = Resource("", "v1", "pods")  # stage pods: watched to tell a disruption from a failure (disruptions.py)
NODES = Resource("", "v1", "nodes")  # read, by name, when a stage pod stops being ready: is its node lost?
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
EVENTS = Resource("", "v1", "events")
EVENT_SOURCE = "refinery-operator"
EVENT_MESSAGE_LIMIT = 1024  # the API server refuses longer Event messages
BY_KIND = {
    "Job": JOBS,
    "ConfigMap": CONFIGMAPS,
    "PersistentVolumeClaim": Resource("", "v1", "persistentvolumeclaims"),
    "Service": Resource("", "v1", "services"),  # headless, of a multi-node stage attempt
    "ServiceAccount": Resource("", "v1", "serviceaccounts"),
    "Role": Resource("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "TrainingPipeline": PIPELINES,
}


def load_api_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config, else the kubeconfig file (`KUBECONFIG`, then ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: removed keys become null,
    nested objects are diffed, lists and scalars are replaced whole."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = value
    return patch


class Cluster:
    """The Kubernetes API as the operator uses it: dicts in, dicts out, never blocking the loop."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Cluster:
        return cls(load_api_client(kubeconfig))

    def close(self) -> None:
        self._api.close()

    async def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                      body: Any = None, content_type: str | None = None) -> dict[str, Any]:
        """One API call; raises `ApiException` on any non-2xx answer."""
        return await asyncio.to_thread(self._request, method, path, query, body, content_type)

    def _request(self, method: str, path: str, query: list[tuple[str, str]] | None, body: Any,
                 content_type: str | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        serialized = self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT_S)
        response.read()
        result = self._api.response_deserialize(response, {"2XX": "object"}).data
        return result if isinstance(result, dict) else {}

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def create_if_absent(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the object; when it exists already (409), read it. Returns (object, created).

        Names are deterministic, so "already exists" means an earlier reconcile — maybe of an
        operator that was restarted since — created it: never a duplicate.
        """
        resource = BY_KIND[obj["kind"]]
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            return await self.request("POST", resource.path(namespace), body=dict(obj)), True
        except ApiException as e:
            if e.status != 409:
                raise
        existing = await self.get(resource, namespace, name)
        if existing is None:  # deleted between the two calls; the next reconcile creates it
            raise ApiException(status=409, reason=f"{obj['kind']} {namespace}/{name} is being deleted")
        return existing, False

    async def list_labelled(self, resource: Resource, namespace: str | None, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects carrying all these labels, in one namespace or (None) in all.

        The selector is also applied locally: free on a real API server (it already filtered),
        and it keeps the answer right where a server ignores `labelSelector` (kmock does).
        """
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        answer = await self.request("GET", resource.path(namespace), query=[("labelSelector", selector)])
        return [item for item in answer.get("items") or []
                if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    async def patch(self, resource: Resource, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch of one object; None when it is gone."""
        try:
            return await self.request("PATCH", resource.path(namespace, name), body=dict(patch), content_type=MERGE_PATCH)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/api/v1/nodes/{quote(name, safe='')}")
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Strategic merge patch of a pod's status (conditions merge by type); False when it is gone."""
        try:
            await self.request("PATCH", PODS.path(namespace, name, "status"), body={"status": dict(status)},
                               content_type=STRATEGIC_MERGE_PATCH)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    async def delete(self, resource: Resource, namespace: str, name: str, propagation: str = "Foreground") -> bool:
        """Delete one object; False when it was already gone. Foreground: the object stays (with a
        deletionTimestamp) until its dependants — a Job's pods — are gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
                         now: datetime | None = None) -> None:
        """A core/v1 Event about `involved` (an object's apiVersion/kind/metadata), as `kubectl
        describe` shows it. Events are best effort: a failure is logged, never raised."""
        meta = involved.get("metadata") or {}
        stamp = rfc3339(now or datetime.now(timezone.utc))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:EVENT_MESSAGE_LIMIT],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.request("POST", EVENTS.path(meta["namespace"]), body=event)
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], e)

    async def patch_status(self, namespace: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any],
                           resource_version: str | None = None) -> dict[str, Any] | None:
        """Merge-patch the pipeline's status subresource from `old` to `new`; the object as it is
        after the patch, or None when the two are equal (nothing is sent).

        A JSON merge patch, not a strategic one: custom resources do not support the latter.
        With `resource_version` (the version of the object `new` was computed from) the patch is
        conditional: the server refuses it with 409 when the object changed since, and
        `StatusConflict` is raised — the caller reads the object again and recomputes.
        """
        diff = merge_patch(old, new)
        if not diff:
            return None
        body: dict[str, Any] = {"status": diff}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return await self.request("PATCH", PIPELINES.path(namespace, name, "status"), body=body, content_type=MERGE_PATCH)
        except ApiException as e:
            if e.status == 409:
                raise StatusConflict(namespace, name, resource_version) from e
            raise


class StatusConflict(ApiException):
    """A conditional status patch was refused: the pipeline changed after the version it was
    computed from (409). An ApiException, so a caller that does not retry treats it as any API error."""

    def __init__(self, namespace: str, name: str, resource_version: str | None) -> None:
        super().__init__(status=409, reason=f"{namespace}/{name} changed after resourceVersion {resource_version}")
        self.namespace, self.name, self.resource_version = namespace, name, resource_version
