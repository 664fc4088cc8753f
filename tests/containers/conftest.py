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
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from fermi_extension.containers.engine import PodmanService, connect
from fermi_extension import __version__
from fermi_extension.containers.images import OFFICIAL, Built, digest_of, ensure_official

from ..platform import dataset_settings, start_platform

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
