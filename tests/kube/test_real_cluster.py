"""The Kubernetes backend on a real cluster (kind, k3s, …): the same scenarios as the podman
kubelet's (``tests/kube/scenarios.py``, ``tests/containers/test_kube_play.py``) — the training
job succeeds and logs its metric and model, the model server answers V2 infer, the router splits
traffic in the canary ratio — against a real API server, scheduler and kubelet. Skipped only
when FERMI_TEST_KUBECONFIG is unset; with it set, anything missing fails (see docs/kubernetes.md,
"Tests"):

- FERMI_TEST_KUBECONFIG: the cluster's kubeconfig; FERMI_TEST_NAMESPACE (default fermi-test),
  where everything runs and is deleted at the end;
- FERMI_TEST_IMAGE: an image with this Fermi the cluster's nodes can run (e.g. `fermi images
  build python` then `kind load docker-image localhost/fermi/python:0.1.0`, or one pushed with
  `fermi images push`);
- FERMI_TEST_JOBS_DIR: the folder of the PVC ``fermi-jobs`` in that namespace as this machine
  sees it (the control plane shares it with job pods: e.g. kind's extraMounts of a hostPath
  PersistentVolume), so that the notebook reaches the pod and its output comes back;
- ``kubectl`` on the PATH: the test reaches Services through ``kubectl port-forward``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from tests.kube import scenarios

KUBECONFIG = os.environ.get("FERMI_TEST_KUBECONFIG", "")
NAMESPACE = os.environ.get("FERMI_TEST_NAMESPACE", "fermi-test")
pytestmark = [
    pytest.mark.skipif(not KUBECONFIG, reason="FERMI_TEST_KUBECONFIG is not set (no real cluster)"),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(900),
]
CANARY, REQUESTS = 20, 1000


def required(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value:  # a configured cluster with a missing piece fails: it never passes by skipping
        pytest.fail(f"FERMI_TEST_KUBECONFIG is set but {variable} is not (see this module's "
                    "docstring)")
    return value


class ClusterPlace(scenarios.Place):
    """Pods on the real cluster; the test reaches a Service through kubectl port-forward."""

    def __init__(self, client, image: str, jobs_dir: Path):
        self._client, self.image, self.jobs_dir = client, image, jobs_dir
        self.kubeconfig, self.namespace = KUBECONFIG, NAMESPACE
        self.forwards: list[subprocess.Popen] = []

    @property
    def client(self):
        return self._client

    async def url(self, service: str, port: int) -> str:
        kubectl = shutil.which("kubectl")
        assert kubectl, "kubectl is not on the PATH (the test reaches Services through it)"
        forward = subprocess.Popen(
            [kubectl, "--kubeconfig", KUBECONFIG, "-n", NAMESPACE, "port-forward",
             f"service/{service}", f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.forwards.append(forward)
        line = await asyncio.to_thread(forward.stdout.readline)  # Forwarding from 127.0.0.1:N
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward service/{service}: {line}"
        return f"http://127.0.0.1:{found.group(1)}"

    async def secret(self, name: str, data: dict[str, str]) -> None:
        await self.client.apply({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": name, "namespace": NAMESPACE},
                                 "stringData": data})

    async def clean(self) -> None:
        for forward in self.forwards:
            forward.terminate()
        for kind, name in [("Deployment", "fermi-tracking"), ("Service", "fermi-tracking"),
                           ("Deployment", "fermi-router"), ("Service", "fermi-router"),
                           ("Secret", "fermi-router-token"), ("ConfigMap", "fermi-routes")]:
            await self.client.delete(kind, NAMESPACE, name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world():
    from fermi_extension.backends.kubernetes.kube_client import KubeClient

    image, jobs_dir = required("FERMI_TEST_IMAGE"), Path(required("FERMI_TEST_JOBS_DIR"))
    client = await KubeClient.connect(KUBECONFIG)
    place = ClusterPlace(client, image, jobs_dir)
    try:
        place.tracking = await scenarios.start_tracking(place, timeout=600)
        yield place
    finally:
        await place.clean()
        await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(world):
    return await scenarios.train(world, world.tracking, timeout=600)


async def test_the_training_job_succeeds_and_logs_its_metric_and_model(world, trained):
    outcome, run_id, files = trained
    assert (outcome.status, outcome.lost) == ("succeeded", False), (
        outcome, files.log.read_text() if files.log.exists() else "no log")
    run = scenarios.run_of(world.tracking, run_id)
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]}["accuracy"] > 0.9
    assert [v["version"] for v in scenarios.versions_of(world.tracking, run_id)] == ["1"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serving(world, trained, tmp_path_factory):
    _, run_id, _ = trained
    first = scenarios.versions_of(world.tracking, run_id)[0]
    scenarios.mlflow_api(world.tracking, "model-versions/create",
                         {"name": scenarios.MODEL, "source": first["source"], "run_id": run_id,
                          "model_id": first["source"].removeprefix("models:/")})
    backend = world.serving_backend(tmp_path_factory.mktemp("serving"))
    await backend.start()
    handles = {}
    try:
        for version in ("1", "2"):
            handles[version] = await scenarios.serve(world, backend, version, timeout=600)
        yield backend, handles
    finally:
        for handle in handles.values():
            await backend.stop_replica(handle)
        await backend.close(stop_all=False)


async def test_the_router_splits_infer_traffic_in_the_canary_ratio(world, serving):
    backend, handles = serving
    backend.publish(scenarios.routes(1, {"stable": (handles["1"], 100 - CANARY),
                                         "canary": (handles["2"], CANARY)}))
    await backend._publishing
    router = await scenarios.start_router(world, timeout=300)
    # the ConfigMap reaches the pod's volume within the kubelet's sync period (about a minute)
    await scenarios.until(lambda: scenarios.answers(router), "the router to route", 180)
    counts = await scenarios.split(router, REQUESTS)
    tolerance = scenarios.binomial_tolerance(REQUESTS, CANARY / 100)
    assert sum(counts.values()) == REQUESTS, counts
    assert abs(counts["2"] / REQUESTS - CANARY / 100) <= tolerance, counts
    backend.publish(scenarios.routes(2, {"stable": (handles["1"], 0),
                                         "canary": (handles["2"], 100)}))
    await backend._publishing
    await scenarios.until_split_follows(router, "2", timeout=180)
