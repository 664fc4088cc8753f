"""The Kubernetes backend's pods, run for real: ``podman kube play`` is the kubelet
(``tests/kube/kubelet.py``) behind the API stand-in, and the scenarios are the ones the
real-cluster suite runs (``tests/kube/scenarios.py``).

What runs for real: the backend (KubeJobBackend, KubeServingBackend) over the real client and
HTTP to the stand-in; every pod, in podman containers of the official image of this source tree
(job entry point → papermill → kernel; MLflow's server; the init container fetching a model
version; the model server; the chart's router), with its resource limits and non-root user;
real HTTP from the test to the pods and between pods (by the Service names the objects use);
the ConfigMap ``fermi-routes`` reaching the router as a kubelet updates a ConfigMap volume.
What is played rather than run: the API server and controllers (kmock + ``FakeCluster``: a
Job's pod, its status from the container's exit code; a Deployment's pods and readyReplicas
from their readiness probe, run from this machine), Service DNS (/etc/hosts entries to the
pod's IP), volumes (host folders; see the kubelet's module docstring for each translation).

One world per module (stand-in, kubelet, tracking server, the trained model): the tests read
it in order, as one user's day goes (train, serve, split traffic).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

pytest.importorskip("kmock")

from tests.kube import scenarios  # noqa: E402
from tests.kube.kubelet import AtomicFolder, Kubelet, Node, PodmanCluster  # noqa: E402

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

CANARY = 20  # percent of traffic to version 2
REQUESTS = 1000


class PodmanPlace(scenarios.Place):
    """Pods run by ``podman kube play`` behind the API stand-in; the test reaches a Service at
    its pod's IP on podman's network (this machine routes to it)."""

    def __init__(self, cluster: PodmanCluster, image: str, jobs_dir):
        self.cluster, self.image, self.jobs_dir = cluster, image, jobs_dir
        self.kubeconfig = str(cluster.kubeconfig)

    @property
    def client(self):
        return self.cluster.client

    async def url(self, service: str, port: int) -> str:
        aliases = self.cluster.aliases()
        ip = next(a["ip"] for a in aliases if service in a["hostnames"])
        return f"http://{ip}:{port}"

    async def secret(self, name: str, data: dict[str, str]) -> None:
        # the stand-in keeps no Secrets: the kubelet's folder is written as it would be
        AtomicFolder(self.cluster.kubelet.node.config_folder("secrets", name)).write(data)

    def failed(self) -> bool:
        return bool(self.cluster.errors)

    def diagnosis(self) -> str:
        pods = self.cluster.kubelet.node.root / "pods"
        return "; ".join(self.cluster.errors) or f"pods' YAML and logs: {pods}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory, engine, official_image):
    root = tmp_path_factory.mktemp("kube-play")
    jobs = root / "jobs"
    jobs.mkdir()
    node = Node(root / "node", claims={"fermi-jobs": jobs})
    kubelet = Kubelet(node, engine.env())
    started = time.monotonic()
    async with PodmanCluster(jobs, kubelet) as cluster:
        cluster.write_kubeconfig(root / "kubeconfig")
        place = PodmanPlace(cluster, official_image.reference, jobs)
        place.tracking = await scenarios.start_tracking(place)
        yield place
    print(f"kube play module world: {time.monotonic() - started:.0f} s")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(world):
    return await scenarios.train(world, world.tracking)


async def test_the_training_jobs_pod_runs_the_notebook_to_succeeded_and_logs_metric_and_model(
        world, trained):
    outcome, run_id, files = trained
    assert (outcome.status, outcome.lost) == ("succeeded", False), (
        outcome, files.log.read_text() if files.log.exists() else "no log")
    # the pod's own papermill wrote the output next to the snapshot (the shared claim)
    assert files.output.exists()
    run = scenarios.run_of(world.tracking, run_id)
    assert run["info"]["status"] == "FINISHED"  # ended by the entry point, from papermill's end
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    assert metrics["accuracy"] > 0.9
    versions = scenarios.versions_of(world.tracking, run_id)
    assert [v["version"] for v in versions] == ["1"], versions


async def test_a_failing_notebook_fails_the_pod_and_the_job_says_why(world):
    outcome, run_id, files = await scenarios.train(
        world, world.tracking, scenarios.notebook("raise ValueError('no data today')"))
    assert outcome.status == "failed" and "no data today" in outcome.reason, outcome
    assert scenarios.run_of(world.tracking, run_id)["info"]["status"] == "FAILED"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serving(world, trained, tmp_path_factory):
    """Versions 1 and 2 of the trained model served, each its own revision (Deployment)."""
    _, run_id, _ = trained
    first = scenarios.versions_of(world.tracking, run_id)[0]
    # version 2: the same model files registered again (what a retraining would register)
    scenarios.mlflow_api(world.tracking, "model-versions/create",
                         {"name": scenarios.MODEL, "source": first["source"], "run_id": run_id,
                          "model_id": first["source"].removeprefix("models:/")})
    backend = world.serving_backend(tmp_path_factory.mktemp("serving"))
    await backend.start()
    handles = {}
    for version in ("1", "2"):
        handles[version] = await scenarios.serve(world, backend, version)
    yield backend, handles
    await backend.close(stop_all=False)


async def test_the_model_server_pod_fetches_its_version_and_answers_v2_infer(world, serving):
    import httpx

    backend, handles = serving
    name = handles["1"].name.split("/")[0]
    url = await world.url(name, 8080)
    response = httpx.post(f"{url}/v2/models/{scenarios.MODEL}/infer", json=scenarios.INFER,
                          timeout=10)
    # only the router may call a replica: its key is the one the backend gave the pod
    assert response.status_code == 401
    from fermi_extension.serving.replica_key import replica_key

    key = replica_key(scenarios.ROUTER_TOKEN, handles["1"].url)
    response = httpx.post(f"{url}/v2/models/{scenarios.MODEL}/infer", json=scenarios.INFER,
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model_name"], answer["model_version"]) == (scenarios.MODEL, "1")
    assert answer["outputs"][0]["data"] == [0]  # iris setosa


async def test_the_router_pod_splits_traffic_in_the_canary_ratio_and_follows_new_weights(
        world, serving):
    backend, handles = serving
    backend.publish(scenarios.routes(1, {"stable": (handles["1"], 100 - CANARY),
                                         "canary": (handles["2"], CANARY)}))
    await backend._publishing
    router = await scenarios.start_router(world)
    await scenarios.until(lambda: scenarios.answers(router), "the router to route", 30)
    counts = await scenarios.split(router, REQUESTS)
    share = counts["2"] / REQUESTS
    tolerance = scenarios.binomial_tolerance(REQUESTS, CANARY / 100)  # 4 σ: ±5.1 points
    print(f"canary split over {REQUESTS}: {dict(counts)} (share {share:.3f} ± {tolerance:.3f})")
    assert sum(counts.values()) == REQUESTS and set(counts) == {"1", "2"}
    assert abs(share - CANARY / 100) <= tolerance, counts
    # the backend publishes new weights (the canary promoted): the router follows, no restart
    backend.publish(scenarios.routes(2, {"stable": (handles["1"], 0),
                                         "canary": (handles["2"], 100)}))
    await backend._publishing
    await scenarios.until_split_follows(router, "2")
