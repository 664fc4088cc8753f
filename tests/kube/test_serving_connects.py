"""Serving connects the way Kubernetes wires it (issue 15, point 2): real processes, real HTTP.

- The router, run as the chart runs it (``hub_config/helm/extras.yaml``: ``--admin-host
  0.0.0.0``, its routes the ConfigMap ``fermi-routes`` mounted as a folder), reaches model
  servers at Service URLs as Kubernetes gives them: ``http://HOST`` (port 80, KServe's
  ``NAME-predictor``) and ``http://HOST:PORT`` (the port a Service declares). Anything else in
  the table is refused with its reason and the last good table kept.
- Its admin API answers on the pod's every address, and only with the token of its Secret; the
  embedded default's stays on 127.0.0.1.
- The ConfigMap updated as the kubelet updates it (``AtomicFolder``: ``..data`` swapped by one
  rename) is followed without a restart, even when the new file has the old one's size and mtime.
- KServe's storage initializer: the ClusterStorageContainer of ``hub_config/helm/kserve.yaml``
  (the object ``make_cluster_storage_container`` builds), run as KServe runs it, against a real
  MLflow tracking server, fills the folder a model server then serves; a version that is not
  there fails it with the reason on stderr.

Addresses. A port-less Service URL is port 80 of an address: as root, a model server binds
127.0.0.2:80 here, a loopback alias (Linux routes all of 127/8 to ``lo``; nothing leaves the
machine). The pod's "every address" is seen at 127.0.0.2 too: a socket bound to 127.0.0.1 alone
refuses connections there, one bound to 0.0.0.0 takes them, which is exactly the difference
between the two settings. Translated, since no cluster runs here: a Service's DNS name is
``localhost`` (a name the router resolves when it connects), and the tracking URI the storage
initializer is given in the cluster is the address of the MLflow server this module starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from fermi_extension.paths import shipped
from fermi_extension.processes import free_port, kill_tree, port_is_free, wait_for
from tests.kube.kubelet import AtomicFolder
from tests.serving.conftest import model_dir, wine  # noqa: F401 (fixtures)
from tests.serving.test_router import BEARER, RouterProcess, deployment, revision, routes
from tests.serving.test_server import Replica, tensor

ROOT = Path(__file__).resolve().parents[2]
PORTLESS = "http://127.0.0.2"  # a Service on port 80, as KServe's predictor URL names it
INFER = "/v2/models/wine/infer"
KSERVE = shipped("hub_config") / "helm" / "kserve.yaml"


def replica_entry(rid: str, url: str) -> dict:
    return {"id": rid, "url": url, "state": "ready"}


def canary(generation: int, v1_percent: int, urls: dict[str, str]) -> dict:
    """Deployment ``wine``: revision v1 (version 1's server) at ``v1_percent``, v2 the rest.
    Swapping 100/0 for 0/100 keeps the file's size."""
    return routes(generation, wine=deployment(
        revision("v1", v1_percent, replica_entry("wine-v1", urls["1"])),
        revision("v2", 100 - v1_percent, replica_entry("wine-v2", urls["2"]))))


def listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):  # noqa: F811
    """{"1": url, "2": url}: model version 1 behind the port-less URL, version 2 behind a
    declared port of a name, each keyed as the router keys it (from the url as written)."""
    if os.geteuid() != 0:
        pytest.skip("port 80 needs root")
    if not port_is_free(80, "127.0.0.2"):
        pytest.skip("port 80 of 127.0.0.2 is taken on this machine")
    logs = tmp_path_factory.mktemp("replicas")
    running = [Replica(model_dir, logs, version="1", keyed=True, url=PORTLESS),
               Replica(model_dir, logs, version="2", keyed=True,
                       url=f"http://localhost:{free_port()}")]
    try:
        for replica in running:
            replica.wait_ready()
        yield {version: replica.url for version, replica in zip(("1", "2"), running)}
    finally:
        for replica in running:
            replica.stop()


@pytest.fixture
def chart_router(tmp_path):
    """start(doc): the router as the chart runs it, its routes the link ``routes.json`` of a
    ConfigMap folder (``router.configmap``, an ``AtomicFolder``), its admin API on 0.0.0.0."""
    started = []

    def start(doc: dict) -> RouterProcess:
        configmap = AtomicFolder(tmp_path / "etc-fermi-routes")
        configmap.write({"routes.json": json.dumps(doc)})
        router = RouterProcess(tmp_path, None, admin_host="0.0.0.0",
                               routes=configmap.folder / "routes.json")
        router.configmap = configmap
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


def infer_through(router: RouterProcess, name: str, wine) -> dict:  # noqa: F811
    X, pipeline = wine
    rows = X.iloc[[0, 60, 130]]
    response = httpx.post(f"{router.url}/{name}{INFER}", headers=BEARER, timeout=10,
                          json={"inputs": [tensor(rows.to_numpy())]})
    assert response.status_code == 200, (response.text, router.output())
    body = response.json()
    assert body["outputs"][0]["data"] == pipeline.predict(rows).tolist()
    return body


# -- replicas at Service URLs ---------------------------------------------------------------------


def test_the_router_reaches_replicas_at_service_urls_with_and_without_a_port(servers, chart_router,
                                                                             wine):  # noqa: F811
    """``http://127.0.0.2`` is port 80, ``http://localhost:PORT`` that port. A keyed replica
    answers only the key of its url as written: a 200 through the router says the router
    dialled the right port and sent the key of the port-less url, not of ``...:80``."""
    router = chart_router(routes(
        bare=deployment(revision("r1", 100, replica_entry("bare-1", servers["1"]))),
        declared=deployment(revision("r1", 100, replica_entry("declared-1", servers["2"])))))
    assert infer_through(router, "bare", wine)["model_version"] == "1"
    assert infer_through(router, "declared", wine)["model_version"] == "2"
    stats = router.stats()["deployments"]
    assert stats["bare"]["replicas"]["bare-1"]["requests"] == 1
    assert stats["declared"]["replicas"]["declared-1"]["requests"] == 1
    assert stats["bare"]["errors"] == stats["declared"]["errors"] == 0
    # round the router, the replica at port 80 refuses a caller without its key
    assert httpx.post(f"{PORTLESS}{INFER}", json={}).status_code == 401


def test_any_other_replica_url_is_refused_with_its_reason_and_the_last_table_kept(
        servers, chart_router, wine):  # noqa: F811
    router = chart_router(canary(1, 100, servers))
    for generation, bad in enumerate(("https://127.0.0.2", "http://127.0.0.2/v2/models",
                                      "http://:8080"), start=2):
        router.configmap.write({"routes.json": json.dumps(canary(generation, 100, {
            "1": servers["1"], "2": bad}))})
        reason = ("replica 'wine-v2': url must be http://HOST or http://HOST:PORT (no path, "
                  f"query or credentials), not {bad!r}")
        assert wait_for(lambda: reason in router.output(), 5, 0.02), router.output()
        assert router.stats()["generation"] == 1
        assert infer_through(router, "wine", wine)["model_version"] == "1"


# -- the admin API on the pod's address ----------------------------------------------------------


def test_the_admin_api_answers_on_every_address_only_with_the_secrets_token(servers, chart_router,
                                                                            tmp_path):
    router = chart_router(canary(1, 100, servers))
    assert ("0.0.0.0", router.admin_port) in listening(router.process.pid)
    token = (tmp_path / "admin-token").read_text().strip()  # the file --admin-token-file names
    at_pod_address = f"http://127.0.0.2:{router.admin_port}"
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": f"Bearer {token}"}):
        refused = httpx.get(f"{at_pod_address}/stats", headers=headers)
        assert refused.status_code == 401, refused.text
        assert "Authorization: token <admin token>" in refused.json()["error"]
    stats = httpx.get(f"{at_pod_address}/stats", headers={"Authorization": f"token {token}"})
    assert stats.status_code == 200 and stats.json()["generation"] == 1


def test_the_embedded_defaults_admin_api_listens_on_127_0_0_1_only(servers, tmp_path):
    router = RouterProcess(tmp_path, canary(1, 100, servers))  # as the local backend starts it
    try:
        assert listening(router.process.pid) == {("127.0.0.1", router.port),
                                                 ("127.0.0.1", router.admin_port)}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.2:{router.admin_port}/healthz",
                      headers=router.admin_headers)
        assert router.stats()["generation"] == 1  # while 127.0.0.1 answers
    finally:
        router.stop()


# -- the ConfigMap swapped by the kubelet ---------------------------------------------------------


def test_the_router_follows_the_configmap_swapped_as_the_kubelet_swaps_it(servers, chart_router,
                                                                          wine):  # noqa: F811
    router = chart_router(canary(1, 100, servers))
    link = router.configmap.folder / "routes.json"
    assert link.is_symlink() and os.readlink(link) == "..data/routes.json"
    assert infer_through(router, "wine", wine)["model_version"] == "1"

    router.configmap.write({"routes.json": json.dumps(canary(2, 0, servers))})
    router.wait_generation(2)
    assert {infer_through(router, "wine", wine)["model_version"] for _ in range(20)} == {"2"}

    # The next swap lands while the router is paused, and the new file is given the old one's
    # mtime: same size, same mtime, another file. A router that compared those two alone would
    # keep routing to v2.
    before = os.stat(link)
    os.kill(router.process.pid, signal.SIGSTOP)
    try:
        router.configmap.write({"routes.json": json.dumps(canary(3, 100, servers))})
        os.utime(link, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(link)
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    finally:
        os.kill(router.process.pid, signal.SIGCONT)
    router.wait_generation(3, timeout=2)
    assert {infer_through(router, "wine", wine)["model_version"] for _ in range(20)} == {"1"}
    assert router.process.poll() is None and "Routes generation 3" in router.output()


# -- KServe's storage initializer -----------------------------------------------------------------


def test_kserve_yaml_holds_the_storage_container_the_backend_builds():
    from fermi_extension.backends.kubernetes.objects import Cluster, make_cluster_storage_container

    assert yaml.safe_load(KSERVE.read_text()) == make_cluster_storage_container(Cluster())


@pytest.fixture(scope="module")
def tracking(model_dir, tmp_path_factory):  # noqa: F811
    """A real MLflow tracking server (as ``tests/kube/scenarios.tracking_objects`` runs it in a
    pod) holding model ``wine`` version 1, registered from ``model_dir``; its URL."""
    data = tmp_path_factory.mktemp("tracking")
    url = f"http://127.0.0.1:{free_port()}"
    log = open(data / "mlflow.log", "w+b")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
         "--port", url.rsplit(":", 1)[1], "--workers", "1",
         "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(data / "artifacts")],
        # no background job runner (FACTS.md: ~2.6 GB for nothing here)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=data,
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(lambda: server.poll() is not None or answers(), 60, 0.1) and answers(), \
            (log.seek(0), log.read().decode(errors="replace"))[1]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url, registry_uri=url)
        run = client.create_run(client.create_experiment("serving-connects")).info
        client.log_artifacts(run.run_id, str(model_dir), "model")
        client.create_registered_model("wine")
        client.create_model_version("wine", f"{run.artifact_uri}/model", run.run_id)
        yield url
    finally:
        kill_tree(server.pid, grace=15)  # with the uvicorn process it forks
        server.wait()
        log.close()


def storage_initializer(tracking_url: str, *args: str) -> subprocess.CompletedProcess:
    """kserve.yaml's container run as KServe runs it: its command (``python`` is this
    environment's, as it is the image's), KServe's arguments, its environment as the kubelet
    gives it (the in-cluster tracking URI replaced by the test server's address; a value read
    from a pod annotation through the downward API is empty, as for a pod without it: the server
    here is MLflow itself, which checks no token)."""
    container = yaml.safe_load(KSERVE.read_text())["spec"]["container"]
    command = container["command"]
    assert command[0] == "python"
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert all(set(e.get("valueFrom", {})) <= {"fieldRef"} for e in container["env"])
    env["MLFLOW_TRACKING_URI"] = tracking_url
    return subprocess.run(
        [sys.executable, *command[1:], *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, **env})


def test_the_storage_initializer_fetches_what_a_model_server_then_serves(tracking, model_dir,
                                                                         wine, tmp_path):  # noqa: F811
    models = tmp_path / "mnt" / "models"
    models.mkdir(parents=True)  # KServe's emptyDir, mounted before its init container starts
    done = storage_initializer(tracking, "models:/wine/1", str(models))
    assert done.returncode == 0, done.stderr
    assert f"fetched models:/wine/1 into {models}" in done.stdout

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert files(models) == files(model_dir)  # the version's files, nothing half-fetched beside
    replica = Replica(models, tmp_path, version="1", keyed=True)
    try:
        replica.wait_ready()
        X, pipeline = wine
        response = replica.infer({"inputs": [tensor(X.iloc[[5, 75]].to_numpy())]})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == pipeline.predict(X.iloc[[5, 75]]).tolist()
    finally:
        replica.stop()


def test_a_version_that_is_not_registered_fails_the_pod_start_saying_so(tracking, tmp_path):
    """A non-zero exit fails the predictor pod's start, and its stderr is what the kubelet
    shows as the reason (the container's termination message)."""
    models = tmp_path / "models"
    models.mkdir()
    done = storage_initializer(tracking, "models:/wine/99", str(models))
    assert done.returncode == 1
    assert done.stderr.startswith(f"cannot fetch from the tracking server at {tracking}: "), \
        done.stderr
    assert "(name=wine, version=99) not found" in done.stderr, done.stderr
    assert not any(models.iterdir())
    # a storageUri with KServe's prefix that names no version
    done = storage_initializer(tracking, "models:/wine", str(models))
    assert done.returncode == 2
    assert "expected a model version as models:/NAME/VERSION, got 'models:/wine'" in done.stderr
