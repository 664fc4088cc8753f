"""Custom images for real: pulled from a local registry (Debian's ``docker-registry``) and built
from a Dockerfile by the engine, checked for what dev servers and jobs need, pinned by digest,
and run by a job.

The registry listens on 127.0.0.1 over plain HTTP, which podman accepts only for a registry its
registries.conf marks insecure: this module runs its own podman service with one of the
platform's own (``PodmanService(insecure_registries=…)``, as `fermi up` does for
$FERMI_INSECURE_REGISTRIES), sharing the machine's image storage with the session's engine, and
its own platform on it.
"""

from __future__ import annotations

import time

import pytest

from fermi_extension.containers.engine import PodmanService
from fermi_extension.containers.push import push_image

from ..platform import make_notebook, start_platform
from ..test_restart import wait_until
from .conftest import engine_connection, free_port
from .test_dev_servers import server_containers, start_server, stop_server
from .test_jobs_in_containers import job_containers

pytestmark = pytest.mark.hub

INDEX = "https://mirror.example.org/simple"  # never contacted: the build only records it


@pytest.fixture(scope="module")
def client(registry_engine):
    with engine_connection(registry_engine) as client:
        yield client


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "company-ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture(scope="module")
def platform(tmp_path_factory, registry_engine, official_image, ca_bundle):
    config = tmp_path_factory.mktemp("custom-images-config") / "service_config.py"
    config.write_text(f"c.FermiService.package_index_url = {INDEX!r}\n"
                      f"c.FermiService.package_ca_bundle = {str(ca_bundle)!r}\n")
    data = tmp_path_factory.mktemp("fermi-data-custom-images")
    running = start_platform(data, env={"FERMI_CONTAINER_ENGINE": registry_engine.url,
                                        **registry_engine.env(),
                                        "FERMI_SERVICE_CONFIG": str(config)}, timeout=600)
    yield running
    running.stop()


def push(client, source: str, target: str) -> str:
    """Push ``source`` to ``target`` (repository:tag) through the engine; the registry's digest."""
    repository, _, tag = target.rpartition(":")
    digest = push_image(client, source, repository, tag)
    client.images.remove(target)  # the pull must fetch it, not find the local tag
    return digest


def add_image(admin, slug: str, reference: str) -> None:
    response = admin.api("POST", "catalog/images", json={
        "slug": slug, "name": slug, "kind": "custom", "reference": reference})
    assert response.status_code == 201, response.text


def run_job(user, image: str, body: str, engine_client, platform) -> tuple[dict, dict]:
    """A job from ``image``; its end, and the image its container was made from (the
    reference it names and the image's id)."""
    job = user.submit(make_notebook(body), image=image)
    seen = {}

    def container():
        found = job_containers(engine_client, platform, job["id"])
        if found:
            seen["image"] = found[0].attrs["Config"]["Image"]
            seen["id"] = found[0].image.id
        return found or user.job(job["id"])["status"] in ("succeeded", "failed")

    wait_until(container, timeout=120, what="the job's container")
    return user.wait(job["id"], timeout=180), seen


def dev_server_image(platform, user, image: str, client) -> str:
    """Start ``user``'s dev server from ``image`` (its lab answering through the proxy), stop
    it; the image its container was made from."""
    start_server(platform, user, {"profile": "cpu-small", "image": image})
    try:
        [container] = server_containers(client, platform, user.name)
        lab = user.http.get(f"/user/{user.name}/lab", follow_redirects=True)
        assert lab.status_code == 200, lab.text[:300]
        return container.attrs["Config"]["Image"]
    finally:
        stop_server(platform, user)


def test_a_pulled_image_is_pinned_by_the_registry_digest_and_runs_a_job(
        platform, client, registry, official_image):
    digest = push(client, official_image.reference, f"{registry}/team/python:1")
    admin, alice = platform.admin, platform.user("alice-ci1")
    add_image(admin, "team-python", f"{registry}/team/python")

    refused = alice.api("POST", "catalog/images/team-python/pull", json={"tag": "1"})
    assert refused.status_code == 403, refused.text

    pulled = admin.api("POST", "catalog/images/team-python/pull", json={"tag": "1"})
    assert pulled.status_code == 200, pulled.text
    body = pulled.json()
    assert body["digest"] == digest  # the registry's, not the local build's manifest
    assert body["reference"] == f"{registry}/team/python@{digest}"
    assert body["architecture"] == "amd64" and body["size"] > 100_000_000
    image = admin.api("GET", "catalog/images/team-python").json()
    assert image["versions"][0]["tag"] == "1" and image["versions"][0]["digest"] == digest
    assert image["versions"][0]["labels"]["python"] == "3.11"

    done, made_from = run_job(alice, "team-python", "import time; time.sleep(2)",
                              client, platform)
    assert done["status"] == "succeeded", done
    assert made_from["image"] == f"{registry}/team/python@{digest}"
    # and a dev server starts from the same pinned image
    server = dev_server_image(platform, alice, "team-python", client)
    assert server == f"{registry}/team/python@{digest}"


def test_an_image_without_what_jobs_need_is_refused_naming_it_and_nothing_is_pinned(
        platform, client, registry):
    push(client, "localhost/fermi/base:bookworm", f"{registry}/team/bare:1")
    admin = platform.admin
    add_image(admin, "team-bare", f"{registry}/team/bare")
    before = admin.api("GET", "catalog/images/team-bare").json()

    refused = admin.api("POST", "catalog/images/team-bare/pull", json={"tag": "1"})
    assert refused.status_code == 422, refused.text
    message = refused.json()["message"]
    for part in ("jupyterhub-singleuser", "papermill", "ipykernel",
                 "fermi_extension.jobs.entry", "pip install fermi-cluster",
                 "/opt/fermi/bin/python"):
        assert part in message, message
    after = admin.api("GET", "catalog/images/team-bare").json()
    assert after["versions"] == [] and after["revision"] == before["revision"]


def test_pull_failures_are_4xx_with_the_registry_s_message(platform, registry):
    admin = platform.admin
    add_image(admin, "team-missing", f"{registry}/team/missing")
    missing = admin.api("POST", "catalog/images/team-missing/pull", json={"tag": "1"})
    assert missing.status_code == 404, missing.text
    assert "manifest unknown" in missing.json()["message"]
    closed = free_port()  # nothing listens there: the engine's own connection error
    add_image(admin, "team-nowhere", f"127.0.0.1:{closed}/team/nowhere")
    nowhere = admin.api("POST", "catalog/images/team-nowhere/pull", json={"tag": "1"})
    assert nowhere.status_code == 422, nowhere.text
    assert "connection refused" in nowhere.json()["message"].lower()
    bad = admin.api("POST", "catalog/images/team-missing/pull", json={"tag": "-no"})
    assert bad.status_code == 400 and "tag" in bad.json()["message"]


def wait_build(admin, build_id: str, seen_running: list) -> dict:
    deadline = time.monotonic() + 600
    while True:
        build = admin.api("GET", f"catalog/builds/{build_id}").json()
        if build["status"] == "running" and build["log"]:
            seen_running.append(build["log"])
        if build["status"] in ("succeeded", "failed"):
            return build
        assert time.monotonic() < deadline, build
        time.sleep(0.3)


def test_a_dockerfile_is_built_by_the_engine_with_the_package_settings_and_runs_a_job(
        platform, client):
    admin, alice = platform.admin, platform.user("alice-ci2")
    add_image(admin, "team-built", "localhost/team/built")
    dockerfile = ("FROM localhost/fermi/python:0.1.0\n"
                  "ARG PIP_INDEX_URL\nARG PIP_CERT\n"
                  "COPY fermi-ca.pem /fermi-ca.pem\n"
                  'RUN echo "index=$PIP_INDEX_URL cert=$PIP_CERT" > /opt/fermi-build.txt '
                  "&& echo wrote-the-file && sleep 3\n")
    wrong = admin.api("POST", "catalog/builds", json={
        "slug": "team-built", "dockerfile": dockerfile, "reference": "localhost/other/x:1"})
    assert wrong.status_code == 409 and "localhost/team/built" in wrong.json()["message"]
    started = admin.api("POST", "catalog/builds", json={
        "slug": "team-built", "dockerfile": dockerfile, "reference": "localhost/team/built:1"})
    assert started.status_code == 202, started.text
    running: list = []
    build = wait_build(admin, started.json()["id"], running)
    assert build["status"] == "succeeded", build
    assert build["builder"] == "engine"
    assert running, "the log was not served while the build ran"
    assert "RUN echo" in build["log"] and "wrote-the-file" in build["log"], build["log"]
    assert "PIP_INDEX_URL" in build["log"] and INDEX not in build["log"]  # names, not values
    version = admin.api("GET", "catalog/images/team-built").json()["versions"][0]
    assert version["tag"] == "1" and version["digest"].startswith("sha256:")

    done, made_from = run_job(
        alice, "team-built", "import shutil; shutil.copy('/opt/fermi-build.txt', 'built.txt')",
        client, platform)
    assert done["status"] == "succeeded", done
    # podman names a local image by its tag in the container; the image is the pinned one
    assert made_from["id"] == client.images.get(f"localhost/team/built@{version['digest']}").id
    written = (platform.data / "jobs" / done["id"] / "work" / "built.txt").read_text()
    assert written.strip() == f"index={INDEX} cert=/fermi-ca.pem"
    # and a dev server starts from the built image
    server = dev_server_image(platform, alice, "team-built", client)
    assert client.images.get(server).id == made_from["id"]


def test_a_dockerfile_with_a_failing_step_ends_failed_with_the_builder_s_message(platform):
    admin = platform.admin
    add_image(admin, "team-broken", "localhost/team/broken")
    started = admin.api("POST", "catalog/builds", json={
        "slug": "team-broken", "reference": "localhost/team/broken:1",
        "dockerfile": "FROM localhost/fermi/python:0.1.0\nRUN echo about-to-fail && exit 3\n"})
    assert started.status_code == 202, started.text
    build = wait_build(admin, started.json()["id"], [])
    assert build["status"] == "failed", build
    assert "exit status 3" in build["reason"], build["reason"]
    assert "about-to-fail" in build["log"], build["log"]
    assert admin.api("GET", "catalog/images/team-broken").json()["versions"] == []


def test_the_platform_s_registries_conf_marks_only_the_listed_registries_insecure(tmp_path):
    from fermi_extension.containers.engine import registries_conf

    assert registries_conf(tmp_path, []) is None  # the system's file stays in force
    service = PodmanService(tmp_path, insecure_registries=["127.0.0.1:5000"])
    assert service.env()["CONTAINERS_REGISTRIES_CONF"] == str(tmp_path / "registries.conf")
    text = registries_conf(tmp_path, ["127.0.0.1:5000"]).read_text()
    assert '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true' in text


def test_package_settings_become_build_arguments_without_empty_ones():
    from fermi_extension.catalog.builds import PackageSettings, split_reference

    settings = PackageSettings("https://m/simple", ("https://a/simple", "https://b/simple"), (),
                               "/etc/ssl/ca.pem")
    assert settings.build_args() == {"PIP_INDEX_URL": "https://m/simple",
                                     "PIP_EXTRA_INDEX_URL": "https://a/simple https://b/simple",
                                     "PIP_CERT": "/fermi-ca.pem"}
    assert PackageSettings().build_args() == {}
    assert split_reference("127.0.0.1:5000/team/x:2") == ("127.0.0.1:5000/team/x", "2")
    assert split_reference("127.0.0.1:5000/team/x") == ("127.0.0.1:5000/team/x", "latest")
