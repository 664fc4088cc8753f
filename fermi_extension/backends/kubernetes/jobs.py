"""Training jobs as Kubernetes Jobs: the job entry point (``jobs/entry.py``, papermill and all)
in the catalogue image, sized by the profile,
queued through Kueue where the cluster has it, watched (one watch for all jobs, never a poll
per job), cancelled by deletion with propagation, logs streamed from the pod.

Each attempt is its own Job (``fermi-job-ID-XXXX``), named in the attempt's handle, so a
restarted control plane finds it again from the database (and from ``process.json`` in the
job folder for the instant between creating it and recording it).
"""

from __future__ import annotations

import asyncio
import re
import secrets

from traitlets import Float, Int

from ...catalog.schema import Pool, Profile
from ...jobs.backend import Handle, JobBackend, JobLaunch, Outcome
from ...jobs.files import JobFiles, read_json, write_json_atomic
from .kube_client import KubeClient, KubeError, gather_quietly
from .objects import KUEUE_QUEUE_LABEL, MANAGED_BY, job_name, make_job
from .settings import KubernetesSettings
from .storage import PvcStorage, S3Storage
from .watch import Informer

JOB_LABELS = {**MANAGED_BY, "app.kubernetes.io/component": "training-job"}
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
DISRUPTED = ("Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated")


def trim_job(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "labels", "resourceVersion",
                                               "deletionTimestamp") if k in meta},
            "spec": {"suspend": (obj.get("spec") or {}).get("suspend", False)},
            "status": obj.get("status") or {}}


def trim_pod(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return {"metadata": {k: meta[k] for k in ("name", "labels", "resourceVersion") if k in meta},
            "status": {k: status[k] for k in ("phase", "reason", "message", "conditions",
                                              "containerStatuses") if k in status}}


def trim_workload(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return {"metadata": {k: meta[k] for k in ("name", "ownerReferences", "resourceVersion")
                         if k in meta},
            "spec": {"queueName": (obj.get("spec") or {}).get("queueName")},
            "status": {"conditions": status.get("conditions") or [],
                       "clusterQueue": (status.get("admission") or {}).get("clusterQueue")}}


def owner_job(workload: dict) -> str | None:
    """The name of the Job a Kueue Workload belongs to (its controller owner)."""
    return next((r.get("name") for r in workload["metadata"].get("ownerReferences") or []
                 if r.get("kind") == "Job"), None)


def kueue_reason(queue: str, workload: dict | None, cluster_queue: str | None) -> str:
    """Why Kueue holds a suspended Job, from its Workload's conditions (Kueue v1beta1:
    QuotaReserved False with reason Pending or Inadmissible and the flavor assigner's message;
    Evicted True after a preemption), in the words the embedded default's queue uses."""
    if workload is None:
        return f"Waiting for Kueue to take it into LocalQueue {queue}."
    conditions = {c.get("type"): c for c in workload["status"]["conditions"]}
    where = f"ClusterQueue {cluster_queue}" if cluster_queue else f"LocalQueue {queue}"
    evicted = conditions.get("Evicted") or {}
    if evicted.get("status") == "True":
        return (f"Waiting: evicted by Kueue ({evicted.get('reason')}: "
                f"{evicted.get('message', '')}); it waits to be admitted again in {where}.")
    reserved = conditions.get("QuotaReserved") or {}
    if reserved.get("status") == "True":
        return f"Admitted by Kueue in {where}; its pod is starting."
    message = reserved.get("message") or "no quota reserved yet"
    if reserved.get("reason") == "Inadmissible":
        return f"Waiting: Kueue cannot admit it in {where}: {message}"
    return f"Waiting for quota in {where}: {message}"


def ended_condition(obj: dict) -> dict | None:
    """The Job's Complete or Failed condition, once it has one."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition
    return None


def notebook_error(message: str) -> str | None:
    """The exception papermill reported, from the last lines of a failed pod's log."""
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", line) and \
                not line.startswith("papermill.exceptions.PapermillExecutionError"):
            return line
    return None


class KubeJobBackend(KubernetesSettings, JobBackend):
    """Jobs as batch/v1 Jobs in ``namespace`` (settings: ``KubernetesSettings``)."""

    max_nodes = 64  # an indexed Job with one pod per rank (objects.make_job)

    log_streams = Int(
        200, help="Most job logs followed live at once (one streaming request each); beyond, a "
                  "job's log is read once when it ends.",
    ).tag(config=True)

    progress_interval = Float(
        5.0, help="With storage='s3': seconds between two reads of a running job's cell "
                  "progress from the bucket (for the jobs whose log is followed live).",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client: KubeClient | None = None
        self.jobs: Informer | None = None
        self.pods: Informer | None = None
        self._followers: dict[str, asyncio.Task] = {}
        self._concluding: dict[str, asyncio.Task] = {}
        self._pod_names: dict[str, str] = {}  # job name → its pod's name
        self.workloads: Informer | None = None  # Kueue's, where the cluster has it
        self._workload_names: dict[str, str] = {}  # job name → its Workload's name
        self._cluster_queues: dict[str, str | None] = {}  # LocalQueue → its ClusterQueue
        self._lookups: set[asyncio.Task] = set()  # held until done (the loop keeps weak refs)
        self._pending_queues: set[str] = set()  # LocalQueues being looked up

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            return
        self.client = await self.connect()
        use_kueue = self.kueue == "on" or (self.kueue == "auto" and await self.client.has("LocalQueue"))
        self.kube_cluster = self.cluster(use_kueue=use_kueue)
        self.store = (S3Storage(self.s3_prefix, self.s3_endpoint_url) if self.storage == "s3"
                      else PvcStorage())
        self.jobs = Informer(self.client, "Job", self.namespace, JOB_LABELS, trim=trim_job,
                             timeout_seconds=self.watch_timeout_seconds)
        self.pods = Informer(self.client, "Pod", self.namespace, JOB_LABELS, trim=trim_pod,
                             timeout_seconds=self.watch_timeout_seconds)
        self.pods.listeners.append(self._index_pod)
        informers = [self.jobs, self.pods]
        if use_kueue:
            # Workloads carry none of our labels (Kueue makes them): all in the namespace
            self.workloads = Informer(self.client, "Workload", self.namespace, {},
                                      trim=trim_workload,
                                      timeout_seconds=self.watch_timeout_seconds)
            self.workloads.listeners.append(self._index_workload)
            informers.append(self.workloads)
        await asyncio.gather(*(informer.start() for informer in informers))
        self.log.info("Kubernetes jobs in namespace %s (Kueue: %s, storage: %s)", self.namespace,
                      "on" if use_kueue else "off", self.storage)

    async def close(self) -> None:
        tasks = [*self._followers.values(), *self._concluding.values(), *self._lookups]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.disconnect(self.jobs, self.pods, self.workloads)

    def dataset_refusal(self, mount) -> str | None:
        if mount.kind == "path":
            return (f"Dataset {mount.name!r} version {mount.version} is a folder on the control "
                    f"plane's machine ({mount.location}), which job pods cannot see; attach a "
                    "version that is a volume (pvc://CLAIM/SUBPATH) or s3://.")
        return None

    def availability(self, profile: Profile, pool: Pool) -> tuple[bool, str | None]:
        return True, None  # the cluster's scheduler (and Kueue's quotas) decide where and when

    # -- attempts -------------------------------------------------------------------------------

    async def launch(self, launch: JobLaunch) -> Handle:
        name = f"{job_name(launch.job_id)}-{secrets.token_hex(2)}"
        files = launch.files
        files.reset_attempt()
        await self.store.deliver(files, launch.job_id)
        # pods reach the tracking server at its in-cluster address (the cluster's), never
        # at launch.tracking_uri, the control plane's
        objects = make_job(launch.job_id, launch.owner, launch.runtime, self.kube_cluster,
                           parameters=launch.parameters, env=launch.env, name=name,
                           nodes=launch.runtime.nodes, attempt=launch.attempt)
        write_json_atomic(files.process, {"pid": None, "started": None, "name": name})
        made: list[dict] = []
        try:
            for obj in objects:
                created = await self.client.create(obj)
                made.append(obj)
                if obj["kind"] == "Job":
                    self.jobs.remember(created or obj)
        except KubeError:
            # an attempt is all its objects or none: a Job whose rendezvous Service was refused
            # would run (and be billed) for a launch the platform reports as failed
            try:
                await gather_quietly(*(self.client.delete(o["kind"], self.namespace,
                                                          o["metadata"]["name"]) for o in made))
            except KubeError as error:  # the refusal is what the user needs to see
                self.log.warning("could not remove the objects of refused launch %s: %s",
                                 name, error)
            raise
        return Handle(None, None, name)

    def alive(self, handle: Handle) -> bool:
        if not handle.name or self.jobs is None:
            return False
        obj = self.jobs.get(handle.name)
        return obj is not None and ended_condition(obj) is None

    async def wait(self, handle: Handle, files: JobFiles, timeout: float | None) -> Outcome:
        name = handle.name
        if name and len(self._followers) < self.log_streams and name not in self._followers:
            self._followers[name] = asyncio.create_task(self._follow(name, files))
        ended = await self.jobs.wait_for(
            name, lambda obj: obj is None or ended_condition(obj) is not None, timeout)
        if not ended:
            await self.kill(handle)
            return Outcome("failed", f"Timed out after {timeout:.0f} s and was stopped.")
        return await self._conclude(name, files)

    async def kill(self, handle: Handle) -> None:
        if handle.name:
            await self._delete_attempt(handle.name)

    def waiting(self, handle: Handle) -> str | None:
        """Kueue's reason while it holds the attempt's Job suspended (None once it runs)."""
        obj = self.jobs.get(handle.name) if handle.name and self.jobs is not None else None
        if obj is None or not obj["spec"].get("suspend"):
            return None
        queue = (obj["metadata"].get("labels") or {}).get(KUEUE_QUEUE_LABEL)
        if queue is None:
            return None
        workload = self._workload_of(handle.name)
        cluster_queue = (workload or {}).get("status", {}).get("clusterQueue") or \
            self._cluster_queue_of(workload["spec"]["queueName"] if workload else queue)
        return kueue_reason(queue, workload, cluster_queue)

    def outcome(self, files: JobFiles) -> Outcome:
        result = read_json(files.result)
        if result is not None and result.get("concluded"):  # not only the entry point's word
            return Outcome(result["status"], result.get("reason"), result.get("lost", False))
        name = (read_json(files.process) or {}).get("name")
        if not name:
            return Outcome("failed", "The job never reached the cluster.", lost=True)
        outcome = self._outcome_of(name, self.jobs.get(name) if self.jobs else None)
        if self.client is not None and name not in self._concluding:  # log, output, clean-up
            self._concluding[name] = asyncio.get_running_loop().create_task(
                self._conclude(name, files))
        return outcome

    async def _conclude(self, name: str, files: JobFiles) -> Outcome:
        """How the attempt ended, with its full log and output collected; then its Job goes."""
        try:
            obj = self.jobs.get(name)
            outcome = self._outcome_of(name, obj)
            job_id = (obj or {}).get("metadata", {}).get("labels", {}).get("fermi.io/job-id") \
                or files.root.name
            try:  # first: on s3 the entry point's result, lineage and progress come with it
                await self.store.collect(files, job_id)
            except Exception as error:
                self.log.warning("could not collect the output of %s: %s", name, error)
            # what the entry point itself recorded (the shared volume brings it back) says what
            # the notebook did more precisely than the pod's end; the cluster's word stands
            # where the attempt was lost (evicted, deleted) or never reported (OOM-killed)
            reported = read_json(files.result)
            if reported is not None and not outcome.lost and \
                    (reported["status"] == "succeeded") == (outcome.status == "succeeded"):
                outcome = Outcome(reported["status"], reported.get("reason"))
            follower = self._followers.pop(name, None)
            if follower is not None:
                follower.cancel()
            pod = self._pod_of(name)
            if pod is not None:
                try:
                    text = await self.client.logs(self.namespace, pod["metadata"]["name"],
                                                  container="notebook")
                    files.write(files.log, text.encode())
                except KubeError as error:
                    self.log.warning("could not read the log of %s: %s", name, error)
            write_json_atomic(files.result, {"status": outcome.status, "reason": outcome.reason,
                                             "lost": outcome.lost, "concluded": True})
            if self.delete_finished and obj is not None:
                await self._delete_attempt(name)
            return outcome
        finally:
            self._concluding.pop(name, None)

    async def _delete_attempt(self, name: str) -> None:
        """The Job with its pods, its Kueue Workload (said outright, not left to the garbage
        collector: its quota is released now), and a distributed job's rendezvous Service
        (not a dependent)."""
        obj = self.jobs.get(name) if self.jobs is not None else None
        await self.client.delete("Job", self.namespace, name, "Background")
        workload = self._workload_of(name)
        if workload is not None:
            await gather_quietly(self.client.delete("Workload", self.namespace,
                                                    workload["metadata"]["name"]))
        if obj is not None and "fermi.io/nodes" in ((obj.get("metadata") or {}).get("labels") or {}):
            await self.client.delete("Service", self.namespace, name)

    def _index_pod(self, kind: str, pod: dict) -> None:
        """Keep job name → pod name current (a lookup per job, not a scan of all pods)."""
        labels = pod["metadata"].get("labels", {})
        job = next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        if job is None:
            return
        if kind == "DELETED":
            if self._pod_names.get(job) == pod["metadata"]["name"]:
                del self._pod_names[job]
        else:
            self._pod_names[job] = pod["metadata"]["name"]

    def _index_workload(self, kind: str, workload: dict) -> None:
        """Keep job name → Workload name current, and learn its LocalQueue's ClusterQueue."""
        job = owner_job(workload)
        if job is None:
            return
        if kind == "DELETED":
            if self._workload_names.get(job) == workload["metadata"]["name"]:
                del self._workload_names[job]
            return
        self._workload_names[job] = workload["metadata"]["name"]
        self._cluster_queue_of((workload.get("spec") or {}).get("queueName"))
        self._announce(job)

    def _announce(self, job: str) -> None:
        """Tell the runner why Kueue holds the Job: once Kueue has tried it (a fresh workload
        has no conditions yet), while it waits, and with its ClusterQueue's name once known."""
        workload = self._workload_of(job)
        if self.on_held is None or workload is None or not workload["status"]["conditions"] \
                or workload["spec"].get("queueName") in self._pending_queues:
            return
        reason = self.waiting(Handle(None, None, job))
        if reason and reason.startswith("Waiting"):
            try:
                self.on_held(job, reason)
            except Exception:
                self.log.exception("could not record why Kueue holds %s", job)

    def _cluster_queue_of(self, queue: str | None) -> str | None:
        """The ClusterQueue of a LocalQueue, as far as known; the first time, it is looked up
        (once per queue, not per event: the Role may get LocalQueues, never watch them)."""
        if queue and queue not in self._cluster_queues:
            self._cluster_queues[queue] = None
            self._pending_queues.add(queue)
            task = asyncio.get_running_loop().create_task(self._learn_cluster_queue(queue))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
        return self._cluster_queues.get(queue) if queue else None

    async def _learn_cluster_queue(self, queue: str) -> None:
        try:
            found = await self.client.get("LocalQueue", self.namespace, queue)
            self._cluster_queues[queue] = ((found or {}).get("spec") or {}).get("clusterQueue")
        except KubeError as error:
            self.log.warning("could not read LocalQueue %s: %s", queue, error)
            self._cluster_queues.pop(queue, None)  # asked again on its next Workload event
            return
        finally:
            self._pending_queues.discard(queue)
        for job, name in list(self._workload_names.items()):  # what waited for the name
            if (self.workloads.get(name) or {}).get("spec", {}).get("queueName") == queue:
                self._announce(job)

    def _workload_of(self, name: str) -> dict | None:
        if self.workloads is None:
            return None
        workload = self.workloads.get(self._workload_names.get(name, ""))
        if workload is None:  # listed before the index existed: look
            workload = next((w for w in self.workloads.objects.values()
                             if owner_job(w) == name), None)
        return workload

    def _pod_of(self, name: str) -> dict | None:
        pod = self.pods.get(self._pod_names.get(name, ""))
        if pod is None:  # not indexed yet (listed before the index existed): look
            found = [p for p in self.pods.objects.values()
                     if any(p["metadata"].get("labels", {}).get(k) == name
                            for k in JOB_NAME_LABELS)]
            pod = found[-1] if found else None
        return pod

    def _outcome_of(self, name: str, obj: dict | None) -> Outcome:
        if obj is None:
            return Outcome("failed", f"The Kubernetes Job {name} was deleted outside the platform "
                                     "before it ended.", lost=True)
        condition = ended_condition(obj) or {}
        if condition.get("type") == "Complete":
            return Outcome("succeeded")
        pod = self._pod_of(name)
        status = (pod or {}).get("status", {})
        disrupted = next((c for c in status.get("conditions") or []
                          if c.get("type") == "DisruptionTarget" and c.get("status") == "True"),
                         None)
        if status.get("reason") in DISRUPTED or disrupted:
            why = status.get("message") or (disrupted or {}).get("message") or status.get("reason")
            return Outcome("failed", f"The job's pod was stopped by the cluster "
                                     f"({status.get('reason') or disrupted.get('reason')}: {why}).",
                           lost=True)
        if condition.get("reason") == "DeadlineExceeded":
            return Outcome("failed", "Timed out (the Job's activeDeadlineSeconds) and was stopped.")
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                return Outcome("failed", "The notebook ran out of memory (its profile's limit) "
                                         "and was killed. Choose a larger profile.")
            error = notebook_error(terminated.get("message") or "")
            if error:
                return Outcome("failed", f"The notebook raised {error}")
            if terminated:
                return Outcome("failed", f"papermill exited with code {terminated.get('exitCode')}"
                                         f" ({terminated.get('reason', 'Error')}); see the log.")
        if pod is None:
            return Outcome("failed", f"The job's pod disappeared ({condition.get('reason')}: "
                                     f"{condition.get('message')}).", lost=True)
        return Outcome("failed", f"{condition.get('reason', 'Failed')}: "
                                 f"{condition.get('message', 'the Job failed')}")

    async def _follow(self, name: str, files: JobFiles) -> None:
        """While the attempt runs: its log, and (where the job folder is a bucket) its cell
        progress, into the control plane's job folder."""
        try:
            await asyncio.gather(self._follow_log(name, files), self._follow_progress(name, files))
        finally:
            if self._followers.get(name) is asyncio.current_task():
                self._followers.pop(name, None)

    async def _follow_progress(self, name: str, files: JobFiles) -> None:
        """On pvc storage the entry point writes progress into the shared folder itself; on s3
        it sends it to the bucket (at most every 2 s), read back here every
        ``progress_interval`` seconds until the Job ends."""
        if not self.store.sends_progress:
            return
        job_id = files.root.name
        while (obj := self.jobs.get(name)) is not None and ended_condition(obj) is None:
            await asyncio.sleep(self.progress_interval)
            try:
                await self.store.fetch(files, job_id, "progress.json")
            except Exception as error:  # the bucket is away for a moment: the next look
                self.log.debug("progress of %s: %r", name, error)

    async def _follow_log(self, name: str, files: JobFiles) -> None:
        """Stream the pod's log into the job folder while it runs (the final log replaces it)."""
        try:
            while True:
                pod = self._pod_of(name)
                if pod is not None and pod["status"].get("phase") in ("Running", "Succeeded",
                                                                      "Failed"):
                    break
                if self.jobs.get(name) is None:
                    return
                await asyncio.sleep(1)  # reads the watch cache, not the API
            path = f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/log"
            response = await self.client._send(
                "GET", path, query={"follow": "true", "container": "notebook"}, timeout=None)
            async with response:
                if response.status != 200:
                    return
                with files.append(files.log) as out:
                    async for chunk in response.content.iter_any():
                        out.write(chunk)
                        out.flush()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.log.debug("log stream of %s ended: %r", name, error)
