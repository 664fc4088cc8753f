"""The Kubernetes backend against a real cluster (kind, k3s, …): run when FERMI_TEST_KUBECONFIG
names a kubeconfig, skipped otherwise (see docs/kubernetes.md, "Tests").

It needs no shared volume and no Fermi image: the job pods run the job entry point from an image
that does not have Fermi, so they fail the way a broken image fails, which exercises create → watch → pod
failure reason → log → delete with propagation against a real API server, scheduler and kubelet.
Model-server Deployments are created, scaled and deleted (their readiness is not waited for:
the image is a stand-in). Everything lives in $FERMI_TEST_NAMESPACE (default fermi-test) and
is deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from tests.conformance.drivers import SUCCEEDS, default_runtime, notebook, replica_launch

KUBECONFIG = os.environ.get("FERMI_TEST_KUBECONFIG", "")
NAMESPACE = os.environ.get("FERMI_TEST_NAMESPACE", "fermi-test")
pytestmark = [
    pytest.mark.skipif(not KUBECONFIG, reason="FERMI_TEST_KUBECONFIG is not set (no real cluster)"),
    pytest.mark.timeout(600),
]


def small_runtime():
    runtime = default_runtime()
    return runtime.model_copy(update={"image_reference": "python:3.11-slim", "cpu": 0.1,
                                      "memory": "128Mi"})


@pytest.fixture
async def jobs_backend(tmp_path):
    from fermi_extension.backends.kubernetes.jobs import KubeJobBackend

    from fermi_extension.backends.kubernetes.storage import PvcStorage

    # pods mount no volume (the 's3' layout) and nothing is uploaded: the pod fails before it
    # would read its notebook
    backend = KubeJobBackend(kubeconfig=KUBECONFIG, namespace=NAMESPACE, kueue="off",
                             storage="s3", s3_prefix="s3://unused/fermi-test")
    await backend.start()
    backend.store = PvcStorage()
    yield backend
    await backend.close()


async def launch(backend, tmp_path, nb):
    from fermi_extension.jobs.backend import JobLaunch
    from fermi_extension.jobs.files import JobFiles
    import json

    job_id = uuid.uuid4().hex[:12]
    files = JobFiles(tmp_path / job_id)
    files.root.mkdir(parents=True)
    files.snapshot.write_text(json.dumps(nb))
    handle = await backend.launch(JobLaunch(job_id, "tester", files, small_runtime(), {}, {}))
    return handle, files


async def test_a_job_runs_on_the_cluster_and_its_failure_is_explained(jobs_backend, tmp_path):
    handle, files = await launch(jobs_backend, tmp_path, SUCCEEDS)
    try:
        assert jobs_backend.alive(handle)
        outcome = await asyncio.wait_for(jobs_backend.wait(handle, files, 240), 300)
        # the image has no Fermi (nor papermill): the pod was scheduled, its container started
        # and exited, and the reason is that exit (not a pull error, an eviction or a deadline,
        # which a broken cluster would give)
        assert outcome.status == "failed" and not outcome.lost, outcome
        assert outcome.reason.startswith("papermill exited with code "), outcome
    finally:
        await jobs_backend.kill(handle)


async def test_cancel_deletes_the_job_and_its_pods(jobs_backend, tmp_path):
    handle, files = await launch(jobs_backend, tmp_path, notebook("import time; time.sleep(600)"))
    selector = f"job-name={handle.name}"

    async def pods() -> list[dict]:
        return (await jobs_backend.client.list("Pod", NAMESPACE, selector)).get("items", [])

    async def until(predicate, what: str, timeout: float = 120) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(await pods()):
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(1)

    # a pod exists before the cancel, so that its going is something the cancel did
    await until(bool, "the Job's pod")
    await jobs_backend.kill(handle)
    assert await jobs_backend.jobs.wait_for(handle.name, lambda o: o is None, 120)
    await until(lambda items: all(p["metadata"].get("deletionTimestamp") for p in items),
                "the pods to go with their Job")


async def test_model_server_revisions_scale_and_go(tmp_path):
    from fermi_extension.backends.kubernetes.serving import KubeServingBackend

    class Driver:  # what replica_launch needs
        def model_source(self):
            source = tmp_path / "model"
            source.mkdir(exist_ok=True)
            (source / "MLmodel").write_text("flavors: {}\n")
            return source

    backend = KubeServingBackend(kubeconfig=KUBECONFIG, namespace=NAMESPACE, mode="deployments",
                                 serving_dir=str(tmp_path / "serving"), serving_image="busybox:1.36")
    await backend.start()
    name = f"t{uuid.uuid4().hex[:6]}"
    try:
        a = await backend.start_replica(replica_launch(Driver(), backend, name, "r1", "1",
                                                       small_runtime()))
        b = await backend.start_replica(replica_launch(Driver(), backend, name, "r1", "1",
                                                       small_runtime()))
        deployment = await backend.client.get("Deployment", NAMESPACE, f"{name}-v1")
        assert deployment["spec"]["replicas"] == 2
        await backend.stop_replica(a)
        deployment = await backend.client.get("Deployment", NAMESPACE, f"{name}-v1")
        assert deployment["spec"]["replicas"] == 1
        await backend.stop_replica(b)
        assert await backend.client.get("Service", NAMESPACE, f"{name}-v1") is None
    finally:
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            await backend.client.delete(kind, NAMESPACE, f"{name}-v1")
        await backend.close(stop_all=False)
