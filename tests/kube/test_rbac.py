"""The chart's RBAC (``hub_config/helm/rbac.yaml``) grants the control plane every API call its
Kubernetes backends make, and little beyond.

The stand-in records each call the backends make, as the authorizer sees it (``rbac.py``). This
module drives the backends through a representative day itself, so that it means something when
it runs alone: jobs queued by Kueue (held, admitted, cancelled) and without it (logs, cancel, an
eviction, a control-plane restart re-attaching, a distributed job's rendezvous Service), a Kaniko
build, serving in Deployment mode (scale, canary, a revision re-created over its leftovers,
routing table, delete) and in KServe mode. Run with the rest of ``tests/kube`` and
``tests/conformance``, the check also covers every call they recorded before it (and the session
fixture ``api_calls_granted`` checks whatever was recorded after).
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.conformance.drivers import SUCCEEDS, WAITS, KubernetesDriver, default_runtime, \
    replica_launch
from tests.kube.rbac import RECORDED, Call, Grants, Recorded, ungranted

pytestmark = pytest.mark.asyncio(loop_scope="module")

# what the chart grants though no test here makes the call, each with why it is granted
GRANTED_BEYOND_THE_TESTS: dict[Call, str] = {}


async def jobs_day(kube: KubernetesDriver, runtime) -> None:
    cluster = kube.cluster
    queued = await kube.job_backend()  # Kueue is there (kueue='auto' finds it)
    held, files = await kube.launch(queued, SUCCEEDS, runtime)
    await kube._until(lambda: queued.waiting(held) and "quota" in queued.waiting(held), 10)
    await cluster.admit_workload(held.name)
    assert (await queued.wait(held, files, 20)).status == "succeeded"
    cancelled, _ = await kube.launch(queued, WAITS, runtime)
    await kube._until(lambda: cluster.workload_of(cancelled.name) is not None, 10)
    await queued.kill(cancelled)

    plain = kube.make_job_backend(kueue="off")
    kube.backends.append(plain)
    await plain.start()
    for end in ("cancel", "evict"):
        handle, files = await kube.launch(plain, WAITS, runtime)
        await kube.until_running(plain, handle, files)
        if end == "cancel":
            await plain.kill(handle)
        else:
            await kube.disrupt(handle)
            assert (await plain.wait(handle, files, 20)).lost
    handle, files = await kube.launch(plain, WAITS, runtime)
    await kube.until_running(plain, handle, files)
    await kube.forget(plain)  # the control plane restarts and re-attaches
    restarted = kube.make_job_backend(kueue="off")
    kube.backends.append(restarted)
    await restarted.start()
    kube.release(files)
    assert (await restarted.wait(handle, files, 20)).status == "succeeded"
    distributed, files = await kube.launch(restarted, WAITS, runtime.model_copy(
        update={"nodes": 3}))
    await kube.until_running(restarted, distributed, files)
    await restarted.kill(distributed)


async def build_day(kube: KubernetesDriver) -> None:
    from fermi_extension.backends.kubernetes.builds import KubeImageBuilder

    builder = KubeImageBuilder(kubeconfig=str(kube.kubeconfig), namespace="fermi")
    try:
        status, _ = await builder.build("b1", "FROM python:3.11\n", "registry.example.org/t/i:1",
                                        kube.tmp / "build.log", timeout=10)
        assert status == "succeeded"
    finally:
        await builder.close()


async def serving_day(kube: KubernetesDriver, runtime, mode: str) -> None:
    backend = kube.make_serving_backend(mode=mode)
    kube.serving.append(backend)
    await backend.start()
    stable = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    await kube.until_ready(backend, stable)
    second = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    canary = await backend.start_replica(replica_launch(kube, backend, "wine", "r2", "2", runtime))
    for generation in (1, 2):  # the routing table, written, then changed
        backend.publish({"generation": generation, "deployments": {"wine": {"weights": {
            "r1": 100 - 10 * generation, "r2": 10 * generation}}}})
        await kube.routed(backend, generation)
    await backend.stop_replica(second)
    await backend.stop_replica(canary)
    if mode == "deployments":  # its Deployment deleted by hand: re-created over its Service
        await kube.cluster.client.delete("Deployment", "fermi", "wine-v1")
        await kube._until(lambda: not backend.alive(stable), 10)
        stable = await backend.start_replica(
            replica_launch(kube, backend, "wine", "r1", "1", runtime))
    await backend.stop_replica(stable)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def day(tmp_path_factory) -> Recorded:
    """What the backends called in a representative day (this module's own record)."""
    runtime = default_runtime()
    async with KubernetesDriver(tmp_path_factory.mktemp("day"), kueue=True, kserve=True,
                                admit=False) as kube:
        await jobs_day(kube, runtime)
        await build_day(kube)
        for mode in ("deployments", "auto"):  # auto: KServe, which the cluster has
            await serving_day(kube, runtime, mode)
        return kube.cluster.emulator.calls


async def test_the_chart_grants_every_call_the_backends_make(day):
    assert {Call("create", "batch", "jobs", "fermi"), Call("get", "", "pods/log", "fermi"),
            Call("watch", "kueue.x-k8s.io", "workloads", "fermi"),
            Call("patch", "serving.kserve.io", "inferenceservices", "fermi"),
            Call("delete", "", "services", "fermi")} <= set(day.calls)  # the day was recorded
    assert set(day.calls) <= set(RECORDED.calls)  # and is part of the session's record
    missing = ungranted(RECORDED, Grants.of_chart())
    assert not missing, "hub_config/helm/rbac.yaml does not grant:\n" + "\n".join(missing)


async def test_the_chart_grants_nothing_beyond_what_the_backends_call(day):
    called = set(RECORDED.calls)
    beyond = [str(grant) for grant in sorted(Grants.of_chart().spelled_out())
              if grant not in called and grant not in GRANTED_BEYOND_THE_TESTS]
    assert not beyond, "hub_config/helm/rbac.yaml grants what no backend calls here (remove it, " \
        "or say in GRANTED_BEYOND_THE_TESTS why it is needed):\n" + "\n".join(beyond)
