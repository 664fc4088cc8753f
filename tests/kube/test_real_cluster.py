"""The Kubernetes backend on a real cluster (kind, k3s, …): the tests of the podman kubelet's
suite (``tests/containers/test_kube_play.py``) — the same tests (``tests/kube/suite.py``) of the
same scenarios (``tests/kube/scenarios.py``), in this module's world: the training job succeeds
and logs its metric and model, a failing one says why, the model server answers V2 infer, the
router splits traffic in the canary ratio, FermiKubeSpawner's dev server (started by its
start(), stopped by its stop()) answers its user only, within its profile's limits, without the
hub's secrets, saving into its home volume — against a real API server, scheduler and kubelet.
Skipped only when FERMI_TEST_KUBECONFIG is unset; with it set, anything missing fails (see
docs/kubernetes.md, "Tests"):

- FERMI_TEST_KUBECONFIG: the cluster's kubeconfig; FERMI_TEST_NAMESPACE (default fermi-test),
  where everything runs and is deleted at the end;
- FERMI_TEST_IMAGE: the python image with this Fermi the cluster's nodes can run (jobs, dev
  servers; e.g. `fermi images build` then `kind load docker-image
  localhost/fermi/python:0.1.0`, or one pushed with `fermi images push`);
- FERMI_TEST_HUB_IMAGE, FERMI_TEST_ROUTER_IMAGE, FERMI_TEST_SERVING_IMAGE: the hub, router and
  model-server images (default: the names the chart and the settings give them, which `fermi
  images build` tags; ``kind load`` them likewise);
- FERMI_TEST_JOBS_DIR: the folder of the PVC ``fermi-jobs`` in that namespace as this machine
  sees it (the control plane shares it with job pods: e.g. kind's extraMounts of a hostPath
  PersistentVolume), so that the notebook reaches the pod and its output comes back;
- a default StorageClass (the dev server's home claim is provisioned dynamically);
- ``kubectl`` on the PATH: the test reaches Services and pods through ``kubectl port-forward``
  and runs its checks in the dev server's container through ``kubectl exec``.
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
from tests.kube.suite import *  # noqa: F401,F403 (the tests, run in this world)

KUBECONFIG = os.environ.get("FERMI_TEST_KUBECONFIG", "")
NAMESPACE = os.environ.get("FERMI_TEST_NAMESPACE", "fermi-test")
pytestmark = [
    pytest.mark.skipif(not KUBECONFIG, reason="FERMI_TEST_KUBECONFIG is not set (no real cluster)"),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(900),
]
# what the scenarios create outside the backends (which delete their own)
CREATED = [("Deployment", "fermi-tracking"), ("Service", "fermi-tracking"),
           ("Deployment", "fermi-router"), ("Service", "fermi-router"),
           ("Secret", "fermi-router-token"), ("ConfigMap", "fermi-routes"),
           ("Deployment", "hub"), ("Service", "hub"), ("ConfigMap", "fermi-test-hub"),
           (scenarios.CLAIMS, f"claim-{scenarios.DEV_USER}")]


def required(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value:  # a configured cluster with a missing piece fails: it never passes by skipping
        pytest.fail(f"FERMI_TEST_KUBECONFIG is set but {variable} is not (see this module's "
                    "docstring)")
    return value


def images() -> dict[str, str]:
    named = scenarios.chart_images()
    return {"python": required("FERMI_TEST_IMAGE"),
            "hub": os.environ.get("FERMI_TEST_HUB_IMAGE") or named["hub"],
            "router": os.environ.get("FERMI_TEST_ROUTER_IMAGE") or named["router"],
            "model-server": os.environ.get("FERMI_TEST_SERVING_IMAGE") or named["model-server"]}


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is not on the PATH (the test reaches the cluster's pods through it)"
    return found


class ClusterPlace(scenarios.Place):
    """Pods on the real cluster; the test reaches a Service or a pod through kubectl
    port-forward, and a container through kubectl exec."""

    start_timeout = 600.0
    sync_timeout = 180.0  # the kubelet's ConfigMap sync period is about a minute

    def __init__(self, client, images: dict[str, str], jobs_dir: Path):
        self._client, self.images, self.jobs_dir = client, images, jobs_dir
        # the hub's KubeSpawner and the control plane call as the same user here
        self.kubeconfig = self.spawner_kubeconfig = KUBECONFIG
        self.namespace = NAMESPACE
        self.forwards: list[subprocess.Popen] = []

    @property
    def client(self):
        return self._client

    async def forward(self, target: str, port: int) -> str:
        forward = subprocess.Popen(
            [kubectl(), "--kubeconfig", KUBECONFIG, "-n", NAMESPACE, "port-forward", target,
             f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.forwards.append(forward)
        line = await asyncio.to_thread(forward.stdout.readline)  # Forwarding from 127.0.0.1:N
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward {target}: {line}"
        return f"http://127.0.0.1:{found.group(1)}"

    async def url(self, service: str, port: int) -> str:
        return await self.forward(f"service/{service}", port)

    async def pod_url(self, pod: str, port: int) -> str:
        return await self.forward(f"pod/{pod}", port)

    async def exec(self, pod: str, container: str, argv: list[str]) -> str:
        done = await asyncio.to_thread(
            subprocess.run, [kubectl(), "--kubeconfig", KUBECONFIG, "-n", NAMESPACE, "exec",
                             pod, "-c", container, "--", *argv],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"kubectl exec {pod}: {done.stderr[-2000:]}"
        return done.stdout

    async def secret(self, name: str, data: dict[str, str]) -> None:
        await self.client.apply({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": name, "namespace": NAMESPACE},
                                 "stringData": data})

    async def clean(self) -> None:
        for forward in self.forwards:
            forward.terminate()
            forward.wait()
        for kind, name in CREATED:
            await self.client.delete(kind, NAMESPACE, name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world():
    from fermi_extension.backends.kubernetes.kube_client import KubeClient

    chosen, jobs_dir = images(), Path(required("FERMI_TEST_JOBS_DIR"))
    client = await KubeClient.connect(KUBECONFIG)
    place = ClusterPlace(client, chosen, jobs_dir)
    try:
        place.tracking = await scenarios.start_tracking(place)
        yield place
    finally:
        try:
            await place.clean()
        finally:
            await client.close()
