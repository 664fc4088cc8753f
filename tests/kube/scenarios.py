"""What the Kubernetes backend's pods are for, as scenarios that run wherever pods run: with
``podman kube play`` as the kubelet behind the API stand-in (``tests/containers/
test_kube_play.py``), or on a real cluster (``tests/kube/test_real_cluster.py``). Both suites
call the same functions here; only ``Place`` differs.

A scenario takes a ``Place`` (where pods run, how the test reaches a Service or a pod, which
image each kind of pod runs) and drives the backend as the control plane does; the ``check_*``
functions assert what a user relies on.

- ``start_tracking``: a real MLflow tracking server, from the hub image, as the Deployment +
  Service ``fermi-tracking`` (port 5000), the in-cluster address job and model-server pods are
  given (``TRACKING``, passed to the backends explicitly). On a platform the hub runs it; here
  the scenario does, so nothing but MLflow answers there.
- ``train``: the job's pod runs a notebook that logs a metric and a model (registered as a new
  version) into the run the control plane created, and the backend reports its outcome.
- ``serving``: versions 1 and 2 of the trained model, each a model-server revision (Deployment,
  Service, init container ``fetch-model`` fetching the version from the tracking server),
  until their pods are ready.
- ``start_router``: the chart's router (``hub_config/helm/extras.yaml``) reading the routes the
  backend publishes into the ConfigMap ``fermi-routes``; ``check_canary_split`` sends ≥ 1,000 V2
  ``infer`` requests through it.
- ``dev_server``: a dev server of a catalogue profile × image, started as the hub starts it —
  FermiKubeSpawner.start(), KubeSpawner's own: the user's home claim, the Pod, its watch of pods
  and events until the pod runs — with a real JupyterHub (hub image) behind the Service ``hub``
  as the hub API the server checks in with and asks about tokens; stopped by
  FermiKubeSpawner.stop() (``check_stopping_the_dev_server``). KubeSpawner calls the API with the
  hub's kubeconfig (``Place.spawner_kubeconfig``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import yaml

from fermi_extension import __version__
from fermi_extension.backends.kubernetes.kube_client import Kind
from fermi_extension.paths import shipped

from ..conformance.drivers import notebook

MODEL = "wine"
INFER = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                     "data": [5.1, 3.5, 1.4, 0.2]}]}
ROUTER_TOKEN = "router-admin-token-for-tests"
API_KEY = "fermi-test-api-key"
# where pods reach MLflow here: the scenario's own tracking server (start_tracking), given to
# the backends explicitly, whatever KubernetesSettings.cluster_tracking_uri defaults to
TRACKING = "http://fermi-tracking:5000"
CANARY = 20  # percent of traffic to version 2
REQUESTS = 1000

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


def chart_images() -> dict[str, str]:
    """The platform's images as the chart and the settings name them (what a cluster pulls):
    hub (values.yaml), router (extras.yaml), model-server (KubernetesSettings.serving_image)."""
    from fermi_extension.backends.kubernetes.settings import KubernetesSettings

    helm = shipped("hub_config") / "helm"
    hub = yaml.safe_load((helm / "values.yaml").read_text())["hub"]["image"]
    router = next(c["image"] for o in chart_objects("fermi-router") if o["kind"] == "Deployment"
                  for c in o["spec"]["template"]["spec"]["containers"])
    return {"hub": f"{hub['name']}:{hub['tag']}", "router": router,
            "model-server": KubernetesSettings().serving_image}


class Place:
    """Where pods run. Subclasses say how the test reaches a Service or a pod, and what runs in
    a pod's container."""

    namespace = "fermi"
    # the image each kind of pod runs, as its object names it: "python" (jobs, dev servers),
    # "hub" (the tracking server, the hub API), "router", "model-server"
    images: dict[str, str]
    kubeconfig = ""  # the control plane's (its backends')
    spawner_kubeconfig = ""  # the hub's, with which KubeSpawner starts and stops dev servers
    jobs_dir: Path  # the jobs claim (fermi-jobs) as this machine sees it
    start_timeout = 240.0  # seconds for pods to come up (a cluster may pull images first)
    sync_timeout = 30.0  # seconds for a ConfigMap change to reach a mounted volume
    tracking = ""  # the tracking server's URL for the test (start_tracking)

    @property
    def client(self):  # a KubeClient on the cluster (the API stand-in or a real one)
        raise NotImplementedError

    async def url(self, service: str, port: int) -> str:
        """A base URL at which the test reaches port ``port`` of the Service ``service``."""
        raise NotImplementedError

    async def pod_url(self, pod: str, port: int) -> str:
        """A base URL at which the test reaches port ``port`` of the pod ``pod``."""
        raise NotImplementedError

    async def exec(self, pod: str, container: str, argv: list[str]) -> str:
        """Run ``argv`` in a running container of a pod (as its user); its output."""
        raise NotImplementedError

    async def secret(self, name: str, data: dict[str, str]) -> None:
        """Create the Secret ``name`` as pods mounting it will see it."""
        raise NotImplementedError

    def diagnosis(self) -> str:
        """What went wrong where pods run, for a failure's message ("" when nothing known)."""
        return ""

    def failed(self, about: str) -> bool:
        """Whether the pods of ``about`` (a Deployment, a Pod) can no longer come up (waiting
        longer is pointless)."""
        return False

    def job_backend(self, **traits):
        from fermi_extension.backends.kubernetes.jobs import KubeJobBackend

        return KubeJobBackend(kubeconfig=self.kubeconfig, namespace=self.namespace, kueue="off",
                              cluster_tracking_uri=TRACKING, **traits)

    def serving_backend(self, serving_dir: Path, **traits):
        from fermi_extension.backends.kubernetes.serving import KubeServingBackend

        return KubeServingBackend(kubeconfig=self.kubeconfig, namespace=self.namespace,
                                  mode="deployments", serving_dir=str(serving_dir),
                                  serving_image=self.images["model-server"],
                                  cluster_tracking_uri=TRACKING, router_token=ROUTER_TOKEN,
                                  **traits)

    def runtime(self):
        from ..conformance.drivers import default_runtime

        return default_runtime().model_copy(update={"image_reference": self.images["python"],
                                                    "gpu": 0})


async def until(predicate, what, timeout: float, period: float = 0.5, place=None,
                about: str = ""):
    """Until ``await predicate()`` is truthy (its value), or fail saying ``what`` never came
    (at once when ``place`` knows ``about`` failed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert not (place and place.failed(about)), \
            f"{what() if callable(what) else what}: failed"
        assert loop.time() < deadline, \
            f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}"
        await asyncio.sleep(period)


async def deployment_ready(place: Place, name: str) -> None:
    async def ready():
        obj = await place.client.get("Deployment", place.namespace, name)
        wanted = (obj or {}).get("spec", {}).get("replicas", 1)
        return obj and (obj.get("status") or {}).get("readyReplicas") == wanted

    await until(ready, lambda: f"Deployment {name} to be ready ({place.diagnosis()})",
                place.start_timeout, place=place, about=name)


def deployment(place: Place, name: str, component: str, container: dict, port: int,
               **pod_spec) -> list[dict]:
    """A one-replica Deployment of ``container`` (non-root) and its Service ``name`` at
    ``port``: how the scenarios run the servers a platform would run elsewhere."""
    labels = {"app.kubernetes.io/component": component}
    meta = {"name": name, "namespace": place.namespace, "labels": labels}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "securityContext": {"runAsUser": 1000}, "containers": [container],
                **pod_spec}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": labels, "ports": [{"name": "http", "port": port,
                                                 "targetPort": port}]}},
    ]


# -- the tracking server ----------------------------------------------------------------------


def tracking_objects(place: Place) -> list[dict]:
    server = {
        "name": "mlflow", "image": place.images["hub"],
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
    return deployment(place, "fermi-tracking", "tracking-for-tests", server, 5000,
                      volumes=[{"name": "data", "emptyDir": {}}])


async def start_tracking(place: Place) -> str:
    """The tracking server's URL for the test, once it answers."""
    for obj in tracking_objects(place):
        await place.client.apply(obj)
    await deployment_ready(place, "fermi-tracking")
    return await place.url("fermi-tracking", 5000)


def mlflow_api(tracking: str, endpoint: str, body: dict | None = None, **params) -> dict:
    url = f"{tracking}/api/2.0/mlflow/{endpoint}"
    response = httpx.post(url, json=body, timeout=30) if body is not None else \
        httpx.get(url, params=params, timeout=30)
    assert response.status_code == 200, (endpoint, response.status_code, response.text)
    return response.json()


# -- the training job -------------------------------------------------------------------------


async def train(place: Place, nb: dict = TRAINS):
    """Run ``nb`` as a job the way the control plane does (its MLflow run created first, handed
    to the pod); (outcome, run id, JobFiles)."""
    from fermi_extension.jobs.backend import JobLaunch
    from fermi_extension.jobs.files import JobFiles

    experiment = mlflow_api(place.tracking, "experiments/create",
                            {"name": f"fermi-test-{uuid.uuid4().hex[:8]}"})["experiment_id"]
    run = mlflow_api(place.tracking, "runs/create", {"experiment_id": experiment})["run"]["info"]
    job_id = uuid.uuid4().hex[:12]
    files = JobFiles(place.jobs_dir / job_id)
    files.root.mkdir(parents=True)
    files.snapshot.write_text(json.dumps(nb))
    backend = place.job_backend()
    await backend.start()
    timeout = place.start_timeout + 120  # the pod comes up, then the notebook runs
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


def check_trained(place: Place, trained) -> None:
    """The job succeeded; its output came back through the shared claim; its run in MLflow
    is finished by the entry point and holds the metric and version 1 of the model."""
    outcome, run_id, files = trained
    assert (outcome.status, outcome.lost) == ("succeeded", False), (
        outcome, files.log.read_text() if files.log.exists() else "no log")
    assert files.output.exists()  # the pod's own papermill wrote it next to the snapshot
    run = run_of(place.tracking, run_id)
    assert run["info"]["status"] == "FINISHED"  # ended by the entry point, from papermill's end
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    assert metrics["accuracy"] > 0.9
    versions = versions_of(place.tracking, run_id)
    assert [v["version"] for v in versions] == ["1"], versions


async def check_failing_notebook(place: Place) -> None:
    """A notebook that raises fails its pod; the job says why, its run is FAILED."""
    outcome, run_id, _ = await train(place, notebook("raise ValueError('no data today')"))
    assert outcome.status == "failed" and "no data today" in outcome.reason, outcome
    assert run_of(place.tracking, run_id)["info"]["status"] == "FAILED"


# -- model servers and the router -------------------------------------------------------------


async def serve(place: Place, backend, version: str):
    """One replica of ``MODEL`` version ``version`` (its own revision), once ready."""
    from fermi_extension.deployments.backend import ReplicaLaunch

    launch = ReplicaLaunch(f"{MODEL}-v{version}-{uuid.uuid4().hex[:6]}", MODEL, MODEL, version,
                           backend.model_dir(MODEL, version), "auto", place.runtime())
    handle = await backend.start_replica(launch)

    async def ready():
        return await backend.ready(handle)

    await until(ready, lambda: f"the model server of version {version} to be ready "
                               f"({place.diagnosis()})", place.start_timeout, place=place,
                about=handle.name.split("/")[0])
    return handle


@contextlib.asynccontextmanager
async def serving(place: Place, trained, serving_dir: Path):
    """Versions 1 and 2 of the trained model served, each its own revision (Deployment):
    (backend, {version: replica handle}); the replicas stopped afterwards."""
    _, run_id, _ = trained
    first = versions_of(place.tracking, run_id)[0]
    # version 2: the same model files registered again (what a retraining would register)
    mlflow_api(place.tracking, "model-versions/create",
               {"name": MODEL, "source": first["source"], "run_id": run_id,
                "model_id": first["source"].removeprefix("models:/")})
    backend = place.serving_backend(serving_dir)
    await backend.start()
    handles = {}
    try:
        for version in ("1", "2"):
            handles[version] = await serve(place, backend, version)
        yield backend, handles
    finally:
        for handle in handles.values():
            await backend.stop_replica(handle)
        await backend.close(stop_all=False)


async def check_model_server(place: Place, handle) -> None:
    """The model server fetched its version (init container) and answers V2 infer, to the
    router's key only."""
    from fermi_extension.backends.kubernetes.objects import MODEL_SERVER_PORT
    from fermi_extension.serving.replica_key import replica_key

    url = await place.url(handle.name.split("/")[0], MODEL_SERVER_PORT)
    infer = f"{url}/v2/models/{MODEL}/infer"
    async with httpx.AsyncClient(timeout=10) as client:
        # only the router may call a replica: its key is the one the backend gave the pod
        assert (await client.post(infer, json=INFER)).status_code == 401
        key = replica_key(ROUTER_TOKEN, handle.url)
        response = await client.post(infer, json=INFER,
                                     headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model_name"], answer["model_version"]) == (MODEL, "1")
    assert answer["outputs"][0]["data"] == [0]  # iris setosa


def chart_objects(name: str) -> list[dict]:
    """The objects named ``name`` in the chart's extras.yaml, as shipped."""
    objects = yaml.safe_load_all((shipped("hub_config") / "helm" / "extras.yaml").read_text())
    return [o for o in objects if o and o["metadata"]["name"] == name]


def router_objects(place: Place) -> list[dict]:
    """The chart's router Deployment and Service, in ``place``'s namespace and router image."""
    router = chart_objects("fermi-router")
    for obj in router:
        obj["metadata"]["namespace"] = place.namespace
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get(
                "containers", []):
            container["image"] = place.images["router"]
    return router


async def start_router(place: Place) -> str:
    """The router's public URL for the test, once it listens."""
    await place.secret("fermi-router-token", {"token": ROUTER_TOKEN})
    for obj in router_objects(place):
        await place.client.apply(obj)
    await deployment_ready(place, "fermi-router")
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


async def until_split_follows(router: str, version: str, timeout: float) -> None:
    """Until every answer comes from ``version`` (a table routing all traffic to it applied)."""
    async def only():
        counts = await split(router, 20, concurrency=2)
        return set(counts) == {version}

    await until(only, f"the router to send all traffic to version {version}", timeout)


def binomial_tolerance(n: int, p: float, sigmas: float = 4) -> float:
    """The share's tolerance: ``sigmas`` standard deviations of a binomial share over ``n``."""
    return sigmas * (p * (1 - p) / n) ** 0.5


async def publish(backend, table: dict) -> None:
    """Publish a routing table into the ConfigMap fermi-routes, as the controller does."""
    backend.publish(table)
    await backend._publishing


async def check_canary_split(place: Place, backend, handles: dict) -> None:
    """The router pod splits REQUESTS infer calls CANARY/100 to version 2 (within 4 σ), and
    follows new weights the backend publishes (the canary promoted) without a restart."""
    await publish(backend, routes(1, {"stable": (handles["1"], 100 - CANARY),
                                      "canary": (handles["2"], CANARY)}))
    router = await start_router(place)
    # the ConfigMap reaches the pod's volume within the kubelet's sync period
    await until(lambda: answers(router), "the router to route", place.sync_timeout)
    counts = await split(router, REQUESTS)
    share = counts["2"] / REQUESTS
    tolerance = binomial_tolerance(REQUESTS, CANARY / 100)  # 4 σ: ±5.1 points
    print(f"canary split over {REQUESTS}: {dict(counts)} (share {share:.3f} ± {tolerance:.3f})")
    assert sum(counts.values()) == REQUESTS and set(counts) == {"1", "2"}, counts
    assert abs(share - CANARY / 100) <= tolerance, counts
    await publish(backend, routes(2, {"stable": (handles["1"], 0),
                                      "canary": (handles["2"], 100)}))
    await until_split_follows(router, "2", place.sync_timeout)


# -- the dev server (FermiKubeSpawner's pod) --------------------------------------------------

CLAIMS = Kind("v1", "persistentvolumeclaims")  # not among the kinds the backend uses
DEV_USER = "ann"
DEV_CHOICE = {"profile": "cpu-small", "image": "python-local"}  # the seed catalogue's
DEV_LIMITS = {"cpu": 1.0, "memory": 2 * 1024**3}  # cpu-small: 1 CPU, 2 GiB
SERVER_TOKEN = "dev-server-token-for-tests"  # the hub gives the server its own token
USER_TOKENS = {DEV_USER: "ann-api-token-for-tests", "bob": "bob-api-token-for-tests"}
# what the hub process holds (the chart's hub.extraEnv, the proxy's and the hub's own
# secrets): the spawner builds the server's environment in that process, and none may reach it
HUB_SECRETS = {
    "FERMI_DB_URL": "postgresql+psycopg://fermi:db-password-for-tests@postgres.fermi.svc/fermi",
    "FERMI_ADMIN_TOKEN": "admin-token-for-tests",
    "FERMI_ROUTER_TOKEN": ROUTER_TOKEN,
    "CONFIGPROXY_AUTH_TOKEN": "proxy-token-for-tests",
    "JPY_COOKIE_SECRET": "c0ffee" * 10,
    "JUPYTERHUB_CRYPT_KEY": "crypt-key-for-tests",
}
HUB_CONFIG = f"""
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_port = 8081
c.JupyterHub.ip = "127.0.0.1"  # its proxy: nothing is reached through it here
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/cookie_secret"
c.JupyterHub.pid_file = "/srv/jupyterhub/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "/srv/jupyterhub/proxy.pid"
c.Authenticator.allowed_users = {set(USER_TOKENS)!r}
# the server's token is {DEV_USER}'s, as the hub makes it when it spawns; each user has an API token
c.JupyterHub.api_tokens = {{**{{token: user for user, token in {USER_TOKENS!r}.items()}},
                           {SERVER_TOKEN!r}: {DEV_USER!r}}}
"""


def hub_objects(place: Place) -> list[dict]:
    """A real JupyterHub (hub image) as the Deployment + Service ``hub`` at 8081, the names
    Zero to JupyterHub gives the hub API; its config from the ConfigMap ``fermi-test-hub``."""
    hub = {
        "name": "hub", "image": place.images["hub"],
        "command": ["jupyterhub", "--config", "/etc/jupyterhub/jupyterhub_config.py"],
        "workingDir": "/srv/jupyterhub",
        "ports": [{"containerPort": 8081}],
        "readinessProbe": {"httpGet": {"path": "/hub/health", "port": 8081},
                           "periodSeconds": 2},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/jupyterhub", "readOnly": True},
                         {"name": "state", "mountPath": "/srv/jupyterhub"}],
    }
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "fermi-test-hub", "namespace": place.namespace},
              "data": {"jupyterhub_config.py": HUB_CONFIG}}
    return [config, *deployment(place, "hub", "hub-for-tests", hub, 8081, volumes=[
        {"name": "config", "configMap": {"name": "fermi-test-hub"}},
        {"name": "state", "emptyDir": {}}])]


def platform_catalog(folder: Path, python_image: str) -> str:
    """A platform database with the seed catalogue whose python-local image is ``python_image``
    (pinned as `fermi images build` pins the image it built): its URL."""
    from fermi_extension.catalog.store import CatalogStore, load_catalog_file
    from fermi_extension.db import make_session_factory

    url = f"sqlite:///{folder / 'fermi.sqlite'}"
    catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
    data = catalog.model_dump(mode="json")
    reference, _, digest = python_image.partition("@")
    repository, tag = (reference, __version__) if digest else reference.rsplit(":", 1)
    image = next(i for i in data["images"] if i["slug"] == DEV_CHOICE["image"])
    image.update(reference=repository, versions=[
        {"tag": tag, "digest": digest or None, "labels": {"python": "3.11"}}])
    CatalogStore(make_session_factory(url)).seed_if_empty(type(catalog).model_validate(data))
    return url


class HubUser:
    """The hub's view of a user, as a spawner reads it."""

    admin = False
    groups: list = []

    def __init__(self, name: str, id: int = 1):
        self.name = self.escaped_name = name
        self.id = id
        self.url = f"/user/{name}/"


@contextlib.contextmanager
def hub_process(kubeconfig: str):
    """This process as the hub's: its secrets in the environment, and KubeSpawner's client
    configuration from ``kubeconfig`` (which it loads when constructed)."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner.clients import load_config

    before = {k: os.environ.get(k) for k in HUB_SECRETS}
    location = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ.update(HUB_SECRETS)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
    load_config.cache_clear()  # KubeSpawner loads it once per process: this hub's, not another's
    try:
        yield
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = location
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dev_spawner(place: Place, db_url: str):
    """FermiKubeSpawner configured as the chart configures it (values.yaml and the Zero to
    JupyterHub defaults it relies on: uid 1000, fsGid 100, a dynamic home volume at
    /home/jovyan, the hub at http://hub:8081), for DEV_USER, with the server's token."""
    from jupyterhub.objects import Hub, Server

    from fermi_spawner.kubernetes import FermiKubeSpawner

    spawner = FermiKubeSpawner(
        hub=Hub(base_url="/hub/"), user=HubUser(DEV_USER), platform_db_url=db_url,
        namespace=place.namespace, cmd=["jupyterhub-singleuser"],
        environment={"FERMI_API_URL": "http://fermi-control-plane.fermi.svc:10101/services/"
                                      "fermi/api", "FERMI_BACKEND": "kubernetes"},
        service_account="fermi-workload", uid=1000, fs_gid=100,
        hub_connect_url="http://hub:8081", start_timeout=int(place.start_timeout),
        storage_pvc_ensure=True, storage_capacity="1Gi",
        pvc_name_template="claim-{username}{servername}",
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/jovyan"}],
    )
    spawner.server = Server(base_url=f"/user/{DEV_USER}/")
    spawner.api_token = SERVER_TOKEN
    return spawner


class DevServer:
    """DEV_USER's server as FermiKubeSpawner started it: its spawner, its pod as the API holds
    it, and where the test reaches it."""

    def __init__(self, spawner, manifest: dict, url: str):
        self.spawner, self.manifest, self.url = spawner, manifest, url
        self.pod = manifest["metadata"]["name"]
        self.prefix = f"{url}/user/{DEV_USER}"

    async def answers(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(f"{self.prefix}/api")).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.asynccontextmanager
async def dev_server(place: Place, catalog_dir: Path):
    """DEV_USER's dev server of DEV_CHOICE, started as the hub starts it: the hub API up, then
    FermiKubeSpawner.start() (KubeSpawner's home claim and Pod, and its watch of pods and events
    until the pod runs), the server's address recorded as the hub records it, until the server
    answers; FermiKubeSpawner.stop() afterwards, whether or not a test stopped it already (a
    pod already gone is fine to KubeSpawner; the home claim is kept, as KubeSpawner keeps it)."""
    from fermi_spawner.kubernetes import FermiKubeSpawner

    for obj in hub_objects(place):
        await place.client.apply(obj)
    db_url = platform_catalog(catalog_dir, place.images["python"])
    await deployment_ready(place, "hub")  # the server checks in with the hub as it starts
    spawner = None
    try:
        with hub_process(place.spawner_kubeconfig):
            spawner = dev_spawner(place, db_url)
            spawner.user_options = dict(DEV_CHOICE)
            try:
                url = urlparse(await spawner.start())
            except Exception as error:
                raise AssertionError(f"FermiKubeSpawner.start() failed: {error!r} "
                                     f"({place.diagnosis()})") from error
        spawner.server.ip, spawner.server.port = url.hostname, url.port
        pod = await place.client.get("Pod", place.namespace, spawner.pod_name)
        server = DevServer(spawner, pod, await place.pod_url(spawner.pod_name, spawner.port))
        await until(server.answers, lambda: f"jupyterhub-singleuser to answer "
                                            f"({place.diagnosis()})",
                    place.start_timeout, place=place, about=server.pod)
        yield server
    finally:
        try:
            if spawner is not None:
                await spawner.stop()
        finally:  # KubeSpawner's watches of pods and events, shared by a hub's spawners
            await FermiKubeSpawner._stop_all_reflectors()


async def check_dev_server_serves_its_user_only(server: DevServer) -> None:
    """jupyterhub-singleuser answers under the user's prefix; its API wants a token the hub
    says is its user's: none is refused, another user's is refused, the user's own works."""
    contents = f"{server.prefix}/api/contents"
    async with httpx.AsyncClient(timeout=10) as client:
        version = await client.get(f"{server.prefix}/api")
        assert version.status_code == 200 and "version" in version.json(), version.text
        assert (await client.get(contents)).status_code == 403
        other = await client.get(contents, headers={"Authorization": f"token {USER_TOKENS['bob']}"})
        assert other.status_code == 403, other.text
        mine = await client.get(contents, headers={
            "Authorization": f"token {USER_TOKENS[DEV_USER]}"})
        assert mine.status_code == 200, mine.text


async def save_notebook(server: DevServer, name: str, text: str) -> None:
    """DEV_USER saves a file through the server's contents API (as JupyterLab does)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.put(f"{server.prefix}/api/contents/{name}", json={
            "type": "file", "format": "text", "content": text},
            headers={"Authorization": f"token {USER_TOKENS[DEV_USER]}"})
    assert response.status_code in (200, 201), response.text


# run in the server's container: what its jupyterhub-singleuser process is and may use
INSPECT = r"""
import json, os, pathlib
def read(path):
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None
pid = next(p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())
           and b"jupyterhub-singleuser" in pathlib.Path(f"/proc/{p}/cmdline").read_bytes())
status = dict(l.split(":", 1) for l in read(f"/proc/{pid}/status").splitlines())
environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
v2 = read("/sys/fs/cgroup/cpu.max")
quota, period = v2.split() if v2 else (read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                                       read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
print(json.dumps({
    "uid": status["Uid"].split(), "groups": status["Groups"].split(),
    "env": dict(e.decode().split("=", 1) for e in environ if b"=" in e),
    "cpus": None if quota in ("max", "-1") else int(quota) / int(period),
    "memory": read("/sys/fs/cgroup/memory.max") or read(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "mounts": [l.split()[4] for l in read("/proc/self/mountinfo").splitlines()],
    "home": sorted(os.listdir("/home/jovyan")),
}))
"""


async def inspect_dev_server(place: Place, server: DevServer) -> dict:
    container = server.manifest["spec"]["containers"][0]["name"]
    return json.loads(await place.exec(server.pod, container, ["python3", "-c", INSPECT]))


def check_dev_server_limits_user_and_environment(seen: dict) -> None:
    """The server runs within its profile's CPU and memory limits, as the non-root user (and
    fsGroup) the chart gives it, with its own token and none of the hub's secrets."""
    assert seen["cpus"] == DEV_LIMITS["cpu"], seen["cpus"]
    assert int(seen["memory"]) == DEV_LIMITS["memory"], seen["memory"]
    assert set(seen["uid"]) == {"1000"}, seen["uid"]  # real, effective, saved, filesystem
    assert "100" in seen["groups"], seen["groups"]  # fsGroup: the home volume's group
    env = seen["env"]
    assert env["JUPYTERHUB_API_TOKEN"] == SERVER_TOKEN
    leaked = {k for k in HUB_SECRETS if k in env} | {
        k for k, v in env.items() if v in HUB_SECRETS.values() or v in USER_TOKENS.values()}
    assert not leaked, leaked


def check_home_volume(seen: dict, saved: str) -> None:
    """The home folder is the user's volume (a mount of its own), where what they save lands."""
    assert "/home/jovyan" in seen["mounts"], seen["mounts"]
    assert saved in seen["home"], seen["home"]


async def check_stopping_the_dev_server(place: Place, server: DevServer) -> None:
    """The hub sees the server running (KubeSpawner's poll) until FermiKubeSpawner.stop(),
    which removes its pod: the Pod is gone, poll says the server ended, it no longer answers;
    the user's home claim stays for their next server."""
    assert await server.spawner.poll() is None
    await server.spawner.stop()
    assert await place.client.get("Pod", place.namespace, server.pod) is None
    assert await server.spawner.poll() is not None

    async def gone():
        return not await server.answers()

    await until(gone, "the stopped server to stop answering", place.start_timeout)
    claim = f"claim-{DEV_USER}"
    assert await place.client.get(CLAIMS, place.namespace, claim), f"{claim} is gone"
