"""Inference-service replicas in containers, on the real engine: a model trained by a real job
is deployed; each replica is a container from the pinned image within its profile's limits,
with only the model mounted and no platform secret, reached by the host's router on 127.0.0.1;
a control plane killed with -9 leaves the endpoint answering and re-adopts the same container;
stopping and deleting remove the containers; a replica killed at its memory limit says so."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from fermi_extension.backends.local.container_serving import ContainerServingBackend
from fermi_extension.containers.runtime import LABEL, platform_id
from fermi_extension.deployments.backend import ReplicaLaunch
from fermi_extension.serving.replica_key import ENV_REPLICA_KEY, replica_key
from fermi_extension.spec import RuntimeSpec

from ..platform import make_notebook
from ..test_restart import TRAIN, platform_processes, ready_replicas, wait_until
from .test_jobs_in_containers import small_profile

pytestmark = pytest.mark.hub

INFER = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                     "data": [5.1, 3.5, 1.4, 0.2]}]}
SECRETS = ("FERMI_ADMIN_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")


def replica_containers(engine_client, platform, deployment: str) -> list[str]:
    """The ids of a deployment's replica containers. The engine's bare list: docker-py's
    ``containers.list`` inspects each one it lists, and podman answers 500 for one removed
    in between (as the platform does on stop)."""
    return [c["Id"] for c in engine_client.api.containers(all=True, filters={"label": [
        f"{LABEL}.kind=replica", f"{LABEL}.deployment={deployment}",
        f"{LABEL}.platform={platform_id(str(platform.data))}"]})]


@pytest.fixture(scope="module")
def trained(container_platform):
    """One user's model "iris-c" version 1, registered by a real training job (in a container)."""
    alice = container_platform.user("alice-r")
    job = alice.wait(alice.submit(make_notebook(TRAIN, parameters='model_name = "iris-c"'))["id"],
                     timeout=300)
    assert job["status"] == "succeeded", (job.get("reason"), job)
    return alice


def deploy(user, name: str, profile: str = "cpu-small") -> dict:
    created = user.api("POST", "deployments", json={
        "name": name, "model": "iris-c", "version": "1", "profile": profile})
    assert created.status_code == 201, created.text
    return created.json()


def answers(created: dict) -> int:
    try:
        return httpx.post(f"{created['url']}/v2/models/iris-c/infer", json=INFER, timeout=5,
                          headers={"Authorization": f"Bearer {created['api_key']}"}).status_code
    except httpx.HTTPError:
        return -1  # no answer at all


def launch(tmp_path, reference: str) -> ReplicaLaunch:
    spec = RuntimeSpec(image="python", image_reference=reference, image_local=True,
                       kernel="python3", profile="cpu-small", pool="cpu", cpu=1, memory="2Gi",
                       env={"OMP_NUM_THREADS": "1"})
    return ReplicaLaunch("iris-r1-abc123", "iris", "iris", "1", tmp_path / "models" / "iris" / "1",
                         "auto", spec)


def test_a_replica_container_request_is_pinned_limited_and_holds_only_its_key(tmp_path):
    backend = ContainerServingBackend(serving_dir=str(tmp_path), engine_url="unix:///nowhere",
                                      data_dir=str(tmp_path))
    with pytest.raises(LookupError, match="has no pinned digest"):
        backend.request(launch(tmp_path, "localhost/fermi/python:0.1.0"), 40000)
    digest = "localhost/fermi/python@sha256:" + "0" * 64
    request = backend.request(launch(tmp_path, digest), 40000)
    assert request.image == digest and request.name == "fermi-replica-iris-r1-abc123"
    limits = request.limits
    assert (limits.cpu, limits.memory, limits.pids) == (1.0, 2 * 2**30, 1024)
    assert request.ports == {8080: 40000} and request.network is None  # the bridge
    assert [(m.target, m.read_only) for m in request.mounts] == [("/model", True)]
    assert set(request.env) == {"OMP_NUM_THREADS", "PYTHONUNBUFFERED", ENV_REPLICA_KEY}
    assert request.env[ENV_REPLICA_KEY] == replica_key(backend._token(), "http://127.0.0.1:40000")
    assert request.labels == {f"{LABEL}.kind": "replica", f"{LABEL}.deployment": "iris",
                              f"{LABEL}.replica": "iris-r1-abc123", f"{LABEL}.profile": "cpu-small"}


def test_a_replica_is_a_container_of_the_pinned_image_that_keeps_answering_through_a_crash(
        container_platform, trained, engine_client, official_image):
    alice, name = trained, "iris-c"
    created = deploy(alice, name)
    wait_until(lambda: alice.api("GET", f"deployments/{name}").json()["status"] == "ready",
               timeout=180, what="the deployment to be ready")
    assert answers(created) == 200

    [container] = [engine_client.containers.get(i)
                   for i in replica_containers(engine_client, container_platform, name)]
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    # from exactly the image the catalogue pinned, within cpu-small (1 CPU, 2Gi)
    assert config["Image"] == official_image.reference
    assert container.image.id == engine_client.images.get(official_image.reference).id
    assert host["Memory"] == 2 * 2**30 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 1_000_000_000 or host.get("CpuQuota") == 100000
    assert host["PidsLimit"] == 1024
    # only the model version, read-only; nothing else of the data dir
    [mount] = container.attrs["Mounts"]
    assert mount["Destination"] == "/model" and mount["RW"] is False
    assert mount["Source"].startswith(str(container_platform.data / "serving" / "models"))
    # no platform secret in its environment (the test admin token in no value either)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not set(SECRETS) & set(env), sorted(env)
    assert container_platform.admin_token not in "\n".join(env.values())
    # its port on 127.0.0.1 only, on the engine's bridge (never the host's network)
    assert host.get("NetworkMode") != "host"
    bindings = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), bindings
    # its log comes from the container
    assert container.logs(tail=50)

    # a replica container no replica owns (as a crash between making and recording leaves it)
    orphan = engine_client.containers.create(
        official_image.reference, ["sleep", "600"], name=f"fermi-replica-orphan-{time.time_ns()}",
        labels={f"{LABEL}.kind": "replica", f"{LABEL}.deployment": "orphan",
                f"{LABEL}.platform": platform_id(str(container_platform.data))})
    orphan.start()

    # the control plane killed with -9: the endpoint keeps answering throughout
    before = ready_replicas(alice, name)
    codes: list[int] = []
    done = threading.Event()

    def keep_asking():
        while not done.is_set():
            codes.append(answers(created))
            time.sleep(0.1)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        old = platform_processes(container_platform)["control plane"]
        old.send_signal(signal.SIGKILL)
        wait_until(lambda: getattr(platform_processes(container_platform).get("control plane"),
                                   "pid", old.pid) != old.pid, what="the control plane's restart")
        wait_until(lambda: alice.api("GET", f"deployments/{name}").status_code == 200,
                   timeout=90, what="the new control plane to answer")
        wait_until(lambda: alice.api("GET", f"deployments/{name}").json()["status"] == "ready",
                   what="the deployment to be ready again")
        wait_until(lambda: not engine_client.containers.list(all=True, filters={"id": orphan.id}),
                   timeout=90, what="the orphan replica container to be removed")
        time.sleep(2)  # a few reconciliations of the new control plane
    finally:
        done.set()
        asker.join(10)
    assert codes and set(codes) == {200}, [c for c in codes if c != 200]
    # re-adopted: the same container, no second one, the same replica
    assert replica_containers(engine_client, container_platform, name) == [container.id]
    assert ready_replicas(alice, name) == before
    assert answers(created) == 200

    # stopped: its container goes; started again: one new one; deleted: none
    stopped = alice.api("PATCH", f"deployments/{name}", json={"action": "stop"})
    assert stopped.status_code == 200, stopped.text
    wait_until(lambda: not replica_containers(engine_client, container_platform, name),
               timeout=60, what="the replica container to be removed on stop")
    started = alice.api("PATCH", f"deployments/{name}", json={"action": "start"})
    assert started.status_code == 200, started.text
    wait_until(lambda: alice.api("GET", f"deployments/{name}").json()["status"] == "ready",
               timeout=180, what="the deployment to be ready after start")
    [again] = replica_containers(engine_client, container_platform, name)
    assert again != container.id and answers(created) == 200
    assert alice.api("DELETE", f"deployments/{name}").status_code in (200, 202, 204)
    wait_until(lambda: not replica_containers(engine_client, container_platform, name),
               timeout=60, what="the replica container to be removed on delete")
    wait_until(lambda: alice.api("GET", f"deployments/{name}").status_code == 404,
               what="the deployment to be gone")


def test_a_replica_over_its_memory_is_reported_naming_the_profile(container_platform, trained,
                                                                   engine_client):
    small_profile(container_platform.admin, "cpu-serve-tiny", "40Mi")
    alice, name = trained, "iris-c-tiny"
    deploy(alice, name, profile="cpu-serve-tiny")

    def crashes() -> list[str]:
        events = alice.api("GET", f"deployments/{name}").json()["events"]
        return [e["message"] for e in events if e["kind"] == "replica-crashed"]

    wait_until(crashes, timeout=120, what="the replica to be killed")
    message = crashes()[0]
    assert "The replica exceeded the 40Mi memory of profile cpu-serve-tiny" in message, message
    assert "; pick " in message, message  # a larger profile alice may use
    assert alice.api("DELETE", f"deployments/{name}").status_code in (200, 202, 204)
    # deleted while its replicas keep being killed: none of their containers stays behind
    wait_until(lambda: not replica_containers(engine_client, container_platform, name),
               timeout=60, what="the killed replicas' containers to be removed")
