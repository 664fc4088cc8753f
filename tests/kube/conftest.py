"""Fixtures of the Kubernetes backend's tests (no cluster: ``simulator.FakeCluster``, kmock
driven like a cluster).

- ``cluster``: a started ``FakeCluster`` whose jobs folder is ``tmp_path/jobs``; parametrize
  it indirectly with options (``kueue``, ``kserve``, ``admit``).
- ``kube``: a ``tests.conformance.drivers.KubernetesDriver`` on that cluster (backend factories).
- ``api_calls_granted`` (session, autouse; ``rbac.py``): at the end, every API call a backend
  made through the stand-in in this session is one the chart's RBAC grants.
"""

from __future__ import annotations

import pytest

pytest.importorskip("kmock")

from tests.kube.rbac import api_calls_granted  # noqa: E402,F401


@pytest.fixture
def cluster_options(request) -> dict:
    return getattr(request, "param", {})


@pytest.fixture
async def kube(tmp_path, cluster_options):
    from tests.conformance.drivers import KubernetesDriver

    driver = KubernetesDriver(tmp_path, **cluster_options)
    async with driver:
        yield driver


@pytest.fixture(scope="session")
def runtime():
    from tests.conformance.drivers import default_runtime

    return default_runtime()
