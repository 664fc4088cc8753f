"""Watches survive what API servers do to them (the stand-in does it: ``FakeCluster``'s
``break_watches``, ``watches_refused``, ``compact``): a dropped connection is resumed from the
last resourceVersion seen, with what changed meanwhile and nothing twice; an expired
resourceVersion (410 Gone, as an ERROR event or as the answer to the watch request) is listed
again and what changed meanwhile is told once; a watch that ends after its timeoutSeconds
resumes from its last BOOKMARK. Through ``KubeJobBackend``: a job that ends while its watch is
broken is still seen to end, with its log once."""

from __future__ import annotations

import asyncio

import pytest

from fermi_extension.backends.kubernetes.watch import Informer
from tests.conformance.drivers import WAITS, Driver
from tests.kube.simulator import CONTROLLERS_TOKEN, NAMESPACE, caller, client_for

LABELS = {"app.kubernetes.io/managed-by": "watch-test"}


def config_map(name: str, value: str = "1", namespace: str = NAMESPACE) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
            "data": {"value": value}}


def requests_of(cluster, resource: str, *, watch: bool) -> list:
    """The watch (or list) requests the stand-in received for ``resource`` from clients."""
    return [r for r in cluster.requests("GET", f"/{resource}")
            if (r.params.get("watch") == "true") == watch and caller(r) != CONTROLLERS_TOKEN]


async def until(predicate, timeout: float = 15):
    await Driver._until(predicate, timeout)


@pytest.fixture
async def informer(kube):
    """An Informer of ConfigMaps (nothing in the stand-in acts on them) with its own identity,
    and every change it tells its listeners."""
    client = client_for(kube.cluster.url, "watch-test")
    watched = Informer(client, "ConfigMap", NAMESPACE, LABELS, retry_seconds=0.1)
    watched.told = []
    watched.listeners.append(lambda kind, obj: watched.told.append(
        (kind, obj["metadata"]["name"], obj["metadata"].get("resourceVersion"))))
    yield watched
    await watched.stop()
    await client.close()


async def changes_meanwhile(world) -> dict[str, str]:
    """While the informer cannot watch: one ConfigMap added, one changed, one deleted."""
    added = await world.create(config_map("added"))
    changed = await world.patch("ConfigMap", NAMESPACE, "changed", {"data": {"value": "2"}})
    await world.delete("ConfigMap", NAMESPACE, "deleted")
    return {"added": added["metadata"]["resourceVersion"],
            "changed": changed["metadata"]["resourceVersion"],
            "deleted": str(int(changed["metadata"]["resourceVersion"]) + 1)}


async def start_with_three(informer, world) -> str:
    """The informer watching ``changed``, ``deleted`` and ``same``; the last resourceVersion
    it was told of."""
    for name in ("changed", "deleted", "same"):
        await world.create(config_map(name))
    await informer.start()
    last = await world.patch("ConfigMap", NAMESPACE, "same", {"data": {"value": "1"}})
    await until(lambda: any(t[1] == "same" for t in informer.told))
    return last["metadata"]["resourceVersion"]


async def test_a_dropped_watch_resumes_from_the_last_resource_version_with_what_changed(
        kube, informer):
    cluster, world = kube.cluster, kube.cluster.client
    last_seen = await start_with_three(informer, world)
    lists = len(requests_of(cluster, "configmaps", watch=False))
    watches = len(requests_of(cluster, "configmaps", watch=True))
    told = len(informer.told)
    with cluster.watches_refused("ConfigMap"):
        assert cluster.break_watches("ConfigMap", "drop") == 1
        versions = await changes_meanwhile(world)
        await until(lambda: len(requests_of(cluster, "configmaps", watch=True)) > watches)
    await until(lambda: "deleted" not in informer.objects and "added" in informer.objects)

    resumed = requests_of(cluster, "configmaps", watch=True)[watches:]
    assert {r.params["resourceVersion"] for r in resumed} == {last_seen}
    assert len(requests_of(cluster, "configmaps", watch=False)) == lists  # not listed again
    # each change once, in order, none of what it had seen before
    assert informer.told[told:] == [("ADDED", "added", versions["added"]),
                                    ("MODIFIED", "changed", versions["changed"]),
                                    ("DELETED", "deleted", versions["deleted"])]
    assert informer.objects["changed"]["data"] == {"value": "2"}


@pytest.mark.parametrize("expired_as", ["status", "event"])
async def test_an_expired_watch_lists_again_and_tells_only_what_changed(
        kube, informer, expired_as):
    """The watch resumes from a resourceVersion compacted meanwhile: 410 Gone, as the answer to
    the watch request or as an ERROR event on it; listed again, the informer tells its listeners
    and waiters what changed since it last saw, each once, and nothing else."""
    cluster, world = kube.cluster, kube.cluster.client
    last_seen = await start_with_three(informer, world)
    lists = len(requests_of(cluster, "configmaps", watch=False))
    told = len(informer.told)
    woken = {"same": 0, "changed": 0}

    def counting(name):
        def predicate(obj):
            woken[name] += 1
            return obj is not None and obj["data"]["value"] == "2"
        return predicate

    waiters = [asyncio.create_task(informer.wait_for(name, counting(name), 30))
               for name in woken]
    await until(lambda: woken == {"same": 1, "changed": 1})
    deleted = informer.get("deleted")["metadata"]["resourceVersion"]  # as it was last seen
    with cluster.watches_refused("ConfigMap"):
        assert cluster.break_watches("ConfigMap", "drop") == 1
        versions = await changes_meanwhile(world)
        cluster.compact(expired_as)
        watches = len(requests_of(cluster, "configmaps", watch=True))
    await until(lambda: "deleted" not in informer.objects and "added" in informer.objects)

    stale = requests_of(cluster, "configmaps", watch=True)[watches]
    assert stale.params["resourceVersion"] == last_seen  # answered 410: then listed
    assert len(requests_of(cluster, "configmaps", watch=False)) == lists + 1
    assert await waiters[1] is True
    # each change once (a list says what is, not in which order it came), nothing unchanged
    assert sorted(informer.told[told:]) == [
        ("ADDED", "added", versions["added"]), ("DELETED", "deleted", deleted),
        ("MODIFIED", "changed", versions["changed"])]
    assert woken["same"] == 1  # an unchanged object's waiter slept on
    waiters[0].cancel()
    await asyncio.gather(waiters[0], return_exceptions=True)


async def test_a_watch_that_times_out_resumes_from_its_bookmark(kube):
    """At its timeoutSeconds the stand-in ends a watch cleanly, with a BOOKMARK of the current
    resourceVersion (which changes of other namespaces advanced); the watch resumes from it,
    without listing again."""
    cluster, world = kube.cluster, kube.cluster.client
    client = client_for(cluster.url, "watch-test")
    informer = Informer(client, "ConfigMap", NAMESPACE, LABELS, timeout_seconds=1)
    try:
        await informer.start()
        await world.create(config_map("mine"))
        elsewhere = await world.create(config_map("theirs", namespace="elsewhere"))
        await until(lambda: len(requests_of(cluster, "configmaps", watch=True)) >= 2, 10)
        first, second = requests_of(cluster, "configmaps", watch=True)[:2]
        assert second.params["resourceVersion"] == elsewhere["metadata"]["resourceVersion"] \
            != first.params["resourceVersion"]
        assert len(requests_of(cluster, "configmaps", watch=False)) == 1
        await world.patch("ConfigMap", NAMESPACE, "mine", {"data": {"value": "2"}})
        await until(lambda: informer.get("mine")["data"] == {"value": "2"})
    finally:
        await informer.stop()
        await client.close()


@pytest.mark.parametrize("breakage", ["dropped", "expired", "compacted"])
async def test_a_job_that_ends_while_its_watch_is_broken_is_still_seen_to_end(
        kube, runtime, breakage):
    """dropped: the connection goes and comes back (resumed from its resourceVersion);
    expired: an ERROR event 410 (listed again); compacted: the connection goes and the
    resourceVersion it resumes from is gone meanwhile (410 on the watch request, listed again)."""
    cluster = kube.cluster
    backend = await kube.job_backend()
    handle, files = await kube.launch(backend, WAITS, runtime)
    await kube.until_running(backend, handle, files)
    outcome = asyncio.create_task(backend.wait(handle, files, 60))
    watches = len(requests_of(cluster, "jobs", watch=True))
    with cluster.watches_refused("Job"), cluster.watches_refused("Pod"):
        for kind in ("Job", "Pod"):
            assert cluster.break_watches(kind, "expire" if breakage == "expired" else "drop") == 1
        kube.release(files)
        await until(lambda: not cluster._held)  # the pod succeeded, the Job is Complete
        await until(lambda: len(requests_of(cluster, "jobs", watch=True)) > watches)
        assert not outcome.done()
        if breakage == "compacted":
            cluster.compact()
    assert (await asyncio.wait_for(outcome, 30)).status == "succeeded"
    log = files.log.read_text()
    assert log.count("Ending Cell 2") == 1 and log.count("Input Notebook") == 1, log
