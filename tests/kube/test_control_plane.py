"""The control plane's own job runner and deployment controller on the Kubernetes backend (the
cluster stand-in): the Job's name is kept with the job, a restarted runner re-attaches to it
from the database, a cancelled job's Job is deleted, an evicted attempt is retried as a new Job,
and the deployment controller's replicas are slots of a Kubernetes Deployment."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from fermi_extension import workload_tokens
from fermi_extension.caller import Caller
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.datasets.service import CreateDataset, DatasetPolicy, DatasetService
from fermi_extension.errors import Unprocessable
from fermi_extension.db import Deployment, Job, JobEvent, Replica, Revision, make_session_factory
from fermi_extension.deployments import service as deployments_service
from fermi_extension.jobs.models import CreateJob
from fermi_extension.jobs.service import JobRunner, JobService
from fermi_extension.paths import shipped
from fermi_extension.spec import runtime_spec
from tests.conformance.drivers import SUCCEEDS, WAITS
from tests.mocking import InstantTracker




class ControlPlane:
    """The jobs part of a control plane on the Kubernetes backend; ``die()`` is a kill -9."""

    def __init__(self, kube, factory, datasets: DatasetService | None = None, *,
                 tracker=None, tracking_uri: str = "http://127.0.0.1:5000"):
        self.kube, self.factory, self.datasets = kube, factory, datasets
        self.catalog = CatalogStore(factory)
        self.tracker, self.tracking_uri = tracker or InstantTracker(), tracking_uri

    async def start(self):
        self.backend = await self.kube.job_backend()
        self.runner = JobRunner(self.factory, self.catalog, self.backend, self.tracker,
                                self.kube.jobs_dir, tracking_uri=self.tracking_uri,
                                retry_interval=0.1)
        self.jobs = JobService(self.factory, self.catalog, self.backend, self.kube.jobs_dir,
                               wake=self.runner.wake, datasets=self.datasets)
        await self.runner.start()
        return self

    async def die(self):
        self.runner._stopping = True
        for task in [self.runner._task, *self.runner._watches.values()]:
            task.cancel()
        await self.kube.forget(self.backend)

    def job(self, job_id) -> Job:
        with self.factory() as session:
            return session.get(Job, job_id)

    async def until(self, job_id, predicate, timeout=20):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.job(job_id)):
            assert loop.time() < deadline, self.job(job_id).__dict__
            await asyncio.sleep(0.05)
        return self.job(job_id)


def factory_for(tmp_path):
    factory = make_session_factory(f"sqlite:///{tmp_path / 'fermi.sqlite'}")
    CatalogStore(factory).seed_if_empty(load_catalog_file(shipped("hub_config") / "catalog.yaml"))
    return factory


def submit(plane, nb, **fields):
    return plane.jobs.submit(Caller("ann"), CreateJob(notebook=nb, notebook_name="t.ipynb",
                                                      **fields)).id


def events(plane, job_id) -> list[str]:
    with plane.factory() as session:
        return [e.kind for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


@pytest.mark.parametrize("cluster_options", [{"run_pods": True}], indirect=True)
async def test_a_restarted_control_plane_reattaches_to_its_kubernetes_job(kube, tmp_path):
    factory = factory_for(tmp_path)
    plane = await ControlPlane(kube, factory).start()
    job_id = submit(plane, WAITS)
    running = await plane.until(job_id, lambda j: j.status == "running" and j.handle_name)
    assert running.pid is None and running.handle_name.startswith(f"fermi-job-{job_id}")
    await kube._until(lambda: running.handle_name in kube.cluster.running, 10)
    await plane.die()

    plane = await ControlPlane(kube, factory).start()
    assert "reattached" in events(plane, job_id)
    kube.release(plane.jobs.files(job_id))
    done = await plane.until(job_id, lambda j: j.status == "succeeded")
    assert done.handle_name is None and done.attempt == 1
    # what the pod's notebook printed and its log, collected by the control plane that
    # reattached (the pod runs the job entry point for real: run_pods)
    output = json.loads(plane.jobs.output(Caller("ann"), job_id))
    printed = ["".join(o.get("text", "")) for cell in output["cells"]
               for o in cell.get("outputs", [])]
    assert "released\n" in printed
    assert "Executing notebook" in plane.jobs.logs(Caller("ann"), job_id).text
    await plane.die()


async def test_cancel_deletes_the_job_and_an_evicted_attempt_is_retried(kube, tmp_path):
    plane = await ControlPlane(kube, factory_for(tmp_path)).start()
    cancelled = submit(plane, WAITS)
    job = await plane.until(cancelled, lambda j: j.status == "running" and j.handle_name)
    described, handle = plane.jobs.record_cancel(Caller("ann"), cancelled)
    await plane.runner.kill(handle)
    assert described.status == "cancelled" and handle.name == job.handle_name
    assert kube.cluster.requests("DELETE", handle.name)

    evicted = submit(plane, WAITS, max_retries=1)
    first = await plane.until(evicted, lambda j: j.status == "running" and j.handle_name)
    await kube.disrupt(SimpleNamespace(name=first.handle_name))
    second = await plane.until(evicted, lambda j: j.attempt == 2 and j.handle_name)
    assert second.handle_name != first.handle_name and "retrying" in events(plane, evicted)
    kube.release(plane.jobs.files(evicted))
    assert (await plane.until(evicted, lambda j: j.status == "succeeded")).attempt == 2

    succeeds = submit(plane, SUCCEEDS)
    assert (await plane.until(succeeds, lambda j: j.status == "succeeded")).reason is None
    await plane.die()


def created_job(kube, job_id) -> dict:
    return next(r.data for r in kube.cluster.requests("POST", "/jobs")
                if isinstance(r.data, dict) and r.data.get("kind") == "Job"
                and r.data["metadata"]["labels"]["fermi.io/job-id"] == job_id)


async def test_job_pods_see_their_own_folder_and_only_the_claims_listed_for_datasets(
        kube, tmp_path, monkeypatch):
    """Security review, hole A, replayed through the control plane: a job pod mounted the whole
    jobs claim (every user's job folder) and any claim a dataset named (pvc://claim-bob/home)."""
    ann = Caller("ann")
    factory = factory_for(tmp_path)
    # the admin's list: on the control plane (DatasetService) and, as FermiService gives its
    # backends, for the backend (here its default from the environment: no FermiService parent)
    monkeypatch.setenv("FERMI_DATASET_CLAIMS", "datasets")
    datasets = DatasetService(factory, DatasetPolicy(claims=["datasets"]))
    datasets.create(ann, CreateDataset(name="wine", location="pvc://datasets/wine/v1"))
    for location in ("pvc://claim-bob/home", "pvc://fermi-jobs/other-job"):
        with pytest.raises(Unprocessable, match="dataset_claims"):
            datasets.create(ann, CreateDataset(name="probe", location=location))
    plane = await ControlPlane(kube, factory, datasets).start()
    job_id = submit(plane, SUCCEEDS, datasets=["wine"])
    assert (await plane.until(job_id, lambda j: j.status == "succeeded")).reason is None
    pod = created_job(kube, job_id)["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"jobs": {"claimName": "fermi-jobs"},
                      "dataset-0": {"claimName": "datasets", "readOnly": True}}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["jobs"] == {"name": "jobs", "mountPath": f"/fermi/jobs/{job_id}",
                              "subPath": job_id}
    assert mounts["dataset-0"]["subPath"] == "wine/v1" and mounts["dataset-0"]["readOnly"]

    # the admin takes the claim off the list: attaching refuses, with the setting to look at
    plane.jobs.datasets = DatasetService(factory, DatasetPolicy())
    with pytest.raises(Unprocessable, match="'wine' version 1 cannot be attached.*CLAIMS"):
        submit(plane, SUCCEEDS, datasets=["wine"])
    await plane.die()

    # a backend whose list lacks the claim builds no pod with it, whatever the job's spec says
    # (here a control plane whose own check still let it through)
    monkeypatch.setenv("FERMI_DATASET_CLAIMS", "")
    plane = await ControlPlane(kube, factory, datasets).start()
    refused = submit(plane, SUCCEEDS, datasets=["wine"])
    failed = await plane.until(refused, lambda j: j.status == "failed")
    assert "Could not start" in failed.reason and "not one the admin lists" in failed.reason
    assert not [r for r in kube.cluster.requests("POST", "/jobs")
                if isinstance(r.data, dict)
                and r.data.get("metadata", {}).get("labels", {}).get("fermi.io/job-id") == refused]
    await plane.die()

    # and no backend starts with the jobs claim listed for datasets
    monkeypatch.setenv("FERMI_DATASET_CLAIMS", "datasets,fermi-jobs")
    with pytest.raises(ValueError, match="the jobs claim"):
        await kube.job_backend()


async def test_the_deployment_controller_runs_revisions_as_kubernetes_deployments(kube, tmp_path):
    factory = factory_for(tmp_path)
    backend = await kube.serving_backend()
    (backend.model_dir("wine", "1")).mkdir(parents=True)
    (backend.model_dir("wine", "1") / "MLmodel").write_text("flavors: {}\n")
    catalog = CatalogStore(factory)
    _, image, profile = catalog.resolve(None, "cpu-large")
    with factory() as session:
        session.add(Deployment(
            name="wine", owner="ann", model="wine", engine="auto", profile="cpu-large",
            runtime=runtime_spec(image, profile).model_dump(mode="json"), min_replicas=2,
            max_replicas=3, target_concurrency=5, scale_down_delay_seconds=0, desired_replicas=2,
            stable_revision="r1", key_hash="x"))
        session.add(Revision(deployment="wine", name="r1", version="1"))
        session.commit()
    controller = deployments_service.DeploymentController(
        factory, SimpleNamespace(traffic={}), backend, tracker=None)

    async def settle(predicate, rounds=100):
        for _ in range(rounds):
            await controller.reconcile()
            with factory() as session:
                if predicate(session):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the controller never got there")

    def ready(count):
        return lambda s: s.scalar(select(Deployment).where(Deployment.name == "wine")).status == \
            "ready" and len([r for r in s.scalars(select(Replica)) if r.state == "ready"]) == count

    await settle(ready(2))
    (workload,) = kube.cluster.objects("apps/v1/deployments")
    assert workload["metadata"]["name"] == "wine-v1" and workload["spec"]["replicas"] == 2
    # its storage initializer alone holds a token, which reads that one version and nothing else
    pod = workload["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    token = {e["name"]: e.get("value") for e in fetch["env"]}["MLFLOW_TRACKING_TOKEN"]
    assert workload_tokens.resolve(factory, token) == workload_tokens.Grant(
        "replica", "ann", deployment="wine", model="models:/wine/1")
    assert not [e for e in pod["containers"][0].get("env", [])
                if e["name"].startswith("MLFLOW_")]
    config = next(o for o in kube.cluster.objects("v1/configmaps")
                  if o["metadata"]["name"] == "fermi-routes")
    assert '"wine"' in config["data"]["routes.json"]

    with factory() as session:  # a restarted control plane adopts the replicas
        replicas = {r.id for r in session.scalars(select(Replica))}
    await kube.forget_serving(backend)
    backend = await kube.serving_backend()
    controller = deployments_service.DeploymentController(
        factory, SimpleNamespace(traffic={}), backend, tracker=None)
    await settle(ready(2))
    with factory() as session:
        assert {r.id for r in session.scalars(select(Replica))} == replicas

    with factory() as session:  # delete: drained, then its objects go
        d = session.get(Deployment, "wine")
        d.stopped, d.status = True, "deleting"
        session.commit()
    await settle(lambda s: s.get(Deployment, "wine") is None)
    assert not kube.cluster.objects("apps/v1/deployments")
    assert not kube.cluster.objects("v1/services")
    assert workload_tokens.resolve(factory, token) is None  # revoked with its last replica


async def test_gpu_replicas_stay_within_the_owners_gpu_quota(kube, tmp_path):
    from fermi_extension.db import DeploymentEvent
    from fermi_extension.quotas.service import QuotaLimits, QuotaService

    factory = factory_for(tmp_path)
    backend = await kube.serving_backend()
    (backend.model_dir("wine", "1")).mkdir(parents=True)
    (backend.model_dir("wine", "1") / "MLmodel").write_text("flavors: {}\n")
    _, image, profile = CatalogStore(factory).resolve(None, "gpu-a100-1")
    QuotaService(factory).put(Caller("root", admin=True), "user", "ann", QuotaLimits(gpus=1))
    with factory() as session:
        session.add(Deployment(
            name="wine", owner="ann", model="wine", engine="auto", profile=profile.slug,
            runtime=runtime_spec(image, profile).model_dump(mode="json"), min_replicas=3,
            max_replicas=3, target_concurrency=5, scale_down_delay_seconds=0, desired_replicas=3,
            stable_revision="r1", key_hash="x"))
        session.add(Revision(deployment="wine", name="r1", version="1"))
        session.commit()
    controller = deployments_service.DeploymentController(
        factory, SimpleNamespace(traffic={}), backend, tracker=None)
    for _ in range(20):
        await controller.reconcile()
        await asyncio.sleep(0.05)
    with factory() as session:
        assert len(list(session.scalars(select(Replica)))) == 1  # 1 GPU each, quota of 1
        held = [e.message for e in session.scalars(select(DeploymentEvent))
                if e.kind == "scale-held"]
    assert len(held) == 1 and "quota of 1 GPUs in use is reached" in held[0]



async def refused_launch(kube, tmp_path, monkeypatch):
    """A distributed job whose rendezvous Service (the second object of its launch, after the
    Job) carries a port the builders would never write, which the API server refuses (422
    Invalid): the job as it ended."""
    from fermi_extension.backends.kubernetes import jobs

    make_job = jobs.make_job

    def with_a_refused_service(*args, **kwargs):
        objects = make_job(*args, **kwargs)
        for obj in objects:
            if obj["kind"] == "Service":
                obj["spec"]["ports"][0]["port"] = "rendezvous"
        return objects

    monkeypatch.setattr(jobs, "make_job", with_a_refused_service)
    plane = await ControlPlane(kube, factory_for(tmp_path)).start()
    try:
        job_id = submit(plane, SUCCEEDS, nodes=2)
        return await plane.until(job_id, lambda j: j.status == "failed")
    finally:
        await plane.die()


async def test_a_job_the_api_server_refuses_fails_in_the_servers_words(kube, tmp_path,
                                                                      monkeypatch):
    failed = await refused_launch(kube, tmp_path, monkeypatch)
    assert failed.reason.startswith("Could not start: 422 Invalid: Service ") and \
        "is invalid: spec.ports[0].port: 'rendezvous' is not of type 'integer'" in failed.reason


async def test_a_job_the_api_server_refuses_leaves_nothing_behind(kube, tmp_path, monkeypatch):
    await refused_launch(kube, tmp_path, monkeypatch)
    assert not kube.cluster.objects("batch/v1/jobs") and not kube.cluster.objects("v1/services")
