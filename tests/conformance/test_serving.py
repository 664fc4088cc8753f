"""Inference services behave the same on every backend: a deployment's replicas start and
become ready, scale up and down, a canary revision gets its share of traffic through the routing
table, a restarted control plane adopts what runs, and deletion stops everything."""

from __future__ import annotations

import hashlib
import time

from .drivers import replica_launch


def routes(generation: int, split: dict[str, tuple[int, list]]) -> dict:
    return {"generation": generation, "deployments": {"wine": {
        "owner": "alice", "admins_allowed": True,
        "key_hashes": [hashlib.sha256(b"fk-test").hexdigest()], "model": "wine",
        "revisions": [{"name": name, "traffic_percent": percent,
                       "replicas": [{"id": rid, "url": handle.url, "state": "ready"}
                                    for rid, handle in replicas]}
                      for name, (percent, replicas) in split.items()]}}}


async def start(driver, backend, revision, version, runtime):
    launch = replica_launch(driver, backend, "wine", revision, version, runtime)
    handle = await backend.start_replica(launch)
    driver.replicas.append(handle)
    return launch.replica_id, handle


async def test_deploy_scale_canary_restart_and_delete(driver, runtime):
    backend = await driver.serving_backend()
    a = await start(driver, backend, "r1", "1", runtime)
    await driver.until_ready(backend, a[1])
    generation = int(time.time() * 1000)
    backend.publish(routes(generation, {"r1": (100, [a])}))
    await driver.routed(backend, generation)

    # scale up: a second replica of the same revision
    b = await start(driver, backend, "r1", "1", runtime)
    await driver.until_ready(backend, b[1])
    assert backend.alive(a[1]) and backend.alive(b[1])

    # canary: version 2 gets 20% of the traffic
    c = await start(driver, backend, "r2", "2", runtime)
    await driver.until_ready(backend, c[1])
    generation += 1
    backend.publish(routes(generation, {"r1": (80, [a, b]), "r2": (20, [c])}))
    await driver.routed(backend, generation)
    table = driver.routes(backend)["deployments"]["wine"]["revisions"]
    assert {r["name"]: r["traffic_percent"] for r in table} == {"r1": 80, "r2": 20}

    # scale down: one replica of r1 goes, the other keeps serving
    await backend.stop_replica(b[1])
    assert not backend.alive(b[1]) and backend.alive(a[1]) and await backend.ready(a[1])

    # a restarted control plane adopts the running replicas
    await driver.forget_serving(backend)
    backend = await driver.serving_backend()
    assert backend.alive(a[1]) and backend.alive(c[1])
    assert await backend.ready(a[1]) and await backend.ready(c[1])

    # delete: every replica stops
    for _, handle in (a, c):
        await backend.stop_replica(handle)
    assert not backend.alive(a[1]) and not backend.alive(c[1])


async def test_the_vllm_engine_needs_a_gpu_profile_and_says_so(driver):
    from fermi_extension.catalog.store import load_catalog_file
    from fermi_extension.paths import shipped

    catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
    cpu = next(p for p in catalog.profiles if not p.gpu)
    pool = next(p for p in catalog.pools if p.slug == cpu.pool)
    backend = driver.make_serving_backend()
    ok, reason = backend.availability(cpu, pool, "vllm")
    assert not ok and "GPU" in reason
    await backend.close(stop_all=False)
