"""Parity through the control plane: a job submitted to the jobs service shows the same lineage
(snapshot → run → model version), cell progress, log and queue state on the Kubernetes backend
(pods that really run the job entry point, ``run_pods=True``) as on the embedded default; and
while Kueue holds a job, the job shows Kueue's reason as its queue state, and cancelling it
deletes its Kueue Workload."""

from __future__ import annotations

import asyncio
import json

import pytest

from fermi_extension.caller import Caller
from fermi_extension.quotas.service import QuotaLimits, QuotaService
from tests.conformance.drivers import SUCCEEDS, KubernetesDriver, LocalDriver, notebook
from tests.conformance.test_lineage import TrackingStub, normalised
from tests.kube.simulator import KUEUE_WORKLOADS
from tests.kube.test_control_plane import ControlPlane, factory_for, submit
from tests.mocking import InstantTracker

ANN = Caller("ann")
# three cells of its own besides the parameters cell: one that waits for `release` (so that
# progress and the log can be read while it runs), then one that prints
STEPS = notebook("print('step one')",
                 "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.05)",
                 "print('result', x * 2)")


class RegisteringTracker(InstantTracker):
    """Each run registers one version of model "wine", named after the run (the model version
    end of the lineage, as the tracking server reports it)."""

    async def registered_versions(self, run_id):
        return [{"name": "wine", "version": run_id.removeprefix("run")}]


@pytest.fixture
def tracking():
    stub = TrackingStub()
    yield stub
    stub.close()


async def wait_for(read, predicate, timeout: float = 60):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(value := read()):
        assert loop.time() < deadline, value
        await asyncio.sleep(0.1)
    return value


async def what_a_job_shows(driver, tmp_path, tracking) -> dict:
    """Submit STEPS through the control plane on ``driver``'s backend: what the API shows of
    it while it runs and once it has ended."""
    driver.tracking_uri = tracking.url
    plane = await ControlPlane(driver, factory_for(tmp_path), tracker=RegisteringTracker(),
                               tracking_uri=tracking.url).start()
    try:
        job_id = submit(plane, STEPS, parameters={"x": 21})
        running = await wait_for(lambda: plane.jobs.get(ANN, job_id),
                                 lambda j: j.progress.current_cell == 3, 90)
        driver.release(plane.jobs.files(job_id))
        done = await wait_for(lambda: plane.jobs.get(ANN, job_id),
                              lambda j: j.status in ("succeeded", "failed"), 90)
        files = plane.jobs.files(job_id)
        return {"running": running, "done": done,
                "log": plane.jobs.logs(ANN, job_id).text,
                "lineage": json.loads((files.root / "lineage.json").read_text())}
    finally:
        await plane.die()


async def test_a_job_shows_the_same_lineage_progress_and_log_on_kubernetes(tmp_path, tracking):
    shown = {}
    for made in (LocalDriver(tmp_path / "local"),
                 KubernetesDriver(tmp_path / "kube", run_pods=True)):
        async with made as driver:
            shown[driver.kind] = await what_a_job_shows(driver, driver.tmp, tracking)
    local, kube = shown["local"], shown["kubernetes"]
    for side in (local, kube):
        assert side["done"].status == "succeeded", (side["done"].reason, side["log"])
        # snapshot → run → model version: the attempt's lineage names the job's run, whose
        # registered version the job lists
        assert side["lineage"]["run_id"] == side["done"].tracking_run_id
        assert [m.model_dump() for m in side["done"].models] == [
            {"name": "wine", "version": side["done"].tracking_run_id.removeprefix("run")}]
        assert "step one" in side["log"] and "result 42" in side["log"]
    assert normalised(local["lineage"]) == normalised(kube["lineage"])
    # the cell progress the API shows while the notebook runs, and once it has ended
    assert local["running"].status == kube["running"].status == "running"
    assert local["running"].progress == kube["running"].progress
    # at the waiting cell: the parameters cell, papermill's injected one and the first are done
    assert (local["running"].progress.cells_done, local["running"].progress.current_cell) == (3, 3)
    assert local["done"].progress == kube["done"].progress
    assert kube["done"].progress.cells_done == kube["done"].progress.cells_total == 5


WAITS_FOR_QUOTA = {"kueue": True, "admit": False}


@pytest.mark.parametrize("cluster_options", [WAITS_FOR_QUOTA], indirect=True)
async def test_a_job_kueue_holds_shows_kueues_reason_and_runs_once_admitted(kube, tmp_path):
    plane = await ControlPlane(kube, factory_for(tmp_path)).start()
    job_id = submit(plane, SUCCEEDS, profile="gpu-a100-1")
    name = (await plane.until(job_id, lambda j: j.handle_name)).handle_name
    # where the embedded default shows its queue state (queued, and why), Kueue's own words
    # (once Kueue's scheduler has tried it: until then its workload has no reason yet)
    expected = ("Waiting for quota in ClusterQueue fermi-gpu-a100: couldn't assign flavors to "
                "pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
                "fermi-gpu-a100, 1 more needed")
    held = await wait_for(lambda: plane.jobs.get(ANN, job_id), lambda j: j.reason == expected, 10)
    assert (held.status, held.started_at) == ("queued", None)
    assert [e.message for e in held.events if e.kind == "waiting"] == [expected]
    assert [j.reason for j in plane.jobs.list(ANN)[0]] == [held.reason]
    # listed by what it shows: among the queued jobs, not the running ones
    assert [(j.id, j.status) for j in plane.jobs.list(ANN, status="queued")[0]] == [
        (job_id, "queued")]
    assert plane.jobs.list(ANN, status="running") == ([], 0)
    workload = kube.cluster.workload_of(name)
    assert workload["metadata"]["name"].startswith(f"job-{name}-")

    await kube.cluster.admit_workload(name)  # quota freed: Kueue admits it, the pod runs
    done = await wait_for(lambda: plane.jobs.get(ANN, job_id),
                          lambda j: j.status == "succeeded", 20)
    assert done.reason is None and done.started_at is not None
    await plane.die()


@pytest.mark.parametrize("cluster_options", [WAITS_FOR_QUOTA], indirect=True)
async def test_cancelling_a_job_kueue_holds_deletes_its_workload(kube, tmp_path):
    plane = await ControlPlane(kube, factory_for(tmp_path)).start()
    job_id = submit(plane, SUCCEEDS)
    name = (await plane.until(job_id, lambda j: j.handle_name)).handle_name
    await kube._until(lambda: kube.cluster.workload_of(name) is not None, 10)
    await wait_for(lambda: plane.jobs.get(ANN, job_id), lambda j: j.status == "queued", 10)
    workload = kube.cluster.workload_of(name)["metadata"]["name"]

    described, handle = plane.jobs.record_cancel(ANN, job_id)
    await plane.runner.kill(handle)
    assert described.status == "cancelled"
    # said outright (the stand-in, unlike a cluster's garbage collector, deletes no dependent)
    assert kube.cluster.requests("DELETE", f"/workloads/{workload}")
    assert kube.cluster.workload_of(name) is None
    assert not [w for w in kube.cluster.objects(KUEUE_WORKLOADS)]
    assert not kube.cluster.objects("batch/v1/jobs")
    await plane.die()


async def test_on_the_embedded_default_a_held_job_is_queued_with_its_reason(tmp_path):
    """The queue state the Kubernetes backend matches: queued, the reason beginning "Waiting"."""
    async with LocalDriver(tmp_path) as driver:
        factory = factory_for(tmp_path)
        QuotaService(factory).put(Caller("root", admin=True), "user", "ann",
                                  QuotaLimits(running_jobs=0))
        plane = await ControlPlane(driver, factory).start()
        job_id = submit(plane, SUCCEEDS)
        held = await wait_for(lambda: plane.jobs.get(ANN, job_id), lambda j: j.reason, 10)
        assert held.status == "queued" and held.reason.startswith("Waiting")
        await plane.die()


# -- storage 's3': the job folder in a bucket ----------------------------------------------------
# No S3 server runs here (nor boto3): a folder stands for the bucket, on both sides — boto3's
# upload/download calls for the control plane (S3Storage takes a client), papermill's s3://
# handler for the pod (registered before the entry point runs, as papermill's own S3Handler is).

class FolderS3:
    """The two boto3 S3 client calls S3Storage makes, over a folder."""

    def __init__(self, root):
        self.root = root

    def upload_fileobj(self, fileobj, bucket, key):
        target = self.root / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fileobj.read())

    def download_fileobj(self, bucket, key, fileobj):
        source = self.root / bucket / key
        if not source.exists():
            raise Exception("An error occurred (404) when calling the HeadObject operation: "
                            "Not Found")
        fileobj.write(source.read_bytes())


POD_WITH_S3 = """
import os, sys
from pathlib import Path
from papermill.iorw import papermill_io

class FolderS3Handler:  # papermill's handler interface, s3://BUCKET/KEY → a folder
    root = Path(os.environ["FOLDER_S3"])
    def _path(self, url):
        return self.root / url[len("s3://"):]
    def read(self, url):
        return self._path(url).read_text()
    def write(self, buf, url):
        self._path(url).parent.mkdir(parents=True, exist_ok=True)
        self._path(url).write_text(buf)
    def listdir(self, url):
        return [str(p) for p in self._path(url).iterdir()]
    def pretty_path(self, url):
        return url

papermill_io.register("s3://", FolderS3Handler())
from fermi_extension.jobs.entry import main
sys.exit(main(sys.argv[1:]))
"""


async def test_on_s3_storage_lineage_progress_and_result_come_back_to_the_control_plane(
        tmp_path, runtime):
    import hashlib
    import sys

    from fermi_extension.backends.kubernetes.objects import Cluster, Storage, make_job
    from fermi_extension.backends.kubernetes.storage import S3Storage
    from fermi_extension.jobs.files import JobFiles
    from fermi_extension.workload_env import workload_env

    bucket = tmp_path / "bucket"
    store = S3Storage("s3://fermi/jobs", client=FolderS3(bucket))
    files = JobFiles(tmp_path / "jobs" / "j1")  # the control plane's folder of the job
    files.root.mkdir(parents=True)
    files.snapshot.write_text(json.dumps(STEPS))
    await store.deliver(files, "j1")

    cluster = Cluster(storage=Storage(kind="s3", s3_prefix="s3://fermi/jobs"))
    (job,) = make_job("j1", "ann", runtime, cluster, parameters={"x": 21})
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["python", "-m", "fermi_extension.jobs.entry"]
    pod_folder = tmp_path / "pod"  # the pod's own folder (its root in the container)
    pod = JobFiles(pod_folder)
    args = [str(pod_folder) if a == command[3] else a for a in command[3:]]
    env = workload_env({e["name"]: e["value"] for e in container["env"]} | {
        "FOLDER_S3": str(bucket), "MLFLOW_TRACKING_URI": ""})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POD_WITH_S3, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    # while the notebook waits for `release` in its working folder (the pod's), its progress
    # reaches the control plane through the bucket, as it does through a shared volume
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    try:
        while True:
            await store.fetch(files, "j1", "progress.json")
            progress = json.loads(files.progress.read_text()) if files.progress.exists() else {}
            if (progress.get("cells_done"), progress.get("current_cell")) == (3, 3):
                break
            assert loop.time() < deadline and process.returncode is None, progress
            await asyncio.sleep(0.2)
        assert not files.result.exists()  # the rest comes back when it ends
    finally:
        (pod.workdir / "release").touch()
    log, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, log.decode()

    await store.collect(files, "j1")
    lineage = json.loads((files.root / "lineage.json").read_text())
    assert lineage["status"] == "succeeded" and lineage["parameters"] == {"x": 21}
    assert lineage["snapshot"] == {
        "name": "input.ipynb", "sha256": hashlib.sha256(files.snapshot.read_bytes()).hexdigest()}
    assert lineage["output"] == {
        "name": "output.ipynb", "sha256": hashlib.sha256(files.output.read_bytes()).hexdigest()}
    progress = json.loads(files.progress.read_text())
    assert progress["cells_done"] == progress["cells_total"] == 5
    assert json.loads(files.result.read_text())["status"] == "succeeded"


def test_kueues_other_reasons_are_said_in_its_own_words():
    """A preempted workload and one Kueue cannot admit at all (its queue is missing or stopped)
    say so, not "waiting for quota"."""
    from fermi_extension.backends.kubernetes.jobs import kueue_reason

    def workload(*conditions):
        return {"status": {"conditions": list(conditions)}}

    evicted = workload({"type": "QuotaReserved", "status": "False", "reason": "Pending"},
                       {"type": "Evicted", "status": "True", "reason": "Preempted",
                        "message": "Preempted to accommodate a workload (UID: 1) in the "
                                   "ClusterQueue"})
    assert kueue_reason("gpu-a100", evicted, "fermi-gpu-a100") == (
        "Waiting: evicted by Kueue (Preempted: Preempted to accommodate a workload (UID: 1) in "
        "the ClusterQueue); it waits to be admitted again in ClusterQueue fermi-gpu-a100.")
    inadmissible = workload({"type": "QuotaReserved", "status": "False",
                             "reason": "Inadmissible",
                             "message": "LocalQueue gpu-a100 doesn't exist"})
    assert kueue_reason("gpu-a100", inadmissible, None) == (
        "Waiting: Kueue cannot admit it in LocalQueue gpu-a100: LocalQueue gpu-a100 doesn't "
        "exist")
    assert kueue_reason("cpu", None, None) == "Waiting for Kueue to take it into LocalQueue cpu."


async def test_on_s3_storage_the_backend_reads_a_running_jobs_progress_from_the_bucket(
        kube, tmp_path, runtime):
    """The control plane's side of live progress on a bucket: while the Job runs, what the
    pod's entry point sent (``progress.json`` beside the snapshot) is read back into the job
    folder the API reads, every ``progress_interval`` seconds."""
    from fermi_extension.backends.kubernetes.storage import S3Storage
    from fermi_extension.jobs.files import read_json
    from tests.conformance.drivers import WAITS

    backend = await kube.job_backend()
    backend.progress_interval = 0.05
    # the bucket (FolderS3 above); the stand-in's pod sends nothing itself: the test does
    backend.store = S3Storage("s3://fermi/jobs", client=FolderS3(tmp_path / "bucket"))
    handle, files = await kube.launch(backend, WAITS, runtime)
    waiting = asyncio.create_task(backend.wait(handle, files, 30))
    await kube.until_running(backend, handle, files)
    sent = tmp_path / "bucket" / "fermi" / "jobs" / files.root.name / "progress.json"
    assert sent.parent.joinpath("input.ipynb").exists()  # delivered there, not on a volume
    sent.write_text(json.dumps({"cells_total": 4, "cells_done": 2, "current_cell": 2,
                                "updated_at": 1.0}))
    shown = await wait_for(lambda: read_json(files.progress), lambda p: p is not None, 10)
    assert (shown["cells_done"], shown["current_cell"]) == (2, 2)
    kube.release(files)
    assert (await waiting).status == "succeeded"
