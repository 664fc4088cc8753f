"""A cluster stand-in for the Kubernetes backend's tests: kmock's API emulator (real HTTP, real
``kubernetes_asyncio`` client) plus ``FakeCluster``, which plays the controllers and kubelets of
a cluster against it.

kmock stores and serves objects (create, get, list, merge-patch, watch, delete) but runs nothing:
no pods, no status, no garbage collection, no label selectors. ``FakeCluster`` watches it the way
the Job and Deployment controllers do and answers through the same API:

- a Job that is not suspended gets a Pod (labels of its template plus ``job-name``) that runs;
  a suspended one waits for Kueue, which ``FakeCluster(admit=True)`` plays by unsuspending it;
- what the pod does is what its notebook would do. The job folder is the shared volume (the
  ``pvc`` storage), so the stand-in reads the snapshot: a notebook that raises ``ValueError``
  fails with papermill's last log lines as termination message; a notebook that waits for a
  ``release`` file in its working folder runs until the test creates it (as a local job does);
  any other succeeds, writing ``output.ipynb`` into the folder as papermill would;
- ``evict(job)`` evicts the pod as a node drain would (``DisruptionTarget``, reason Evicted);
- deleting a Job deletes its pods (propagation); Deployments report their replicas ready;
  InferenceServices report Ready.

Every pod's log is served at ``pods/NAME/log``.

``FakeCluster(run_pods=True)`` plays the kubelet for real instead: a job pod's container command
(the job entry point) runs as a process on this machine with the container's environment, and
its volumeMounts resolved the way a kubelet would bind them — the jobs claim's ``subPath`` is
that job's folder under ``jobs_dir``, a dataset claim ``CLAIM/SUBPATH`` is a folder under
``claims_dir`` — by rewriting the mount paths in its command and environment (no mount namespace
here) and placing each mount nested in another (a dataset inside the working folder) as a link.
Its exit code ends the pod (``FallbackToLogsOnError`` for a failure's message); an eviction or a
deletion kills it.

Where kmock is laxer than an API server in ways a client's correctness depends on,
``ClusterEmulator`` (a subclass) answers as an API server does:

- every change gets the next resourceVersion (one counter for all kinds, as etcd's revision)
  and a new object its uid; a list says the current resourceVersion. kmock announces each change
  on its resource's bus; ``VersionedBus`` stamps it there and keeps it until ``compact()``;
- a watch from resourceVersion N replays the changes after N, then follows; without one (or
  "0"), it starts with every object as ADDED. From a compacted N it is answered 410 Gone, or
  (``compact(expired_as="event")``) opened with an ERROR event 410 Expired. It ends cleanly at
  its ``timeoutSeconds``, after a BOOKMARK with the current resourceVersion
  (``allowWatchBookmarks``);
- ``break_watches(kind, how)`` ends the open watches of clients (not the controllers'): with an
  ERROR event 410 (``expire``), or by closing the connection mid-stream (``drop``); within
  ``watches_refused(kind)`` their new watches are answered 503;
- a query's boolean parameters (``watch``, ``allowWatchBookmarks``) are read as an API server
  reads them (``query_flag``): any value but "false" (in any case) or "0" is true. kmock takes
  only ``watch=true`` for a watch; ``kubernetes_asyncio`` (KubeSpawner's reflectors) sends
  ``watch=True``;
- a created object of a namespaced kind is stored in the namespace of the request's path: its
  ``metadata.namespace`` is written in where the object leaves it out (a watch or a reflector
  keys objects on it), and a create naming another namespace is answered 400 BadRequest;
- a new Pod's status is the API server's, whatever the create sent: ``phase: Pending`` at
  once, until a kubelet (``FakeCluster``'s, or ``kubelet.PodmanCluster``'s) reports;
- a create or patch whose result, for a built-in kind, the official schema of Kubernetes
  ``SCHEMA_VERSION`` (kubernetes-validate, strict) refuses is answered 422 Invalid with the
  schema's complaint (a Status, reason Invalid); kinds without an official schema (Kueue's,
  KServe's) are stored as sent. The controllers' own status writes are held to the same schema;
- requests are told apart by their bearer token: the backend's kubeconfig carries
  ``rbac.BACKEND_TOKEN``, the hub's KubeSpawner's ``rbac.SPAWNER_TOKEN``
  (``kubeconfig_for(url, path, token)``), the controllers (and tests acting as the world,
  ``client``) ``CONTROLLERS_TOKEN``. Each of the backend's requests is recorded as the RBAC
  call it is (``calls``, and the session's ``rbac.RECORDED``), and each of KubeSpawner's
  (``spawner_calls``, ``rbac.SPAWNER_RECORDED``): the chart's ``rbac.yaml`` grants the one,
  Zero to JupyterHub's hub Role the other (see ``rbac.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import secrets
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import attrs
import kubernetes_validate
import kubernetes_validate.utils
from kmock import KubernetesEmulator, Server
from kmock import resource as kmock_resource
from kmock._internal import aiobus, enums
from kmock._internal.dicts import patch_dict
from kmock._internal.k8s import KubernetesError
from kubernetes_asyncio import client as kclient

from fermi_extension.backends.kubernetes.kube_client import KINDS, KubeClient, KubeError

from .rbac import BACKEND_TOKEN, RECORDED, SPAWNER_RECORDED, SPAWNER_TOKEN, Recorded

NAMESPACE = "fermi"
CORE_RESOURCES = ["batch/v1/jobs", "v1/pods", "v1/services", "v1/configmaps", "apps/v1/deployments",
                  "autoscaling/v2/horizontalpodautoscalers", "policy/v1/poddisruptionbudgets",
                  # KubeSpawner's: its users' home claims, and the events it watches
                  "v1/persistentvolumeclaims", "v1/events"]
KUEUE_RESOURCES = ["kueue.x-k8s.io/v1beta1/localqueues", "kueue.x-k8s.io/v1beta1/clusterqueues",
                   "kueue.x-k8s.io/v1beta1/resourceflavors", "kueue.x-k8s.io/v1beta1/workloads"]
KSERVE_RESOURCES = ["serving.kserve.io/v1beta1/inferenceservices"]
KUEUE_WORKLOADS = "kueue.x-k8s.io/v1beta1/workloads"
CONTROLLERS_TOKEN = "fake-cluster-controllers"  # the stand-in's controllers and the tests' client
SCHEMA_VERSION = "1.31.0"  # the oldest Kubernetes the backend supports (1.31–1.37)
# kubernetes-validate reads and parses its schema files on every call (~20 ms); the stand-in
# validates every write, so it keeps them parsed
kubernetes_validate.utils.schema_contents = functools.lru_cache(
    kubernetes_validate.utils.schema_contents)


def kubeconfig_for(url: str, path: Path, token: str = BACKEND_TOKEN) -> Path:
    """A kubeconfig of the stand-in at ``url`` whose user says who it is by ``token`` (the
    backend's, unless told)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: kmock, cluster: {{server: \"{url}\"}}}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
        f"current-context: kmock\nusers: [{{name: kmock, user: {{token: {token}}}}}]\n")
    return path


def client_for(url: str, token: str) -> KubeClient:
    """A client of the stand-in that says who it is by ``token``."""
    configuration = kclient.Configuration(host=url)
    configuration.api_key["BearerToken"] = f"Bearer {token}"
    return KubeClient(kclient.ApiClient(configuration))


class FakeCluster:
    """kmock plus the controllers and kubelets of a cluster (see the module docstring)."""

    def __init__(self, jobs_dir: Path | None = None, *, kueue: bool = False, kserve: bool = False,
                 admit: bool = True, pod_delay: float = 0.0, record: bool = True,
                 run_pods: bool = False, claims_dir: Path | None = None):
        self.jobs_dir = jobs_dir
        self.run_pods, self.claims_dir = run_pods, claims_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}  # job name → its pod's
        self.kueue, self.kserve, self.admit = kueue, kserve, admit
        self.pod_delay = pod_delay
        self.emulator: ClusterEmulator | None = None
        self.server: Server | None = None
        self.client: KubeClient | None = None
        self.tasks: list[asyncio.Task] = []
        self.pods: dict[str, str] = {}  # job name → pod name
        self.images: dict[str, str] = {}  # pod name → its notebook container's image
        self.running: set[str] = set()  # jobs whose pod runs
        self.logs: dict[str, bytes] = {}
        self._held: dict[str, asyncio.Task] = {}
        self.kubeconfig: Path | None = None
        self.record = record
        self.history: list = []  # every request the API stand-in received (record=True)

    async def __aenter__(self) -> "FakeCluster":
        self.emulator = ClusterEmulator(self.history if self.record else None)
        await self.emulator.__aenter__()
        for resource in CORE_RESOURCES + (KUEUE_RESOURCES if self.kueue else []) + (
                KSERVE_RESOURCES if self.kserve else []):
            self.emulator.resources[resource] = {}
        # one reaction serves every pod's log (kmock checks each reaction on each request)
        self.emulator["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << (
            lambda request: self.logs.get(str(request.url.path).split("/")[-2], b""))
        self.server = Server(self.emulator)
        await self.server.__aenter__()
        self.url = str(self.server.url).rstrip("/")
        self.client = client_for(self.url, CONTROLLERS_TOKEN)
        if self.kueue:  # the operator applied the pools' queues (queues.py)
            await self._apply_kueue_queues()
        self.tasks = [asyncio.create_task(self._watch("Job", self._on_job)),
                      asyncio.create_task(self._watch("Deployment", self._on_deployment))]
        if self.kserve:
            self.tasks.append(asyncio.create_task(
                self._watch("InferenceService", self._on_inference_service)))
        # no wait for the watches to open: like an API server, the stand-in starts each watch
        # with an ADDED event for every object that already exists
        return self

    async def __aexit__(self, *exc) -> None:
        for task in [*self.tasks, *self._held.values()]:
            task.cancel()
        for name in list(self.processes):  # no pod outlives its cluster
            self._kill(name)
        await asyncio.gather(*self.tasks, *self._held.values(), return_exceptions=True)
        await self.client.close()
        await self.server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)

    def write_kubeconfig(self, path: Path) -> Path:
        self.kubeconfig = kubeconfig_for(self.url, path)
        return self.kubeconfig

    # -- reading what the backend made --------------------------------------------------------

    def objects(self, kind_path: str) -> list[dict]:
        """Live objects of a resource, e.g. ``"batch/v1/jobs"``."""
        return [obj.raw for key, obj in self.emulator.objects.items()
                if _resource_path(key[0]) == kind_path and not obj.deleted]

    def requests(self, method: str, fragment: str = "") -> list:
        """The requests the API stand-in received (``method`` e.g. "POST")."""
        return [r for r in list(self.history)
                if str(r.method.value if hasattr(r.method, "value") else r.method).upper() == method
                and fragment in str(r.url)]

    # -- the controllers ----------------------------------------------------------------------

    async def _watch(self, kind: str, handler) -> None:
        while True:  # each (re)start of the watch brings every object as ADDED: handlers repeat
            try:
                async for event in self.client.watch(kind, None, timeout_seconds=3600):
                    if event["type"] == "ERROR":
                        break
                    if event["type"] != "BOOKMARK":
                        await handler(event["type"], event.get("object") or {})
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.05)

    async def _on_job(self, kind: str, job: dict) -> None:
        name = job["metadata"]["name"]
        if kind == "DELETED":  # propagation: the job's pods go with it
            pod = self.pods.pop(name, None)
            held = self._held.pop(name, None)
            if held is not None:
                held.cancel()
            self._kill(name)
            if pod:
                await self._quietly(self.client.delete("Pod", NAMESPACE, pod))
            return
        if name in self.pods or job.get("status", {}).get("conditions"):
            return
        if job.get("spec", {}).get("suspend"):
            await self._queue(job)
            return
        await self._start_pod(job)

    # -- Kueue -----------------------------------------------------------------------------------
    # As Kueue's job controller does, a suspended Job with a queue-name label gets a Workload
    # (kueue.x-k8s.io/v1beta1) in its namespace, owned by the Job, named job-NAME-HASH and
    # labelled with the Job's uid. With quota (admit=True) it is admitted at once (QuotaReserved
    # and Admitted True, status.admission naming the ClusterQueue) and the Job unsuspended;
    # without, it waits with QuotaReserved False (reason Pending) and the flavor assigner's
    # message, until ``admit_workload``. The LocalQueue → ClusterQueue objects are the ones an
    # operator applies (``queues.py``). Like kmock, nothing garbage-collects a Workload whose
    # Job is gone: a backend has to delete it itself, which a test can then see.

    async def _apply_kueue_queues(self) -> None:
        from fermi_extension.backends.kubernetes.objects import make_kueue_objects
        from fermi_extension.catalog.store import load_catalog_file
        from fermi_extension.paths import shipped

        catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
        for obj in make_kueue_objects(catalog, NAMESPACE):
            await self.client.create(obj)

    def workload_of(self, job_name: str) -> dict | None:
        """The live Workload Kueue made for the Job ``job_name``."""
        return next((w for w in self.objects(KUEUE_WORKLOADS)
                     if any(r.get("kind") == "Job" and r.get("name") == job_name
                            for r in w["metadata"].get("ownerReferences", []))), None)

    async def _queue(self, job: dict) -> None:
        meta = job["metadata"]
        queue = meta.get("labels", {}).get("kueue.x-k8s.io/queue-name")
        if queue is None:  # suspended, but no queue: Kueue leaves it alone
            return
        workload = self.workload_of(meta["name"])
        if workload is None:
            uid = meta.get("uid") or str(uuid.uuid5(uuid.NAMESPACE_URL, meta["name"]))
            template = job["spec"]["template"]
            workload = await self.client.create({
                "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                "metadata": {
                    "name": f"job-{meta['name'][:51]}-{secrets.token_hex(3)[:5]}",
                    "namespace": NAMESPACE, "labels": {"kueue.x-k8s.io/job-uid": uid},
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                         "name": meta["name"], "uid": uid,
                                         "controller": True, "blockOwnerDeletion": True}]},
                "spec": {"queueName": queue, "podSets": [
                    {"name": "main", "count": job["spec"].get("parallelism", 1),
                     "template": template}]}})
        if self.admit:  # the pool has quota
            await self.admit_workload(meta["name"])
            return
        requests = job["spec"]["template"]["spec"]["containers"][0].get(
            "resources", {}).get("requests", {})
        resource = "nvidia.com/gpu" if "nvidia.com/gpu" in requests else "cpu"
        flavor = (await self._cluster_queue(queue)) or queue
        await self._set_workload_status(workload["metadata"]["name"], {"conditions": [{
            "type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": f"couldn't assign flavors to pod set main: insufficient unused quota "
                       f"for {resource} in flavor {flavor}, {requests.get(resource, 1)} more "
                       "needed",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]})

    async def _cluster_queue(self, local_queue: str) -> str | None:
        found = await self.client.get("LocalQueue", NAMESPACE, local_queue)
        return ((found or {}).get("spec") or {}).get("clusterQueue")

    async def admit_workload(self, job_name: str) -> None:
        """Kueue finds quota for the Job's Workload: admitted, and the Job unsuspended."""
        workload = self.workload_of(job_name)
        cluster_queue = await self._cluster_queue(workload["spec"]["queueName"])
        at = "2026-01-01T00:00:01Z"
        await self._set_workload_status(workload["metadata"]["name"], {
            "admission": {"clusterQueue": cluster_queue, "podSetAssignments": [
                {"name": "main", "flavors": {}, "count": workload["spec"]["podSets"][0]["count"]}]},
            "conditions": [
                {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved",
                 "message": f"Quota reserved in ClusterQueue {cluster_queue}",
                 "lastTransitionTime": at},
                {"type": "Admitted", "status": "True", "reason": "Admitted",
                 "message": "The workload is admitted", "lastTransitionTime": at}]})
        await self._quietly(self.client.patch("Job", NAMESPACE, job_name,
                                              {"spec": {"suspend": False}}))

    async def _set_workload_status(self, name: str, status: dict) -> None:
        await self._quietly(self.client.patch("Workload", NAMESPACE, name, {"status": status},
                                              "status"))

    async def _start_pod(self, job: dict) -> None:
        name = job["metadata"]["name"]
        pod_name = f"{name}-{secrets.token_hex(3)}"
        self.pods[name] = pod_name
        self.images[pod_name] = job["spec"]["template"]["spec"]["containers"][0]["image"]
        labels = {**job["spec"]["template"]["metadata"].get("labels", {}),
                  "batch.kubernetes.io/job-name": name, "job-name": name}
        await self.client.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": NAMESPACE, "labels": labels},
            "spec": job["spec"]["template"]["spec"]})
        if self.pod_delay:
            await asyncio.sleep(self.pod_delay)
        await self._patch_pod(pod_name, {"phase": "Running", "containerStatuses": [
            self._container_status(pod_name, {"running": {}}, ready=True)]})
        await self._quietly(self.client.patch("Job", NAMESPACE, name,
                                              {"status": {"active": 1, "ready": 1}}, "status"))
        self.running.add(name)
        if self.run_pods:
            self._held[name] = asyncio.create_task(self._run_pod(job, pod_name))
            return
        behaviour, error = self._behaviour(job)
        self.logs[pod_name] = b"Input Notebook:  input.ipynb\nExecuting notebook with kernel: python3\n"
        if behaviour == "hold":
            self._held[name] = asyncio.create_task(self._hold(job))
        elif behaviour == "fail":
            await self.fail(name, error)
        else:
            await self.succeed(name)

    def _folder(self, job: dict) -> Path | None:
        job_id = job["metadata"]["labels"].get("fermi.io/job-id")
        return self.jobs_dir / job_id if self.jobs_dir and job_id else None

    def _behaviour(self, job: dict) -> tuple[str, str]:
        folder = self._folder(job)
        try:
            source = "\n".join("".join(c.get("source", "")) for c in json.loads(
                (folder / "input.ipynb").read_text())["cells"])
        except (OSError, ValueError, TypeError):
            return "succeed", ""
        if "raise ValueError(" in source:
            message = source.split("raise ValueError(", 1)[1].split(")", 1)[0].strip("'\"")
            return "fail", f"ValueError: {message}"
        if "release" in source and "while not" in source:
            return "hold", ""
        return "succeed", ""

    async def _hold(self, job: dict) -> None:
        release = self._folder(job) / "work" / "release"
        while not release.exists():
            await asyncio.sleep(0.05)
        self._held.pop(job["metadata"]["name"], None)
        await self.succeed(job["metadata"]["name"])

    # -- the kubelet, for real (run_pods=True) -----------------------------------------------

    def _bind(self, pod_spec: dict, container: dict) -> dict[str, Path]:
        """mountPath → the folder on this machine that volume's claim (and subPath) is."""
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod_spec.get("volumes", []) if "persistentVolumeClaim" in v}
        bound = {}
        for mount in container.get("volumeMounts", []):
            claim = claims.get(mount["name"])
            if claim is None:  # emptyDir (/dev/shm): nothing to bind here
                continue
            base = self.jobs_dir if claim == "fermi-jobs" else self.claims_dir / claim
            bound[mount["mountPath"]] = base / mount.get("subPath", "")
        return bound

    async def _run_pod(self, job: dict, pod_name: str) -> None:
        try:
            await self._run_container(job, pod_name)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the container could not start: the pod fails, saying why
            await self.fail(job["metadata"]["name"], f"kubelet: {error!r}", exit_code=128)

    async def _run_container(self, job: dict, pod_name: str) -> None:
        name = job["metadata"]["name"]
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        bound = self._bind(pod_spec, container)
        order = sorted(bound, key=len, reverse=True)

        def host(text: str) -> str:
            for mount_path in order:
                if text == mount_path or text.startswith(mount_path + "/"):
                    return str(bound[mount_path]) + text[len(mount_path):]
            return text

        for mount_path in order:  # a mount inside another mount: where the pod sees it
            outer = next((m for m in order if mount_path.startswith(m + "/")), None)
            if outer is not None:
                place = Path(str(bound[outer]) + mount_path[len(outer):])
                place.parent.mkdir(parents=True, exist_ok=True)
                if not place.is_symlink():
                    place.symlink_to(bound[mount_path])
        from fermi_extension.workload_env import workload_env

        env = workload_env({e["name"]: host(e["value"]) for e in container.get("env", [])})
        command = [host(arg) for arg in container["command"]]
        if command[0] == "python":  # the image's interpreter is this test's
            command[0] = sys.executable
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        self.processes[name] = process
        try:
            while chunk := await process.stdout.read(65536):
                self.logs[pod_name] = self.logs.get(pod_name, b"") + chunk
            code = await process.wait()
        except asyncio.CancelledError:
            self._kill(name)
            raise
        finally:
            self._held.pop(name, None)
        if code == 0:
            await self.succeed(name)
        else:
            await self.fail(name, self.logs.get(pod_name, b"")[-2048:].decode(errors="replace"),
                            exit_code=code)

    def _kill(self, job_name: str) -> None:
        process = self.processes.pop(job_name, None)
        if process is not None and process.returncode is None:
            from fermi_extension.processes import kill_tree

            kill_tree(process.pid, None, 1)

    # -- what tests do to pods ------------------------------------------------------------------

    async def succeed(self, job_name: str) -> None:
        pod = self.pods[job_name]
        job = await self.client.get("Job", NAMESPACE, job_name)
        folder = self._folder(job) if job else None
        if not self.run_pods and folder is not None and (folder / "input.ipynb").exists():
            (folder / "output.ipynb").write_text((folder / "input.ipynb").read_text())
        self.logs[pod] = self.logs.get(pod, b"") + b"Ending Cell 2-----------------------------\n"
        await self._patch_pod(pod, {"phase": "Succeeded", "containerStatuses": [
            self._container_status(pod, {"terminated": {"exitCode": 0, "reason": "Completed"}})]})
        await self._quietly(self.client.patch("Job", NAMESPACE, job_name, {"status": {
            "active": 0, "ready": 0, "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}}, "status"))

    async def fail(self, job_name: str, error: str = "ValueError: boom", exit_code: int = 1) -> None:
        pod = self.pods[job_name]
        if self.run_pods:  # the pod's own log is its message (FallbackToLogsOnError)
            message = error
        else:
            message = ("---------------------------------------------------------------------------\n"
                       "Exception encountered at \"In [2]\":\n" f"{error}\n")
            self.logs[pod] = self.logs.get(pod, b"") + message.encode()
        await self._patch_pod(pod, {"phase": "Failed", "containerStatuses": [
            self._container_status(pod, {"terminated": {
                "exitCode": exit_code, "reason": "Error", "message": message}})]})
        await self._job_failed(job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    async def oom_kill(self, job_name: str) -> None:
        """The kernel kills the job's container at its memory limit (exit 137, OOMKilled)."""
        pod = self.pods[job_name]
        self._stop_container(job_name)
        await self._patch_pod(pod, {"phase": "Failed", "containerStatuses": [
            self._container_status(pod, {"terminated": {"exitCode": 137,
                                                        "reason": "OOMKilled"}})]})
        await self._job_failed(job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    async def evict(self, job_name: str) -> None:
        pod = self.pods[job_name]
        self._stop_container(job_name)
        await self._patch_pod(pod, {
            "phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory.",
            "conditions": [{"type": "DisruptionTarget", "status": "True",
                            "reason": "TerminationByKubelet",
                            "message": "The node was low on resource: memory."}]})
        await self._job_failed(job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    async def _job_failed(self, job_name: str, reason: str, message: str) -> None:
        await self._quietly(self.client.patch("Job", NAMESPACE, job_name, {"status": {
            "active": 0, "ready": 0, "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                            "message": message}]}}, "status"))

    def _stop_container(self, job_name: str) -> None:
        held = self._held.pop(job_name, None)
        if held is not None:
            held.cancel()
        self._kill(job_name)

    def _container_status(self, pod: str, state: dict, ready: bool = False) -> dict:
        """The notebook container's status as a kubelet reports it (every required field)."""
        image = self.images.get(pod, "")
        return {"name": "notebook", "ready": ready, "restartCount": 0, "image": image,
                "imageID": f"{image}@sha256:{'0' * 64}", "state": state}

    async def _patch_pod(self, pod: str, status: dict) -> None:
        await self._quietly(self.client.patch("Pod", NAMESPACE, pod, {"status": status}, "status"))

    # -- what tests do to the backend's watches -------------------------------------------------

    def open_watches(self, kind: str) -> int:
        """How many watches of ``kind`` clients (the backend, not the controllers) hold open."""
        return len(self.emulator.client_watches(_resource_of(kind)))

    def break_watches(self, kind: str, how: str) -> int:
        """End the clients' (the backend's, not the controllers') open watches of ``kind``:
        ``expire`` (an ERROR event, 410 Expired, as when the API server's watch cache has moved
        past them) or ``drop`` (the connection closes mid-stream). The number of watches told."""
        watches = self.emulator.client_watches(_resource_of(kind))
        for watch in watches:
            watch.inbox.put_nowait(how)
        return len(watches)

    def compact(self, expired_as: str = "status") -> int:
        """Forget the changes so far (etcd's compaction): a watch that asks to resume from an
        older resourceVersion is answered 410 Gone (``status``), or opened with an ERROR event
        410 Expired (``event``, as API servers mostly do). The current resourceVersion."""
        self.emulator.expired_as = expired_as
        for bus in self.emulator._buses.values():
            bus.changes.clear()
            bus.compacted = self.emulator.revision
        return self.emulator.revision

    @contextlib.contextmanager
    def watches_refused(self, kind: str):
        """While inside, clients' new watches of ``kind`` are answered 503 (an API server
        restarting behind its load balancer); the controllers' go on."""
        resource = _resource_of(kind)
        self.emulator.refused.add(resource)
        try:
            yield
        finally:
            self.emulator.refused.discard(resource)

    # -- serving ------------------------------------------------------------------------------

    async def _on_deployment(self, kind: str, deployment: dict) -> None:
        if kind == "DELETED":
            return
        wanted = deployment.get("spec", {}).get("replicas", 1)
        status = deployment.get("status") or {}
        if status.get("readyReplicas") == wanted and status.get("replicas") == wanted:
            return
        if self.pod_delay:
            await asyncio.sleep(self.pod_delay)
        await self._quietly(self.client.patch(
            "Deployment", deployment["metadata"]["namespace"], deployment["metadata"]["name"],
            {"status": {"replicas": wanted, "readyReplicas": wanted, "availableReplicas": wanted,
                        "updatedReplicas": wanted}}, "status"))

    async def _on_inference_service(self, kind: str, isvc: dict) -> None:
        if kind == "DELETED":
            return
        ready = {"type": "Ready", "status": "True"}
        if ready in ((isvc.get("status") or {}).get("conditions") or []):
            return
        name = isvc["metadata"]["name"]
        await self._quietly(self.client.patch("InferenceService", isvc["metadata"]["namespace"],
                                              name, {"status": {
            "conditions": [ready], "url": f"http://{name}.{NAMESPACE}.svc.cluster.local"}},
            "status"))

    @staticmethod
    async def _quietly(aw) -> None:
        try:
            await aw
        except KubeError as error:
            if not error.not_found:
                raise


class _Buses(dict):
    """kmock announces every change on its resource's bus: a ``VersionedBus`` per resource."""

    def __init__(self, emulator: "ClusterEmulator"):
        super().__init__()
        self.emulator = emulator

    def __missing__(self, resource):
        bus = self[resource] = VersionedBus(self.emulator, resource)
        return bus


class VersionedBus(aiobus.Bus):
    """A resource's change bus that gives each change the next resourceVersion (one counter for
    the whole stand-in, as etcd's revision is) and keeps the changes since the last compaction,
    so that a watch can resume after any resourceVersion it saw."""

    def __init__(self, emulator: "ClusterEmulator", resource):
        super().__init__()
        self.emulator, self.resource = emulator, resource
        self.changes: list[tuple[int, dict]] = []  # (resourceVersion, event) since ``compacted``
        self.compacted = 0

    async def put(self, *events) -> None:
        for event in events:
            self.changes.append((self.emulator.stamp(self.resource, event), event))
        await super().put(*events)


@dataclass(eq=False)
class OpenWatch:
    """A watch the stand-in is serving: whose, of what, and what it is to send next (changes,
    or "expire" / "drop")."""

    caller: str
    resource: object
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)


class ClusterEmulator(KubernetesEmulator):
    """kmock's emulator with what a test of a watching client needs of an API server (see the
    module docstring): resourceVersions, watches that resume, expire, time out and break,
    schema validation of built-in kinds, and the record of requests.

    kmock's own matches each request against its whole request history (quadratic over a test);
    this one keeps its history aside (``history``), so a thousand jobs stay linear."""

    def __init__(self, history: list | None):
        super().__init__()
        self.history = history
        self.calls = Recorded()  # what the backend asked of this stand-in (rbac.py)
        self.spawner_calls = Recorded()  # what the hub's KubeSpawner asked of it
        self.revision = 0
        self._buses = _Buses(self)
        self.watches: set[OpenWatch] = set()
        self.refused: set[object] = set()  # resources whose clients' watches are answered 503
        self.expired_as = "status"  # a watch from a compacted resourceVersion: 410, or "event"

    # -- every request ---------------------------------------------------------------------

    async def _handle(self, request):
        if self.history is not None:
            self.history.append(request)  # as sent
        request = self._as_read(request)
        self._requests[:] = [request]  # kmock matches its reactions against what it holds
        for record in self._records_of(caller(request)):
            record.add(request)
        if request.action in (enums.action.CREATE, enums.action.UPDATE) and request.resource:
            self._validate(request)
        return await super()._handle(request)

    def _records_of(self, who: str) -> tuple[Recorded, ...]:
        """Where a request of the caller ``who`` is recorded: this stand-in's and the session's
        record of the backend's calls, or of KubeSpawner's; the controllers' nowhere."""
        return {BACKEND_TOKEN: (self.calls, RECORDED),
                SPAWNER_TOKEN: (self.spawner_calls, SPAWNER_RECORDED)}.get(who, ())

    def _as_read(self, request):
        """The request as an API server reads it, where kmock reads it otherwise (see the
        module docstring): a GET with ``watch`` true is a watch; a created object is the one
        the server stores — in the namespace of the path, and a Pod with status Pending."""
        changes = {}
        if request.action in (enums.action.LIST, enums.action.FETCH) and query_flag(
                request.params, "watch"):
            changes["action"] = enums.action.WATCH
        if request.action == enums.action.CREATE and request.namespace and isinstance(
                request.data, dict):
            changes["data"] = self._as_created(request)
        return attrs.evolve(request, **changes) if changes else request

    @staticmethod
    def _as_created(request) -> dict:
        obj = request.data
        meta = obj.get("metadata") or {}
        if meta.get("namespace", request.namespace) != request.namespace:
            raise KubernetesError(400, "BadRequest", "the namespace of the provided object does "
                                                     "not match the namespace sent on the request")
        obj = {**obj, "metadata": {**meta, "namespace": request.namespace}}
        if request.resource == _resource_of("Pod"):  # the Pod strategy's PrepareForCreate
            obj["status"] = {"phase": "Pending"}
        return obj

    def _validate(self, request) -> None:
        """A built-in kind's object as it would be stored (created, or merge-patched), against
        the official schema of Kubernetes ``SCHEMA_VERSION`` (strict): 422 Invalid, as an API
        server answers. Kinds without an official schema (Kueue's, KServe's) pass."""
        if request.action == enums.action.CREATE:
            result = request.data
        else:
            stored = self._stored((request.resource, request.namespace, request.name))
            if stored is None:
                return  # kmock answers 404
            result = patch_dict(stored.raw, request.data or {})
        message = schema_error(result)
        if message:
            raise KubernetesError(422, "Invalid", message, {
                "name": (result.get("metadata") or {}).get("name"), "kind": result.get("kind")})

    def stamp(self, resource, event: dict) -> int:
        """The next resourceVersion, on the event's object and on the stored object (kmock hands
        the bus a copy); a new object also gets its uid."""
        self.revision += 1
        obj = event["object"]
        meta = {**(obj.get("metadata") or {}), "resourceVersion": str(self.revision)}
        if event["type"] == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
        obj["metadata"] = meta
        stored = self._stored((resource, meta.get("namespace"), meta.get("name")))
        if event["type"] != "DELETED" and stored is not None:
            stored.last["metadata"] = meta
        return self.revision

    def _stored(self, key):
        """The live object at (resource, namespace, name), or None."""
        return self.objects[key] if key in self.objects and not self.objects[key].deleted \
            else None

    # -- list and watch --------------------------------------------------------------------

    async def _serve_list(self, request):
        listing = await super()._serve_list(request)
        listing["metadata"] = {"resourceVersion": str(self.revision)}
        return listing

    async def _serve_watch(self, request):
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion") or "0"
        who = caller(request)
        if who != CONTROLLERS_TOKEN and request.resource in self.refused:
            raise KubernetesError(503, "ServiceUnavailable",
                                  "the API server is not serving watches right now")
        async with self._lock:  # changes go onto the bus under this lock: none slips between
            expired = since != "0" and int(since) < bus.compacted
            if since == "0":  # the current state, as ADDED events
                backlog = [{"type": "ADDED", "object": obj.raw}
                           for (resource, namespace, _), obj in self.objects.items()
                           if resource == request.resource and not obj.deleted
                           and request.namespace in (None, namespace)]
            else:
                backlog = [event for version, event in bus.changes if version > int(since)]
            mark = None if expired else await bus.mark()
        if expired:
            message = f"too old resource version: {since} ({bus.compacted})"
            if self.expired_as == "status":
                raise KubernetesError(410, "Expired", message)
            yield b""
            yield _expired(message)
            return
        watch = OpenWatch(who, request.resource)
        pump = asyncio.create_task(self._pump(bus, mark, watch))
        self.watches.add(watch)
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            yield b""  # the headers: the watch is open
            for event in backlog:
                yield event
            while True:
                try:
                    item = await asyncio.wait_for(watch.inbox.get(), deadline - loop.time())
                except asyncio.TimeoutError:  # timeoutSeconds: a bookmark, then a clean end
                    if query_flag(request.params, "allowWatchBookmarks"):
                        yield self._bookmark(request.resource)
                    return
                if item == "expire":
                    yield _expired("The resourceVersion for the provided watch is too old.")
                    return
                if item == "drop":  # the connection goes, mid-stream, without a last chunk
                    request._raw_request.transport.abort()
                    return
                namespace = (item["object"].get("metadata") or {}).get("namespace")
                if request.namespace in (None, namespace):
                    yield item
        finally:
            self.watches.discard(watch)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await bus.unmark(mark)

    @staticmethod
    async def _pump(bus, mark, watch: OpenWatch) -> None:
        async for event in bus.stream(since=mark):
            watch.inbox.put_nowait(event)

    def _bookmark(self, resource) -> dict:
        kind = next(k for k, v in KINDS.items() if v.plural == resource.plural)
        return {"type": "BOOKMARK", "object": {
            "apiVersion": KINDS[kind].api_version, "kind": kind,
            "metadata": {"resourceVersion": str(self.revision)}}}

    def client_watches(self, resource) -> list[OpenWatch]:
        """The open watches of ``resource`` of clients other than the controllers."""
        return [w for w in self.watches
                if w.caller != CONTROLLERS_TOKEN and w.resource == resource]


def _expired(message: str) -> dict:
    return {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "metadata": {},
                                        "status": "Failure", "code": 410, "reason": "Expired",
                                        "message": message}}


def query_flag(params, name: str) -> bool:
    """A boolean query parameter as an API server reads it (apimachinery's
    ``Convert_Slice_string_To_bool``): absent, "0" or "false" in any case is false; any other
    value, even an empty one, is true."""
    value = params.get(name)
    return value is not None and value != "0" and value.lower() != "false"


def caller(request) -> str:
    """The bearer token a request carries ("" without one)."""
    header = request.headers.get("Authorization") or ""
    return header.removeprefix("Bearer ").strip()


def schema_error(obj: dict, version: str = SCHEMA_VERSION) -> str | None:
    """What the official schema (strict) of Kubernetes ``version`` finds wrong with ``obj``, as
    an API server words a 422; None when it is valid or of a kind with no official schema (a
    custom resource)."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as error:
        group = obj.get("apiVersion", "").rpartition("/")[0]
        where = error.json_path.removeprefix("$.").removeprefix("$")
        name = (obj.get("metadata") or {}).get("name")
        return (f"{obj.get('kind')}{'.' + group if group else ''} \"{name}\" is "
                f"invalid: {where or '(root)'}: {error.message}")
    return None


def _resource_of(kind: str):
    """kmock's resource key of a kind of ``KINDS`` (e.g. "Job")."""
    return kmock_resource(f"{KINDS[kind].api_version}/{KINDS[kind].plural}")


def _resource_path(resource) -> str:
    group = resource.group
    return f"{group}/{resource.version}/{resource.plural}" if group else \
        f"{resource.version}/{resource.plural}"
