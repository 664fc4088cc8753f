"""The API stand-in answers ``kubernetes_asyncio``, called as KubeSpawner calls it (its
reflectors' watch, its Pod create), as an API server does, so that KubeSpawner's own start(),
poll() and stop() run against it (``tests/containers/test_kube_play.py``): ``watch=True`` is a
watch, a created object is in the namespace of the request's path, a new Pod is Pending at once.
The calls carry ``rbac.SPAWNER_TOKEN``: the session checks Zero to JupyterHub's hub Role grants
them."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client, watch

from tests.kube.rbac import SPAWNER_RECORDED, SPAWNER_TOKEN, Call
from tests.kube.simulator import NAMESPACE, kubeconfig_for

POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "jupyter-ann", "labels": {"component": "singleuser-server"}},
       "spec": {"containers": [{"name": "notebook", "image": "localhost/fermi/python:0.1.0"}]}}


@pytest.fixture
async def core(kube):
    """CoreV1Api on the stand-in, configured from a kubeconfig with KubeSpawner's token."""
    from kubernetes_asyncio.config import load_kube_config

    configuration = client.Configuration()
    path = kubeconfig_for(kube.cluster.url, kube.tmp / "hub.kubeconfig", SPAWNER_TOKEN)
    await load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield client.CoreV1Api(api)


async def test_kubespawners_watch_sees_its_new_pod_pending_in_its_namespace(core):
    watching = watch.Watch()
    events = watching.stream(core.list_namespaced_pod, NAMESPACE,
                             label_selector="component=singleuser-server", timeout_seconds=10)
    async with watching:
        first = asyncio.ensure_future(events.__anext__())  # the watch opens with no pods
        created = await core.create_namespaced_pod(NAMESPACE, POD)  # no namespace in the body
        event = await asyncio.wait_for(first, 10)
    assert (created.metadata.namespace, created.status.phase) == (NAMESPACE, "Pending")
    assert event["type"] == "ADDED"
    assert event["raw_object"]["metadata"]["namespace"] == NAMESPACE  # what a reflector keys on
    assert event["raw_object"]["status"] == {"phase": "Pending"}
    assert Call("watch", "", "pods", NAMESPACE) in SPAWNER_RECORDED.calls


async def test_a_pod_sent_with_a_status_gets_the_api_servers(core):
    sent = {**POD, "status": {"phase": "Running", "podIP": "10.0.0.9"}}
    created = await core.create_namespaced_pod(NAMESPACE, sent)
    assert created.status.phase == "Pending" and created.status.pod_ip is None


async def test_a_list_asked_with_watch_False_is_a_list(core):
    await core.create_namespaced_pod(NAMESPACE, POD)
    listed = await core.list_namespaced_pod(NAMESPACE, watch=False)  # sent as watch=False
    assert [pod.metadata.name for pod in listed.items] == ["jupyter-ann"]


async def test_a_create_naming_another_namespace_than_its_path_is_refused(core):
    elsewhere = {**POD, "metadata": {**POD["metadata"], "namespace": "other"}}
    with pytest.raises(client.ApiException) as refused:
        await core.create_namespaced_pod(NAMESPACE, elsewhere)
    assert refused.value.status == 400
    assert "does not match the namespace" in refused.value.body
