"""Fixtures of the Kubernetes backend's tests (no cluster: ``simulator.FakeCluster``, kmock
driven like a cluster).

- ``cluster``: a started ``FakeCluster`` whose jobs folder is ``tmp_path/jobs``; parametrize
  it indirectly with options (``kueue``, ``kserve``, ``admit``).
- ``kube``: a ``tests.conformance.drivers.KubernetesDriver`` on that cluster (backend factories).
"""

from __future__ import annotations

import pytest

pytest.importorskip("kmock")


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
