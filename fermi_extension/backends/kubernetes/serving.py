"""Inference services on Kubernetes.

The deployment controller (``deployments/service.py``) is the same on both backends: it decides
how many replicas each revision needs (autoscaling on the router's in-flight counts), when a
canary gets traffic, and what drains. Here a replica is a *slot* of a Kubernetes workload:

- **Deployments** (any cluster): each revision is a Deployment + Service + PodDisruptionBudget
  (rolling updates, readiness probes). Its replica ids are kept in the annotation
  ``fermi.io/replicas`` and ``spec.replicas`` is their number: starting a replica adds a slot,
  stopping one removes it (one PATCH). Kubernetes restarts crashed pods and reschedules evicted
  ones itself. The routing table (``publish``) is written into the ConfigMap ``fermi-routes``
  that the in-cluster router reads; it splits traffic between revisions' Services by weight.
- **KServe** (where the InferenceService CRD exists, ``mode='auto'``): each revision is an
  InferenceService in RawDeployment ("Standard") mode, its slots its min = max replicas; KServe
  runs the model server, its storage initializer and its Deployment. KServe's own canary
  (``canaryTrafficPercent``) exists only in its Serverless mode, so the split between revisions
  is the router's here too, to each revision's ``NAME-predictor`` Service.

Either way a canary is a second revision with its own workload, and the traffic percentages of
the routing table are the router's. Nothing is polled per replica: Deployments (or
InferenceServices) are watched, one watch for all.

Replicas accept only the router: a revision's model server gets the key derived from
``router_token`` and the Service URL handed to the router (``serving.replica_key``), and its
readiness and liveness probes show it. Without a ``router_token``, and under KServe (whose model
servers take no key), replicas answer whoever reaches them inside the cluster: a NetworkPolicy
that admits only the router to their pods is then the guard, and a warning says so once.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
from traitlets import Enum, Unicode, default

from ...catalog.schema import Pool, Profile
from ...deployments.backend import ReplicaHandle, ReplicaLaunch, ServingBackend
from ...serving.fetch import model_uri
from ...serving.replica_key import ENV_REPLICA_KEY, ENV_VLLM_API_KEY, replica_key
from .kube_client import KubeClient, gather_quietly
from .objects import (
    MANAGED_BY,
    ServingRevision,
    dns_name,
    make_inference_service,
    make_serving_objects,
    revision_url,
    service_url,
)
from .settings import KubernetesSettings
from .watch import Informer

SERVING_LABELS = {**MANAGED_BY, "app.kubernetes.io/component": "inference-service"}
SLOTS = "fermi.io/replicas"
ROUTES_CONFIGMAP = "fermi-routes"


def trim(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    return {"metadata": {k: meta[k] for k in ("name", "labels", "annotations") if k in meta},
            "spec": {"replicas": spec.get("replicas")}, "status": obj.get("status") or {}}


def slots_of(obj: dict | None) -> list[str]:
    try:
        return json.loads(((obj or {}).get("metadata") or {}).get("annotations", {}).get(SLOTS, "[]"))
    except ValueError:
        return []


class KubeServingBackend(KubernetesSettings, ServingBackend):
    fetches_models = True  # each revision's storage initializer does, with its own token
    mode = Enum(
        ["auto", "deployments", "kserve"], default_value="auto",
        help="""How revisions run: 'deployments' (Deployment + Service + PodDisruptionBudget per
        revision, traffic split by Fermi's router), 'kserve' (one KServe InferenceService per
        deployment, RawDeployment mode, KServe's canary), or 'auto' (default): KServe where the
        cluster serves its InferenceService API.""",
    ).tag(config=True)

    router_admin_url = Unicode(
        help="""Admin URL of the in-cluster router (its /stats feeds the autoscaler), e.g.
        http://fermi-router-admin:8002. Default: $FERMI_ROUTER_ADMIN_URL; empty: no traffic
        statistics (deployments stay at their minimum).""",
    ).tag(config=True)

    @default("router_admin_url")
    def _default_router_admin_url(self):
        return os.environ.get("FERMI_ROUTER_ADMIN_URL", "")

    router_token = Unicode(
        help="Admin token of the in-cluster router (default: $FERMI_ROUTER_TOKEN).",
    ).tag(config=True)

    @default("router_token")
    def _default_router_token(self):
        return os.environ.get("FERMI_ROUTER_TOKEN", "")

    serving_dir = Unicode(help="Folder where the control plane keeps model versions it fetched.").tag(
        config=True)

    @default("serving_dir")
    def _default_serving_dir(self):
        return str(Path(os.environ.get("FERMI_DATA_DIR", "fermi-data")) / "serving")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client: KubeClient | None = None
        self.workloads: Informer | None = None
        self.kserve = False
        self._applied_generation = -1
        self._routes_sent: dict | None = None
        self._http = httpx.AsyncClient(timeout=2)
        self._publish_lock = asyncio.Lock()
        self._warned_open_replicas = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            return
        self.client = await self.connect()
        self.kserve = self.mode == "kserve" or (
            self.mode == "auto" and await self.client.has("InferenceService"))
        self.kube_cluster = self.cluster(use_kueue=False)
        kind = "InferenceService" if self.kserve else "Deployment"
        self.workloads = Informer(self.client, kind, self.namespace, SERVING_LABELS, trim=trim,
                                  timeout_seconds=self.watch_timeout_seconds)
        await self.workloads.start()
        self.log.info("Kubernetes inference services in namespace %s as %s", self.namespace,
                      "KServe InferenceServices" if self.kserve else "Deployments")

    async def close(self, *, stop_all: bool) -> None:
        await self.disconnect(self.workloads)
        await self._http.aclose()

    def availability(self, profile: Profile, pool: Pool, engine: str) -> tuple[bool, str | None]:
        if engine == "vllm" and not profile.gpu:
            return False, (f"The vllm engine needs a GPU profile; {profile.slug!r} has none. "
                           "Choose a GPU profile, or engine 'auto' for scikit-learn / MLflow "
                           "models.")
        return True, None

    def model_dir(self, model: str, version: str) -> Path:
        return Path(self.serving_dir) / "models" / model / str(version)

    # -- replicas as slots ----------------------------------------------------------------------

    def _workload_name(self, launch: ReplicaLaunch) -> str:
        return dns_name(f"{launch.deployment}-v{launch.version}", 45)

    def _revision(self, launch: ReplicaLaunch) -> ServingRevision:
        return ServingRevision(launch.deployment, launch.runtime.env.get("FERMI_OWNER", "fermi"),
                               launch.model, str(launch.version), f"v{launch.version}",
                               model_uri(launch.model, str(launch.version)),
                               "vllm" if launch.engine == "vllm" else "auto",
                               fetch_token=launch.fetch_token or "")

    def _url(self, name: str) -> str:
        """The URL the router is handed, and the replica key is derived from: the revision's
        Service with the port it declares, or KServe's raw-mode ``NAME-predictor`` Service,
        which declares 80 (no port in the URL)."""
        if self.kserve:
            return service_url(f"{name}-predictor", self.namespace)
        return revision_url(name, self.namespace)

    async def start_replica(self, launch: ReplicaLaunch) -> ReplicaHandle:
        name = self._workload_name(launch)
        current = self.workloads.get(name)
        slots = slots_of(current) + [launch.replica_id]
        if current is None:
            for obj in self._objects(name, launch, slots):
                created = await self.client.apply(obj)
                if obj["kind"] in ("Deployment", "InferenceService"):
                    self.workloads.remember(created or obj)
        else:
            await self._resize(name, slots)
        return ReplicaHandle(None, None, self._url(name), f"{name}/{launch.replica_id}")

    def _objects(self, name: str, launch: ReplicaLaunch, slots: list[str]) -> list[dict]:
        annotations = {SLOTS: json.dumps(slots)}
        revision = self._revision(launch)
        if self.kserve:
            self._warn_open_replicas("KServe's model servers take no replica key")
            isvc = make_inference_service(revision, launch.runtime, self.kube_cluster,
                                          min_replicas=len(slots), max_replicas=len(slots),
                                          target_concurrency=1)
            isvc["metadata"]["name"] = name
            isvc["metadata"]["annotations"].update(annotations)
            return [isvc]
        objects = make_serving_objects(revision, launch.runtime, self.kube_cluster,
                                       min_replicas=len(slots), max_replicas=len(slots),
                                       target_concurrency=1)
        # the control plane's autoscaler sets the replicas; an HPA would fight it
        objects = [o for o in objects if o["kind"] != "HorizontalPodAutoscaler"]
        for obj in objects:  # the slot name, which _url names the Service by, whatever its length
            obj["metadata"] = {**obj["metadata"], "name": name}
        objects[0]["metadata"]["annotations"] = annotations
        self._require_key(objects[0], self._url(name), revision.engine)
        return objects

    def _require_key(self, deployment: dict, url: str, engine: str) -> None:
        """Give the model server its key, and its probes the header (the kubelet is a stranger
        to it too); vLLM leaves its /health open and checks the key on /v1 only."""
        if not self.router_token:
            self._warn_open_replicas("no router_token ($FERMI_ROUTER_TOKEN) is set")
            return
        key = replica_key(self.router_token, url)
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                         if c["name"] == "model-server")
        env = [e for e in container.get("env", [])
               if e["name"] not in (ENV_REPLICA_KEY, ENV_VLLM_API_KEY)]
        env.append({"name": ENV_VLLM_API_KEY if engine == "vllm" else ENV_REPLICA_KEY, "value": key})
        container["env"] = env
        if engine != "vllm":
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "httpGet" in container.get(probe, {}):
                    container[probe]["httpGet"]["httpHeaders"] = [
                        {"name": "Authorization", "value": f"Bearer {key}"}]

    def _warn_open_replicas(self, why: str) -> None:
        if not self._warned_open_replicas:
            self._warned_open_replicas = True
            self.log.warning("%s: model-server replicas answer anyone who reaches them inside the "
                             "cluster, without credentials; admit only the router to their pods "
                             "(a NetworkPolicy)", why)

    async def _resize(self, name: str, slots: list[str]) -> None:
        """One PATCH: the slot list and the replica count together."""
        changes: dict = {"metadata": {"annotations": {SLOTS: json.dumps(slots)}}}
        if self.kserve:
            changes["spec"] = {"predictor": {"minReplicas": len(slots),
                                             "maxReplicas": len(slots)}}
        else:
            changes["spec"] = {"replicas": len(slots)}
        kind = "InferenceService" if self.kserve else "Deployment"
        changed = await self.client.patch(kind, self.namespace, name, changes)
        self.workloads.objects[name] = trim(changed)

    def _slot(self, handle: ReplicaHandle) -> tuple[str, str] | None:
        if not handle.name or "/" not in handle.name:
            return None
        name, slot = handle.name.split("/", 1)
        return name, slot

    def alive(self, handle: ReplicaHandle) -> bool:
        found = self._slot(handle)
        if found is None or self.workloads is None:
            return False
        name, slot = found
        return slot in slots_of(self.workloads.get(name))

    async def ready(self, handle: ReplicaHandle) -> bool:
        found = self._slot(handle)
        if found is None:
            return False
        name, slot = found
        obj = self.workloads.get(name)
        slots = slots_of(obj)
        if slot not in slots:
            return False
        status = (obj or {}).get("status") or {}
        if self.kserve:
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in status.get("conditions") or [])
        return slots.index(slot) < int(status.get("readyReplicas") or 0)

    async def stop_replica(self, handle: ReplicaHandle) -> None:
        found = self._slot(handle)
        if found is None:
            return
        name, slot = found
        slots = [s for s in slots_of(self.workloads.get(name)) if s != slot]
        if slots:
            await self._resize(name, slots)
            return
        # the revision's last replica: its objects go (their pods with them)
        kinds = ("InferenceService",) if self.kserve else (
            "Deployment", "Service", "PodDisruptionBudget")
        await gather_quietly(*(self.client.delete(kind, self.namespace, name) for kind in kinds))
        self.workloads.objects.pop(name, None)

    # -- routing --------------------------------------------------------------------------------

    def publish(self, routes: dict) -> None:
        """Applied in the background (the controller's interface is synchronous); ``stats``
        reports the generation once the cluster has it."""
        self._publishing = asyncio.get_running_loop().create_task(self._publish(routes))

    async def _publish(self, routes: dict) -> None:
        generation = routes.get("generation", 0)
        async with self._publish_lock:  # in order; a table older than the applied one is moot
            if generation < self._applied_generation:
                return
            try:
                if routes != self._routes_sent:
                    await self.client.apply({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": ROUTES_CONFIGMAP, "namespace": self.namespace,
                                     "labels": dict(MANAGED_BY)},
                        "data": {"routes.json": json.dumps(routes, sort_keys=True)}})
                    self._routes_sent = routes
                self._applied_generation = max(self._applied_generation, generation)
            except Exception:
                self.log.exception("publishing the routing table failed")

    async def stats(self) -> dict:
        if self.router_admin_url:
            try:
                response = await self._http.get(
                    f"{self.router_admin_url.rstrip('/')}/stats",
                    headers={"Authorization": f"token {self.router_token}"})
                if response.status_code == 200:
                    return response.json()
            except (httpx.HTTPError, ValueError):
                pass
        # no router to ask: what has been applied to the cluster is what routes
        return {"generation": self._applied_generation, "deployments": {}}

