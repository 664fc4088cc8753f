"""What the Kubernetes backend's pods are for, as scenarios that run wherever pods run: with
``podman kube play`` as the kubelet behind the API stand-in (``tests/containers/
test_kube_play.py``), or on a real cluster (``tests/kube/test_real_cluster.py``).

A scenario takes a ``Place`` (where pods run, how the test reaches a Service, which image pods
use) and drives the backend as the control plane does; the tests assert on what comes back.

- ``start_tracking``: a real MLflow tracking server as the Deployment + Service
  ``fermi-tracking`` (port 5000), the in-cluster address job and model-server pods are given
  (``Cluster.tracking_uri``). On a platform the hub runs it; here the scenario does, so nothing
  but MLflow answers there.
- ``train``: the job's pod runs a notebook that logs a metric and a model (registered as a new
  version) into the run the control plane created, and the backend reports its outcome.
- ``serve``: a model-server revision (Deployment, Service, init container ``fetch-model`` that
  fetches the version from the tracking server) until its pods are ready.
- ``start_router``: the chart's router (``hub_config/helm/extras.yaml``) reading the routes the
  backend publishes into the ConfigMap ``fermi-routes``.
- ``split``: ≥ 1,000 V2 ``infer`` requests through the router, counted by the model version
  that answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter
from pathlib import Path

import httpx
import yaml

from fermi_extension.paths import shipped

from ..conformance.drivers import notebook

MODEL = "wine"
INFER = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                     "data": [5.1, 3.5, 1.4, 0.2]}]}
ROUTER_TOKEN = "router-admin-token-for-tests"
API_KEY = "fermi-test-api-key"

# the training job: a metric and a model into the run it was given, registered as MODEL
TRAINS = notebook(
    "import mlflow, mlflow.sklearn\n"
    "from sklearn.datasets import load_iris\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "X, y = load_iris(return_X_y=True, as_frame=True)\n"
    "model = LogisticRegression(max_iter=300).fit(X, y)\n"
    "mlflow.log_metric('accuracy', model.score(X, y))\n"
    f"mlflow.sklearn.log_model(model, name='model', registered_model_name={MODEL!r},\n"
    "                         input_example=X[:2])\n"
    "print('trained', model.score(X, y))")


class Place:
    """Where pods run. Subclasses say how the test reaches a Service and what pods mount."""

    namespace = "fermi"
    image = ""  # the image with Fermi that jobs, model servers, router and tracking run
    kubeconfig = ""
    jobs_dir: Path  # the jobs claim (fermi-jobs) as this machine sees it

    @property
    def client(self):  # a KubeClient on the cluster (the API stand-in or a real one)
        raise NotImplementedError

    async def url(self, service: str, port: int) -> str:
        """A base URL at which the test reaches port ``port`` of the Service ``service``."""
        raise NotImplementedError

    async def secret(self, name: str, data: dict[str, str]) -> None:
        """Create the Secret ``name`` as pods mounting it will see it."""
        raise NotImplementedError

    def diagnosis(self) -> str:
        """What went wrong where pods run, for a failure's message ("" when nothing known)."""
        return ""

    def failed(self) -> bool:
        """Whether pods can no longer come up (waiting longer is pointless)."""
        return False

    def job_backend(self, **traits):
        from fermi_extension.backends.kubernetes.jobs import KubeJobBackend

        return KubeJobBackend(kubeconfig=self.kubeconfig, namespace=self.namespace, kueue="off",
                              **traits)

    def serving_backend(self, serving_dir: Path, **traits):
        from fermi_extension.backends.kubernetes.serving import KubeServingBackend

        return KubeServingBackend(kubeconfig=self.kubeconfig, namespace=self.namespace,
                                  mode="deployments", serving_dir=str(serving_dir),
                                  serving_image=self.image, router_token=ROUTER_TOKEN, **traits)

    def runtime(self):
        from ..conformance.drivers import default_runtime

        return default_runtime().model_copy(update={"image_reference": self.image, "gpu": 0})


async def until(predicate, what, timeout: float, period: float = 0.5, place=None):
    """Until ``await predicate()`` is truthy (its value), or fail saying ``what`` never came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert not (place and place.failed()), f"{what() if callable(what) else what}: failed"
        assert loop.time() < deadline, \
            f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}"
        await asyncio.sleep(period)


async def deployment_ready(place: Place, name: str, timeout: float) -> None:
    async def ready():
        obj = await place.client.get("Deployment", place.namespace, name)
        wanted = (obj or {}).get("spec", {}).get("replicas", 1)
        return obj and (obj.get("status") or {}).get("readyReplicas") == wanted

    await until(ready, lambda: f"Deployment {name} to be ready ({place.diagnosis()})", timeout,
                place=place)


# -- the tracking server ----------------------------------------------------------------------


def tracking_objects(place: Place) -> list[dict]:
    labels = {"app.kubernetes.io/component": "tracking-for-tests"}
    meta = {"name": "fermi-tracking", "namespace": place.namespace, "labels": labels}
    server = {
        "name": "mlflow", "image": place.image,
        "command": ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1",
                    "--backend-store-uri", "sqlite:////data/mlflow.db", "--serve-artifacts",
                    "--artifacts-destination", "/data/artifacts",
                    # pods name it fermi-tracking(:5000), the test by the address it reaches
                    "--allowed-hosts", "*"],
        # MLflow's background job runner restarts the server every few seconds in a 1 GiB pod
        # (and costs ~2.6 GB for nothing here, FACTS.md): off, as the platform runs it
        "env": [{"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"}],
        "ports": [{"containerPort": 5000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 5000}, "periodSeconds": 2},
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "securityContext": {"runAsUser": 1000},
                "containers": [server], "volumes": [{"name": "data", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 5000,
                                                 "targetPort": 5000}]}},
    ]


async def start_tracking(place: Place, timeout: float = 180) -> str:
    """The tracking server's URL for the test, once it answers."""
    for obj in tracking_objects(place):
        await place.client.apply(obj)
    await deployment_ready(place, "fermi-tracking", timeout)
    return await place.url("fermi-tracking", 5000)


def mlflow_api(tracking: str, endpoint: str, body: dict | None = None, **params) -> dict:
    url = f"{tracking}/api/2.0/mlflow/{endpoint}"
    response = httpx.post(url, json=body, timeout=30) if body is not None else \
        httpx.get(url, params=params, timeout=30)
    assert response.status_code == 200, (endpoint, response.status_code, response.text)
    return response.json()


# -- the training job -------------------------------------------------------------------------


async def train(place: Place, tracking: str, nb: dict = TRAINS, timeout: float = 300):
    """Run ``nb`` as a job the way the control plane does (its MLflow run created first, handed
    to the pod); (outcome, run id, JobFiles)."""
    from fermi_extension.jobs.backend import JobLaunch
    from fermi_extension.jobs.files import JobFiles

    experiment = mlflow_api(tracking, "experiments/create",
                            {"name": f"fermi-test-{uuid.uuid4().hex[:8]}"})["experiment_id"]
    run = mlflow_api(tracking, "runs/create", {"experiment_id": experiment})["run"]["info"]
    job_id = uuid.uuid4().hex[:12]
    files = JobFiles(place.jobs_dir / job_id)
    files.root.mkdir(parents=True)
    files.snapshot.write_text(json.dumps(nb))
    backend = place.job_backend()
    await backend.start()
    try:
        env = {"MLFLOW_RUN_ID": run["run_id"], "MLFLOW_EXPERIMENT_ID": experiment}
        handle = await backend.launch(JobLaunch(job_id, "alice", files, place.runtime(), {}, env))
        try:
            outcome = await asyncio.wait_for(backend.wait(handle, files, timeout), timeout + 60)
        finally:
            await backend.kill(handle)
    finally:
        await backend.close()
    return outcome, run["run_id"], files


def run_of(tracking: str, run_id: str) -> dict:
    return mlflow_api(tracking, "runs/get", run_id=run_id)["run"]


def versions_of(tracking: str, run_id: str) -> list[dict]:
    found = mlflow_api(tracking, "model-versions/search", filter=f"name='{MODEL}'")
    return [v for v in found.get("model_versions", []) if v["run_id"] == run_id]


# -- model servers and the router -------------------------------------------------------------


async def serve(place: Place, backend, version: str, timeout: float = 240):
    """One replica of ``MODEL`` version ``version`` (its own revision), once ready."""
    from fermi_extension.deployments.backend import ReplicaLaunch

    launch = ReplicaLaunch(f"{MODEL}-v{version}-{uuid.uuid4().hex[:6]}", MODEL, MODEL, version,
                           backend.model_dir(MODEL, version), "auto", place.runtime())
    handle = await backend.start_replica(launch)

    async def ready():
        return await backend.ready(handle)

    await until(ready, lambda: f"the model server of version {version} to be ready "
                               f"({place.diagnosis()})", timeout, place=place)
    return handle


def router_objects(place: Place) -> list[dict]:
    """The chart's router Deployment and Service, in ``place``'s namespace and image."""
    objects = [o for o in yaml.safe_load_all((shipped("hub_config") / "helm" / "extras.yaml")
                                             .read_text()) if o]
    router = [o for o in objects if o["metadata"]["name"] == "fermi-router"]
    for obj in router:
        obj["metadata"]["namespace"] = place.namespace
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get(
                "containers", []):
            container["image"] = place.image
    return router


async def start_router(place: Place, timeout: float = 120) -> str:
    """The router's public URL for the test, once it listens."""
    await place.secret("fermi-router-token", {"token": ROUTER_TOKEN})
    for obj in router_objects(place):
        await place.client.apply(obj)
    await deployment_ready(place, "fermi-router", timeout)
    port = next(p for o in router_objects(place) if o["kind"] == "Deployment"
                for c in o["spec"]["template"]["spec"]["containers"] for p in c["ports"]
                if p["name"] == "http")["containerPort"]
    return await place.url("fermi-router", port)


def routes(generation: int, revisions: dict[str, tuple[object, int]]) -> dict:
    """The routing table the deployment controller publishes: one deployment ``MODEL`` whose
    revisions (name → (replica handle, traffic percent)) are reached by an API key."""
    return {"generation": generation, "deployments": {MODEL: {
        "owner": "alice", "admins_allowed": False,
        "key_hashes": [hashlib.sha256(API_KEY.encode()).hexdigest()],
        "revisions": [{"name": name, "traffic_percent": percent, "replicas": [
            {"id": handle.name, "url": handle.url, "state": "ready"}]}
            for name, (handle, percent) in revisions.items()]}}}


async def split(router: str, requests: int, concurrency: int = 8) -> Counter:
    """``requests`` V2 infer calls through the router: how many each model version answered."""
    counts: Counter = Counter()
    queue = iter(range(requests))

    async def caller(client: httpx.AsyncClient) -> None:
        for _ in queue:
            response = await client.post(f"{router}/{MODEL}/v2/models/{MODEL}/infer",
                                         json=INFER, headers={"X-API-Key": API_KEY})
            assert response.status_code == 200, (response.status_code, response.text)
            counts[response.json()["model_version"]] += 1

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(caller(client) for _ in range(concurrency)))
    return counts


async def answers(router: str) -> bool:
    """Whether one infer call through the router is answered (its table is in force)."""
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            response = await client.post(f"{router}/{MODEL}/v2/models/{MODEL}/infer",
                                         json=INFER, headers={"X-API-Key": API_KEY})
        except httpx.HTTPError:
            return False
    return response.status_code == 200


async def until_split_follows(router: str, version: str, timeout: float = 30) -> None:
    """Until every answer comes from ``version`` (a table routing all traffic to it applied)."""
    async def only():
        counts = await split(router, 20, concurrency=2)
        return set(counts) == {version}

    await until(only, f"the router to send all traffic to version {version}", timeout)


def binomial_tolerance(n: int, p: float, sigmas: float = 4) -> float:
    """The share's tolerance: ``sigmas`` standard deviations of a binomial share over ``n``."""
    return sigmas * (p * (1 - p) / n) ** 0.5
