"""The Kubernetes backend's pods, run for real: ``podman kube play`` is the kubelet
(``tests/kube/kubelet.py``) behind the API stand-in, and the scenarios are the ones the
real-cluster suite runs: the same tests (``tests/kube/suite.py``) of the same scenarios
(``tests/kube/scenarios.py``), in this module's world.

What runs for real: the backend (KubeJobBackend, KubeServingBackend) over the real client and
HTTP to the stand-in; FermiKubeSpawner's start(), poll() and stop() of a dev server for a
catalogue profile × image (KubeSpawner's own home claim, Pod, and watches of pods and events,
with the hub's own kubeconfig); every pod, in podman containers of the images of this source
tree (the python image for jobs and dev servers; the model-server image for the model server
and its init container fetching a model version; the router image for the chart's router; the
hub image for MLflow's server and for the JupyterHub the dev server checks in with), each pulled
by the name its object gives it (``Node.images``), with its resource limits and non-root user;
real HTTP from the test to the pods and between pods (by the Service names the objects use);
the ConfigMap ``fermi-routes`` reaching the router as a kubelet updates a ConfigMap volume.
What is played rather than run: the API server and controllers (kmock + ``FakeCluster``: a
Job's pod, its status from the container's exit code; a Deployment's pods and readyReplicas
from their readiness probe, run from this machine; a Pod's status from its running
containers), Service DNS (/etc/hosts entries to the pod's IP), volumes (host folders; see the
kubelet's module docstring for each translation).

One world per module (stand-in, kubelet, tracking server, the trained model), which the tests
of ``tests/kube/suite.py`` read in order, as one user's day goes. Every API call is recorded as
RBAC sees it (``tests/kube/rbac.py``): the control plane's must be granted by the chart's
``rbac.yaml``, KubeSpawner's by Zero to JupyterHub's hub Role (checked at the session's end, and
KubeSpawner's here by the last test).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

pytest.importorskip("kmock")

from tests.kube import scenarios  # noqa: E402
from tests.kube.kubelet import AtomicFolder, Kubelet, Node, PodmanCluster  # noqa: E402
from tests.kube.rbac import api_calls_granted  # noqa: E402,F401 (checked at the end)
from tests.kube.rbac import SPAWNER_TOKEN, Call, Grants, ungranted  # noqa: E402
from tests.kube.simulator import kubeconfig_for  # noqa: E402
from tests.kube.suite import *  # noqa: E402,F401,F403 (the tests, run in this world)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]


class PodmanPlace(scenarios.Place):
    """Pods run by ``podman kube play`` behind the API stand-in; the test reaches a Service or
    a pod at the pod's IP on podman's network (this machine routes to it)."""

    def __init__(self, cluster: PodmanCluster, images: dict[str, str], jobs_dir):
        self.cluster, self.images, self.jobs_dir = cluster, images, jobs_dir
        self.kubeconfig = str(cluster.kubeconfig)

    @property
    def client(self):
        return self.cluster.client

    async def url(self, service: str, port: int) -> str:
        aliases = self.cluster.aliases()
        ip = next(a["ip"] for a in aliases if service in a["hostnames"])
        return f"http://{ip}:{port}"

    async def pod_url(self, pod: str, port: int) -> str:
        found = await self.client.get("Pod", self.namespace, pod)
        return f"http://{found['status']['podIP']}:{port}"

    async def exec(self, pod: str, container: str, argv: list[str]) -> str:
        return await asyncio.to_thread(self.cluster.kubelet.exec, pod, container, argv)

    async def secret(self, name: str, data: dict[str, str]) -> None:
        # the stand-in keeps no Secrets: the kubelet's folder is written as it would be
        AtomicFolder(self.cluster.kubelet.node.config_folder("secrets", name)).write(data)

    def failed(self, about: str) -> bool:
        return about in self.cluster.errors

    def diagnosis(self) -> str:
        pods = self.cluster.kubelet.node.root / "pods"
        return "; ".join(self.cluster.errors.values()) or f"pods' YAML and logs: {pods}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory, engine, official_image, platform_images):
    root = tmp_path_factory.mktemp("kube-play")
    jobs = root / "jobs"
    jobs.mkdir()
    named = scenarios.chart_images()  # what the objects name; the node has them built here
    node = Node(root / "node", claims={"fermi-jobs": jobs},
                images={named[name]: built.reference for name, built in platform_images.items()})
    kubelet = Kubelet(node, engine.env())
    started = time.monotonic()
    async with PodmanCluster(jobs, kubelet) as cluster:
        cluster.write_kubeconfig(root / "kubeconfig")
        place = PodmanPlace(cluster, {"python": official_image.reference, **named}, jobs)
        # KubeSpawner calls as the hub, told apart from the control plane for the RBAC record
        place.spawner_kubeconfig = str(kubeconfig_for(cluster.url, root / "hub.kubeconfig",
                                                      SPAWNER_TOKEN))
        place.tracking = await scenarios.start_tracking(place)
        yield place
    print(f"kube play module world: {time.monotonic() - started:.0f} s")


async def test_zero_to_jupyterhubs_hub_role_grants_kubespawners_calls(world, dev_server):
    calls = world.cluster.emulator.spawner_calls
    starting = {Call(verb, "", resource, world.namespace) for verb, resource in [
        ("create", "persistentvolumeclaims"), ("create", "pods"), ("list", "pods"),
        ("watch", "pods"), ("list", "events"), ("watch", "events")]}
    assert starting <= set(calls.calls), sorted(calls.calls)  # the start was recorded
    missing = ungranted(calls, Grants.of_hub_role(world.namespace))
    assert not missing, "Zero to JupyterHub's hub Role does not grant:\n" + "\n".join(missing)
