"""The conformance suite: the same tests against both backends, at the backend interface
(``JobBackend``, ``ServingBackend``), parametrized over ``backend_kind`` = local | kubernetes.

Fixtures:
- ``backend_kind``: "local" or "kubernetes".
- ``driver``: a ``drivers.Driver`` for that backend: makes fresh backend instances (a second
  instance is a restarted control plane), and does to a running attempt what the world would:
  ``release`` it (the notebook's wait ends), ``disrupt`` it (local: the process is killed -9;
  kubernetes: the pod is evicted). Kubernetes runs against ``tests.kube.simulator.FakeCluster``
  (kmock over HTTP, driven like a cluster) whose kubelet runs each pod's command (the job entry
  point) as a real process; local runs the same entry point in its own processes. Both run
  real papermill and real kernels.
- ``driver.dataset(name, files)``: a dataset version attached the way that backend attaches one
  (local: a folder; kubernetes: a claim's subPath).
- ``runtime``: the runtime spec of the shipped catalogue's default image × ``cpu-small``.
- ``api_calls_granted`` (session, autouse; ``tests/kube/rbac.py``): at the end, every API call
  the Kubernetes backend made through the stand-in is one the chart's RBAC grants.
"""

from __future__ import annotations

import pytest

from tests.kube.rbac import api_calls_granted  # noqa: F401

from .drivers import KubernetesDriver, LocalDriver, default_runtime


@pytest.fixture(params=["local", "kubernetes"])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
async def driver(backend_kind, tmp_path):
    if backend_kind == "kubernetes":
        pytest.importorskip("kmock")  # the API stand-in (test extra)
    made = LocalDriver(tmp_path) if backend_kind == "local" else \
        KubernetesDriver(tmp_path, run_pods=True)
    async with made:
        yield made


@pytest.fixture(scope="session")
def runtime():
    return default_runtime()
