"""Fixtures for the tests of workloads in containers, on the machine's real engine.

`make test` installs podman, runc, buildah, mmdebstrap and docker-registry from Debian's
packages (Makefile, ``debian-packages``), so these tests run wherever the suite runs; they skip
only on a machine with no podman at all (said in the skip reason).

- ``engine``: podman's Engine API service for the session, on a socket in the session's
  temporary folder, with the platform's own containers.conf (``containers/engine.py``) — the same
  thing `fermi up` starts.
- ``official_image``: the official ``python`` image of this source tree, built once per session
  (``containers/images.ensure_official``: reused when the engine has one built from the same
  source; ``FERMI_TEST_IMAGE_REUSE=1`` reuses any, while developing code that does not run in
  the image). Its base tar and wheel folder are cached in ``~/.cache/fermi-tests``.
- ``platform_images``: the platform's own images (hub, router, model-server) of this source
  tree, thin layers on ``official_image``, built and reused the same way.
- ``container_platform``: one whole platform (`fermi up`) in container mode for the session,
  sharing the session's engine; its catalogue pins ``official_image``.
- ``registry``: Debian's ``docker-registry`` on 127.0.0.1:PORT over plain HTTP, storage in a
  temporary folder, for the module; its address. ``registry_engine``: a podman service of the
  module's own whose registries.conf marks that registry insecure (as `fermi up` does for
  $FERMI_INSECURE_REGISTRIES), sharing the machine's image storage with the session's engine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from fermi_extension.containers.engine import PodmanService, connect
from fermi_extension import __version__
from fermi_extension.containers.images import OFFICIAL, Built, digest_of, ensure_official

from ..platform import dataset_settings, start_platform
from ..test_restart import wait_until

CACHE = Path(os.environ.get("FERMI_TEST_CACHE", Path.home() / ".cache" / "fermi-tests"))


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (make test installs it from Debian's packages)")
    with running_engine(tmp_path_factory.mktemp("engine")) as service:
        yield service


@contextmanager
def running_engine(folder: Path, **settings):
    """podman's Engine API service in ``folder`` (``PodmanService(folder, **settings)``), as
    `fermi up` starts it, stopped afterwards."""
    service = PodmanService(folder, **settings)
    if not service.start():
        pytest.fail(f"podman system service did not start: {service.folder / 'engine.log'}")
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def engine_connection(service):
    client = connect(service.url, timeout=1800)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def engine_client(engine):
    with engine_connection(engine) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not shutil.which(binary):
        pytest.skip("docker-registry is not installed (make test installs it from Debian's "
                    "packages)")
    folder = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {folder / 'storage'}\nhttp:\n"
                      f"  addr: 127.0.0.1:{port}\n")
    log = open(folder / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"http://{address}/v2/"), timeout=30,
                   what="the registry to answer")
        yield address
    finally:
        process.terminate()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def registry_engine(tmp_path_factory, registry, engine):
    with running_engine(tmp_path_factory.mktemp("registry-engine"),
                        insecure_registries=[registry]) as service:
        yield service


def session_image(client, name: str) -> Built:
    """The official image ``name`` of this source tree (see this module's docstring)."""
    if os.environ.get("FERMI_TEST_IMAGE_REUSE"):
        # while developing: whatever official image the engine has, however old its Fermi
        official = OFFICIAL[name]
        digest = digest_of(client, f"{official.repository}:{__version__}")
        if digest:
            return Built(name, official.slug, official.repository, __version__, digest)
    return ensure_official(client, name, CACHE, same_source=True, log=lambda line: None)


@pytest.fixture(scope="session")
def official_image(engine_client):
    return session_image(engine_client, "python")


@pytest.fixture(scope="session")
def platform_images(engine_client, official_image) -> dict[str, Built]:
    """The platform's own images (``images/{hub,router,model-server}``: thin layers on
    ``official_image``, seconds each; hub's psycopg wheels come from the index once), built once
    per session as ``official_image`` is."""
    return {name: session_image(engine_client, name) for name in ("hub", "router", "model-server")}


@pytest.fixture(scope="session")
def container_platform(tmp_path_factory, engine, official_image):
    settings = dataset_settings(tmp_path_factory.mktemp("fermi-config-containers"),
                                [tmp_path_factory.getbasetemp()], [])
    data = tmp_path_factory.mktemp("fermi-data-containers")
    (data / "containers").mkdir()
    # the session's base tar and wheels: `fermi up` finds the image built, and builds nothing
    running = start_platform(data, env={**settings, "FERMI_CONTAINER_ENGINE": engine.url,
                                        **engine.env()}, timeout=600)
    yield running
    running.stop()
