"""Fixtures for Fermi's tests.

Hub-level tests run the real platform: ``fermi up`` in a temporary data dir on a free port
(JupyterHub, its proxy, the control plane, the MLflow tracking server, real papermill jobs).

Fixtures:
- ``platform``: one platform for the whole session (module ``tests/platform.py`` does the work),
  allowing datasets inside the session's temporary folders and on the claim ``claim``.
  Tests that kill platform processes start their own with ``start_platform``.
- ``alice``, ``bob``: ordinary users (created through the hub REST API with the admin token),
  each a ``tests.platform.User`` with an authenticated API client.
- ``admin``: the admin, through ``FERMI_ADMIN_TOKEN``.
- ``template``: the tabular-classifier template notebook (nbformat dict).
- ``tiny_notebook``: a fast 2-cell parameterized notebook factory: ``tiny_notebook(body)``.

Unit tests (``tests/unit``) use none of these and run in seconds.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from .platform import Platform, User, dataset_settings, make_notebook, start_platform

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Platform:
    # datasets may be in the tests' temporary folders (tmp_path), which also hold the data dir:
    # the rule keeps that one out by itself; "claim" is the one volume listed for datasets
    settings = dataset_settings(tmp_path_factory.mktemp("fermi-config"),
                                [tmp_path_factory.getbasetemp()], ["claim"])
    running = start_platform(tmp_path_factory.mktemp("fermi-data"), env=settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin(platform) -> User:
    return platform.admin


@pytest.fixture
def alice(platform) -> User:
    return platform.user(f"alice-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def bob(platform) -> User:
    return platform.user(f"bob-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def template() -> dict:
    return json.loads((ROOT / "notebooks/templates/tabular-classifier.ipynb").read_text())


@pytest.fixture
def tiny_notebook():
    return make_notebook
