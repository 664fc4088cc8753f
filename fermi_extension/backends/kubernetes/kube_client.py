"""A small, generic Kubernetes API client over kubernetes_asyncio's ``ApiClient``.

The objects the backend applies are plain dicts from the pure builders (``objects.py``), so the
client speaks dicts too: create, get, merge-patch, delete (with propagation), list, watch and
pod logs, for any resource named by ``apiVersion`` + kind (built-in or custom). It counts its
calls per verb, which is how the scale benchmark shows that API calls per job stay constant.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterator

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


KINDS: dict[str, Kind] = {
    "Pod": Kind("v1", "pods"),
    "Service": Kind("v1", "services"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Event": Kind("v1", "events"),
    "Job": Kind("batch/v1", "jobs"),
    "Deployment": Kind("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "InferenceService": Kind("serving.kserve.io/v1beta1", "inferenceservices"),
    "PyTorchJob": Kind("kubeflow.org/v1", "pytorchjobs"),
    "ResourceFlavor": Kind("kueue.x-k8s.io/v1beta1", "resourceflavors", namespaced=False),
    "ClusterQueue": Kind("kueue.x-k8s.io/v1beta1", "clusterqueues", namespaced=False),
    "LocalQueue": Kind("kueue.x-k8s.io/v1beta1", "localqueues"),
    # what Kueue makes of each queued Job (owned by it): its admission state and reason
    "Workload": Kind("kueue.x-k8s.io/v1beta1", "workloads"),
}


class KubeError(Exception):
    """An answer of the API server that is not a success; ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"{status} {reason}: {message}".strip(": "))
        self.status, self.reason, self.message = status, reason, message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def path(kind: str | Kind, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    k = KINDS[kind] if isinstance(kind, str) else kind
    base = f"/api/{k.api_version}" if "/" not in k.api_version else f"/apis/{k.api_version}"
    if k.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{k.plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class KubeClient:
    """One connection pool to one API server. ``calls`` counts requests per verb."""

    def __init__(self, api: kclient.ApiClient):
        self.api = api
        self.calls: Counter[str] = Counter()
        self._discovered: dict[str, set[str] | None] = {}

    @classmethod
    async def connect(cls, kubeconfig: str = "", context: str = "") -> "KubeClient":
        """From a kubeconfig file (``kubeconfig`` or $KUBECONFIG / ~/.kube/config), or the
        in-cluster service account when the control plane runs in a pod."""
        configuration = kclient.Configuration()
        if kubeconfig:
            await kconfig.load_kube_config(config_file=kubeconfig, context=context or None,
                                           client_configuration=configuration)
        else:
            try:
                kconfig.load_incluster_config(client_configuration=configuration)
            except kconfig.ConfigException:
                await kconfig.load_kube_config(context=context or None,
                                               client_configuration=configuration)
        return cls(kclient.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    # -- raw requests ---------------------------------------------------------------------------

    async def _send(self, method: str, url: str, *, query: dict | None = None,
                    body: Any = None, content_type: str = "application/json",
                    timeout: float | None = 30):
        self.calls[method if not (query or {}).get("watch") else "WATCH"] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            return await self.api.call_api(
                url, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
        except ApiException as error:  # raised by the client itself (e.g. auth)
            raise KubeError(error.status or 0, error.reason or "error", str(error.body or ""))

    async def request(self, method: str, url: str, *, query: dict | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        response = await self._send(method, url, query=query, body=body, content_type=content_type)
        async with response:
            data = await response.read()
            if not 200 <= response.status < 300:
                try:
                    status = json.loads(data)
                    reason, message = status.get("reason", ""), status.get("message", "")
                except ValueError:
                    reason, message = response.reason or "", data[:500].decode(errors="replace")
                raise KubeError(response.status, reason, message)
        if response.content_type == "application/json" or data[:1] in (b"{", b"["):
            return json.loads(data) if data else None
        return data.decode(errors="replace")

    # -- objects --------------------------------------------------------------------------------

    async def create(self, obj: dict) -> dict:
        namespace = obj.get("metadata", {}).get("namespace")
        return await self.request("POST", path(obj["kind"], namespace), body=obj)

    async def apply(self, obj: dict) -> dict:
        """Create, or merge-patch what exists (the builders' output is the whole desired state)."""
        try:
            return await self.create(obj)
        except KubeError as error:
            if not error.conflict:
                raise
        meta = obj["metadata"]
        return await self.patch(obj["kind"], meta.get("namespace"), meta["name"], obj)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return await self.request("GET", path(kind, namespace, name))
        except KubeError as error:
            if error.not_found:
                return None
            raise

    async def patch(self, kind: str, namespace: str | None, name: str, changes: dict,
                    subresource: str | None = None) -> dict:
        return await self.request("PATCH", path(kind, namespace, name, subresource), body=changes,
                                  content_type="application/merge-patch+json")

    async def delete(self, kind: str, namespace: str | None, name: str,
                     propagation: str = "Background") -> bool:
        """Delete with propagation (``Background``: dependents such as a Job's pods go too).
        False when it was already gone."""
        try:
            await self.request("DELETE", path(kind, namespace, name),
                               body={"apiVersion": "v1", "kind": "DeleteOptions",
                                     "propagationPolicy": propagation})
            return True
        except KubeError as error:
            if error.not_found:
                return False
            raise

    async def list(self, kind: str, namespace: str | None, selector: str = "") -> dict:
        query = {"labelSelector": selector} if selector else None
        return await self.request("GET", path(kind, namespace), query=query)

    async def watch(self, kind: str, namespace: str | None, *, selector: str = "",
                    resource_version: str = "", timeout_seconds: int = 300
                    ) -> AsyncIterator[dict]:
        """Watch events (``{"type", "object"}``) until the server ends the stream."""
        query = {"watch": "true", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        if selector:
            query["labelSelector"] = selector
        if resource_version:
            query["resourceVersion"] = resource_version
        response = await self._send("GET", path(kind, namespace), query=query,
                                    timeout=timeout_seconds + 30)
        async with response:
            if response.status != 200:
                data = await response.read()
                try:
                    status = json.loads(data)
                except ValueError:
                    status = {}
                raise KubeError(response.status, status.get("reason", ""), status.get("message", ""))
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)

    async def logs(self, namespace: str, pod: str, *, container: str | None = None,
                   tail_lines: int | None = None, since_bytes: int | None = None) -> str:
        query: dict = {}
        if container:
            query["container"] = container
        if tail_lines is not None:
            query["tailLines"] = str(tail_lines)
        text = await self.request("GET", path("Pod", namespace, pod, "log"), query=query or None)
        return text if isinstance(text, str) else json.dumps(text)

    # -- discovery ------------------------------------------------------------------------------

    async def has(self, kind: str) -> bool:
        """Whether the API server serves ``kind`` (e.g. KServe's InferenceService CRD)."""
        k = KINDS[kind]
        if k.api_version not in self._discovered:
            try:
                listing = await self.request("GET", path(Kind(k.api_version, "")).rstrip("/"))
                self._discovered[k.api_version] = {
                    r.get("name") for r in (listing or {}).get("resources", [])}
            except KubeError:
                self._discovered[k.api_version] = None
        return k.plural in (self._discovered[k.api_version] or set())


async def gather_quietly(*aws) -> None:
    """Await all, ignoring "already gone" answers (cleanup paths)."""
    for result in await asyncio.gather(*aws, return_exceptions=True):
        if isinstance(result, KubeError) and result.not_found:
            continue
        if isinstance(result, BaseException):
            raise result
