"""FermiKubeSpawner without a cluster: its profile_list comes from the catalogue in the platform
database, its checks are the local spawner's, and the pod it would create for each profile is
valid for Kubernetes 1.31 and 1.37 (official schemas, strict: unknown fields fail).

KubeSpawner is built as its own tests build it (``_mock=True``, a mock user, ``jupyterhub.objects
.Hub()``); it loads a client configuration when constructed, so a kubeconfig naming an unreachable
API server is provided. Pods are serialised with kubernetes_asyncio's ``ApiClient`` — the client
KubeSpawner itself uses.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import Mock

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("kubespawner")

from jupyterhub.objects import Hub, Server  # noqa: E402
from kubernetes_asyncio.client import ApiClient  # noqa: E402
from sqlalchemy import select  # noqa: E402
from tornado import web  # noqa: E402

from fermi_extension.catalog.store import CatalogStore, load_catalog_file  # noqa: E402
from fermi_extension.db import CatalogItem, make_session_factory  # noqa: E402
from fermi_extension.paths import shipped  # noqa: E402

VERSIONS = ["1.31.0", "1.37.0"]
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: not-a-cluster}}]
"""


class MockUser(Mock):
    """A hub user as KubeSpawner's own tests mock it, with groups and admin."""

    name = "ann"
    id = 7
    admin = False
    server = Server()

    def __init__(self, groups=(), **kwargs):
        super().__init__(**kwargs)
        self.groups = [SimpleNamespace(name=g) for g in groups]

    @property
    def escaped_name(self):
        return self.name

    @property
    def url(self):
        return self.server.url


@pytest.fixture(scope="module", autouse=True)
def kubeconfig(tmp_path_factory):
    """The client reads $KUBECONFIG when it is imported; point its default at ours."""
    from kubernetes_asyncio.config import kube_config

    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(KUBECONFIG)
    before = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    yield
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = before


@pytest.fixture
def db_url(tmp_path):
    """The shipped catalogue plus a private image with a digest and a team-only GPU profile."""
    url = f"sqlite:///{tmp_path / 'fermi.sqlite'}"
    catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
    data = catalog.model_dump(mode="json")
    data["images"].append({
        "slug": "private", "name": "Private trainer", "kind": "custom", "local": False,
        "reference": "registry.example.com:5000/team/trainer", "pull_secret": "team-registry",
        "versions": [{"tag": "v2", "digest": "sha256:" + "a" * 64}, {"tag": "v1"}],
    })
    data["profiles"].append({
        "slug": "team-gpu-2", "name": "2 GPUs (team)", "cpu": 16, "memory": "128Gi", "gpu": 2,
        "pool": "gpu-a100", "allowed_groups": ["team"], "gpu_resource": "nvidia.com/gpu",
        "tolerations": [{"key": "team", "operator": "Equal", "value": "ml",
                         "effect": "NoSchedule"}],
        "node_selector": {"fermi.io/pool": "team"},
    })
    CatalogStore(make_session_factory(url)).seed_if_empty(type(catalog).model_validate(data))
    return url


def make_spawner(db_url, groups=(), **traits):
    from fermi_spawner.kubernetes import FermiKubeSpawner

    return FermiKubeSpawner(hub=Hub(), user=MockUser(groups=groups), _mock=True,
                            platform_db_url=db_url, **traits)


async def pod_for(spawner, options) -> dict:
    spawner.user_options = options
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)


def validate(pod: dict) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def resources(pod: dict) -> dict:
    """The container's requests and limits, quantities as strings (KubeSpawner sends numbers)."""
    found = pod["spec"]["containers"][0]["resources"]
    return {kind: {k: str(v) for k, v in found.get(kind, {}).items()}
            for kind in ("limits", "requests")}


PROFILES = ["cpu-small", "cpu-large", "gpu-a100-1", "team-gpu-2"]


@pytest.mark.parametrize("profile", PROFILES)
async def test_the_pod_of_every_profile_is_valid_for_kubernetes(db_url, profile):
    spawner = make_spawner(db_url, groups=["team"])
    pod = await pod_for(spawner, {"profile": profile})
    validate(pod)
    limits, requests = resources(pod)["limits"], resources(pod)["requests"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["FERMI_PROFILE"] == profile and env["FERMI_IMAGE"] == "python-local"
    assert pod["spec"]["containers"][0]["image"] == "localhost/fermi/python:0.1.0"
    if profile.startswith("cpu"):
        assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests
        assert not pod["spec"].get("tolerations") and not pod["spec"].get("nodeSelector")
    else:
        gpus = "2" if profile == "team-gpu-2" else "1"
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == gpus
        assert pod["spec"]["tolerations"]


async def test_sizes_come_from_the_catalogue_profile(db_url):
    pod = await pod_for(make_spawner(db_url), {"profile": "gpu-a100-1"})
    limits, requests = resources(pod)["limits"], resources(pod)["requests"]
    assert (limits["cpu"], limits["memory"]) == ("8.0", str(64 * 1024**3))
    assert (requests["cpu"], requests["memory"]) == ("8.0", str(64 * 1024**3))
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    half = await pod_for(make_spawner(db_url, guarantee_fraction=0.5), {"profile": "cpu-large"})
    assert resources(half)["requests"] == {"cpu": "2.0", "memory": str(8 * 1024**3)}
    assert resources(half)["limits"] == {"cpu": "4.0", "memory": str(16 * 1024**3)}


async def test_the_image_choice_sets_image_version_digest_and_pull_secret(db_url):
    spawner = make_spawner(db_url)
    pod = await pod_for(spawner, {"profile": "cpu-small", "image": "private"})
    validate(pod)
    assert pod["spec"]["containers"][0]["image"] == (
        "registry.example.com:5000/team/trainer@sha256:" + "a" * 64)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "team-registry"}]
    pod = await pod_for(spawner, {"profile": "cpu-small", "image": "private",
                                  "image_version": "v1"})
    assert pod["spec"]["containers"][0]["image"] == "registry.example.com:5000/team/trainer:v1"
    profiles = spawner.catalog_profile_list()
    choices = profiles[0]["profile_options"]["image"]["choices"]
    assert choices["private"]["kubespawner_override"]["image"].endswith("@sha256:" + "a" * 64)
    assert choices["python-local"]["default"] is True


async def test_nothing_of_one_spawn_leaks_into_the_next(db_url):
    spawner = make_spawner(db_url, groups=["team"])
    spawner.node_selector = {"site": "a"}  # the operator's own settings stay
    gpu = await pod_for(spawner, {"profile": "team-gpu-2", "image": "private"})
    assert gpu["spec"]["nodeSelector"] == {"site": "a", "fermi.io/pool": "team"}
    cpu = await pod_for(spawner, {"profile": "cpu-small"})
    validate(cpu)
    assert "nvidia.com/gpu" not in resources(cpu)["limits"]
    assert "nvidia.com/gpu" not in resources(cpu)["requests"]
    assert cpu["spec"]["nodeSelector"] == {"site": "a"}
    assert not cpu["spec"].get("tolerations") and not cpu["spec"].get("imagePullSecrets")
    assert cpu["spec"]["containers"][0]["image"].startswith("localhost/fermi/python:")


async def test_group_restrictions_and_unknown_choices_are_refused_like_the_local_spawner(db_url):
    spawner = make_spawner(db_url)
    assert "team-gpu-2" not in [p["slug"] for p in spawner.catalog_profile_list()]
    spawner.handler = SimpleNamespace(request=SimpleNamespace(
        method="POST", body=b'{"profile": "team-gpu-2"}', body_arguments={},
        query_arguments={}))
    spawner.user_options = {"profile": "team-gpu-2"}
    with pytest.raises(web.HTTPError) as refused:
        await spawner.load_user_options()
    assert refused.value.status_code == 403
    assert "reserved for members of the group(s) team" in refused.value.jupyterhub_message
    spawner.user_options = {"profile": "cpu-small", "image": "nope"}
    with pytest.raises(web.HTTPError) as unknown:
        await spawner.load_user_options()
    assert unknown.value.status_code == 400
    spawner.handler = None  # saved options: fall back with a notice
    resolved = await spawner.load_user_options()
    assert resolved.image.slug == "python-local" and "nope" in resolved.notices[0]
    events = spawner.progress()  # Fermi's events come first; KubeSpawner's need a cluster
    assert "Profile CPU small (cpu-small)" in (await events.__anext__())["message"]
    assert "Your saved image 'nope'" in (await events.__anext__())["message"]
    await events.aclose()


async def test_an_admins_catalogue_edit_is_seen_by_the_next_spawn(db_url):
    spawner = make_spawner(db_url)
    before = await pod_for(spawner, {"profile": "cpu-small"})
    assert resources(before)["limits"]["cpu"] == "1.0"
    factory = make_session_factory(db_url)
    with factory() as session:
        item = session.scalar(select(CatalogItem).where(CatalogItem.slug == "cpu-small"))
        item.data = {**item.data, "cpu": 2}
        session.commit()
    after = await pod_for(spawner, {"profile": "cpu-small"})
    assert resources(after)["limits"]["cpu"] == "2.0"


async def test_the_form_is_the_shared_one(db_url):
    spawner = make_spawner(db_url)
    form = await spawner.get_options_form()
    assert 'name="profile" value="cpu-small" checked' in form
    assert "Private trainer" in form and "team-gpu-2" not in form
    assert spawner.run_options_from_form({"profile": ["gpu-a100-1"], "image": ["private"]}) == {
        "profile": "gpu-a100-1", "image": "private"}
