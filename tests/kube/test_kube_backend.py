"""The Kubernetes backend against the cluster stand-in: what it creates is valid for Kubernetes
1.31–1.37 (strict), jobs are watched (API calls per job do not grow with the number of jobs),
cancel deletes with propagation, Kueue queueing, KServe canaries, Kaniko builds, the switch."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conformance.drivers import FAILS, SUCCEEDS, WAITS, replica_launch

kubernetes_validate = pytest.importorskip("kubernetes_validate")

VERSIONS = [f"1.{minor}.0" for minor in range(31, 38)]
BUILT_IN = ("v1", "batch/v1", "apps/v1", "autoscaling/v2", "policy/v1")


def validate(objects: list[dict]) -> int:
    """Validate what was sent (the requests' bodies), as the API server would receive them."""
    count = 0
    for obj in objects:
        if obj.get("apiVersion") in BUILT_IN:
            for version in VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
            count += 1
    return count


def sent(cluster, method: str = "POST") -> list[dict]:
    return [r.data for r in cluster.requests(method)
            if isinstance(r.data, dict) and "kind" in r.data]


async def test_everything_the_backend_creates_is_valid_for_kubernetes(kube, runtime):
    from tests.conformance.drivers import default_runtime

    jobs = await kube.job_backend()
    for nb in (SUCCEEDS, FAILS):
        handle, files = await kube.launch(jobs, nb, default_runtime("gpu-a100-1"))
        await jobs.wait(handle, files, 10)
    serving = await kube.serving_backend()
    handle = await serving.start_replica(
        replica_launch(kube, serving, "wine", "r1", "1", default_runtime("gpu-a100-1")))
    await serving.start_replica(replica_launch(kube, serving, "wine", "r1", "1", runtime))
    serving.publish({"generation": 1, "deployments": {}})
    await kube.routed(serving, 1)
    await serving.stop_replica(handle)
    created = [o for o in sent(kube.cluster) if o["kind"] not in ("Pod",)]
    created = [o for o in created if (o.get("metadata", {}).get("labels") or {}).get(
        "app.kubernetes.io/managed-by") == "fermi"]
    kinds = {o["kind"] for o in created}
    assert {"Job", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert validate(created) == len(created)
    job = next(o for o in created if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["tolerations"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # the control plane's tracking proxy, never the tracking server itself, with the job's token
    assert env["MLFLOW_TRACKING_URI"] == "http://fermi-control-plane:10101/services/fermi/tracking"
    assert "KUBERNETES_SERVICE_HOST" not in env


async def test_jobs_are_watched_not_polled(kube, runtime):
    """API calls per job stay constant: create, read its log, delete; two watches for all."""
    backend = await kube.job_backend()
    base = dict(backend.client.calls)
    for count in (5, 20):
        before = sum(backend.client.calls.values())
        launched = [await kube.launch(backend, SUCCEEDS, runtime) for _ in range(count)]
        outcomes = await asyncio.gather(*(backend.wait(h, f, 20) for h, f in launched))
        assert {o.status for o in outcomes} == {"succeeded"}
        per_job = (sum(backend.client.calls.values()) - before) / count
        assert per_job <= 4, backend.client.calls  # POST job, GET log, DELETE job (+ a follow)
    assert backend.client.calls["WATCH"] == base.get("WATCH", 0) == 2


async def test_cancel_deletes_the_job_with_propagation(kube, runtime):
    backend = await kube.job_backend()
    handle, files = await kube.launch(backend, WAITS, runtime)
    await kube.until_running(backend, handle, files)
    await backend.kill(handle)
    deletes = kube.cluster.requests("DELETE", handle.name)
    assert deletes and deletes[0].data["propagationPolicy"] == "Background"
    await kube.until_ended(backend, handle)
    assert not [p for p in kube.cluster.objects("v1/pods")
                if p["metadata"]["labels"].get("job-name") == handle.name]


@pytest.mark.parametrize("cluster_options", [{"kueue": True}], indirect=True)
async def test_with_kueue_jobs_start_suspended_in_their_pools_queue(kube, runtime):
    backend = await kube.job_backend()
    handle, files = await kube.launch(backend, SUCCEEDS, runtime)
    job = next(o for o in sent(kube.cluster) if o["kind"] == "Job")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == runtime.pool
    outcome = await backend.wait(handle, files, 10)  # Kueue admitted it
    assert outcome.status == "succeeded"


async def test_without_kueue_jobs_are_not_suspended(kube, runtime):
    backend = await kube.job_backend()
    await kube.launch(backend, SUCCEEDS, runtime)
    job = next(o for o in sent(kube.cluster) if o["kind"] == "Job")
    assert "suspend" not in job["spec"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


async def test_an_out_of_memory_pod_is_the_notebooks_failure_not_a_lost_attempt(kube, runtime):
    backend = await kube.job_backend()
    handle, files = await kube.launch(backend, WAITS, runtime)
    await kube.until_running(backend, handle, files)
    await kube.cluster.oom_kill(handle.name)
    outcome = await backend.wait(handle, files, 10)
    assert outcome.status == "failed" and not outcome.lost and "memory" in outcome.reason


@pytest.mark.parametrize("cluster_options", [{"kserve": True}], indirect=True)
async def test_with_kserve_each_revision_is_an_inference_service_and_the_router_splits(
        kube, runtime):
    """KServe splits traffic by canaryTrafficPercent only in Serverless mode: in RawDeployment
    mode each revision is its own InferenceService and the routing table does the split."""
    backend = await kube.serving_backend()
    assert backend.kserve
    stable = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    await kube.until_ready(backend, stable)
    second = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    canary = await backend.start_replica(replica_launch(kube, backend, "wine", "r2", "2", runtime))
    await kube.until_ready(backend, canary)
    services = {o["metadata"]["name"]: o for o in
                kube.cluster.objects("serving.kserve.io/v1beta1/inferenceservices")}
    assert set(services) == {"wine-v1", "wine-v2"}
    v1 = services["wine-v1"]
    assert v1["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert (v1["spec"]["predictor"]["minReplicas"], v1["spec"]["predictor"]["maxReplicas"]) == (2, 2)
    assert v1["spec"]["predictor"]["model"]["storageUri"] == "models:/wine/1"
    assert "canaryTrafficPercent" not in v1["spec"]["predictor"]
    assert canary.url == "http://wine-v2-predictor.fermi.svc.cluster.local"
    await backend.stop_replica(second)
    v1 = next(o for o in kube.cluster.objects("serving.kserve.io/v1beta1/inferenceservices")
              if o["metadata"]["name"] == "wine-v1")
    assert v1["spec"]["predictor"]["minReplicas"] == 1
    await backend.stop_replica(canary)  # rollback: the canary's InferenceService goes
    await backend.stop_replica(stable)
    assert not kube.cluster.objects("serving.kserve.io/v1beta1/inferenceservices")


async def test_the_last_replica_of_a_revision_takes_its_objects_with_it(kube, runtime):
    backend = await kube.serving_backend()
    a = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    b = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    (deployment,) = kube.cluster.objects("apps/v1/deployments")
    assert deployment["spec"]["replicas"] == 2
    assert len(json.loads(deployment["metadata"]["annotations"]["fermi.io/replicas"])) == 2
    await backend.stop_replica(a)
    (deployment,) = kube.cluster.objects("apps/v1/deployments")
    assert deployment["spec"]["replicas"] == 1
    await backend.stop_replica(b)
    for resource in ("apps/v1/deployments", "v1/services", "policy/v1/poddisruptionbudgets"):
        assert not kube.cluster.objects(resource)


async def test_a_model_server_answers_only_the_router_and_its_probes_show_its_key(
        kube, runtime, caplog):
    """The key is derived from the router's token and the Service URL the router is handed, as
    the router derives it; vLLM takes it as its API key (its /health stays open)."""
    import dataclasses

    from fermi_extension.serving.replica_key import replica_key
    from tests.conformance.drivers import default_runtime

    backend = kube.make_serving_backend(router_token="router-secret")
    kube.serving.append(backend)
    await backend.start()
    wine = await backend.start_replica(replica_launch(kube, backend, "wine", "r1", "1", runtime))
    chat = await backend.start_replica(dataclasses.replace(
        replica_launch(kube, backend, "chat", "r1", "1", default_runtime("gpu-a100-1")), engine="vllm"))
    created = {o["metadata"]["name"]: o for o in sent(kube.cluster) if o["kind"] == "Deployment"}
    assert validate(list(created.values())) == 2

    def server(name):
        return created[name]["spec"]["template"]["spec"]["containers"][0]

    key = replica_key("router-secret", wine.url)
    assert {e["name"]: e["value"] for e in server("wine-v1")["env"]}["FERMI_REPLICA_KEY"] == key
    for probe in ("readinessProbe", "livenessProbe"):
        assert server("wine-v1")[probe]["httpGet"]["httpHeaders"] == [
            {"name": "Authorization", "value": f"Bearer {key}"}]
    env = {e["name"]: e["value"] for e in server("chat-v1")["env"]}
    assert env["VLLM_API_KEY"] == replica_key("router-secret", chat.url) and "FERMI_REPLICA_KEY" not in env
    assert "httpHeaders" not in server("chat-v1")["readinessProbe"]["httpGet"]

    # without the router's token there is no key to derive: said once, not per replica
    plain = kube.make_serving_backend(router_token="")
    kube.serving.append(plain)
    await plain.start()
    with caplog.at_level("WARNING"):
        for name in ("open-a", "open-b"):
            await plain.start_replica(replica_launch(kube, plain, name, "r1", "1", runtime))
    opened = {o["metadata"]["name"]: o for o in sent(kube.cluster) if o["kind"] == "Deployment"}
    assert not any(e["name"] == "FERMI_REPLICA_KEY"
                   for e in opened["open-a-v1"]["spec"]["template"]["spec"]["containers"][0].get("env", []))
    assert sum("without credentials" in r.getMessage() for r in caplog.records) == 1


async def test_an_image_build_is_a_kaniko_job_and_its_log(kube, tmp_path):
    from fermi_extension.backends.kubernetes.builds import KubeImageBuilder

    builder = KubeImageBuilder(kubeconfig=str(kube.kubeconfig), namespace="fermi")
    try:
        log = tmp_path / "build.log"
        status, reason = await builder.build("b1", "FROM python:3.11\n",
                                             "registry.example.org/team/img:1", log, timeout=10)
        assert (status, reason) == ("succeeded", None)
        (pod_log,) = kube.cluster.logs.values()  # the build pod's, read through the API
        assert log.read_text() == pod_log.decode()
        made = [o for o in sent(kube.cluster) if o["kind"] in ("ConfigMap", "Job")]
        assert validate(made) == 2
        assert "--destination=registry.example.org/team/img:1" in \
            made[1]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not kube.cluster.objects("batch/v1/jobs")  # cleaned up
    finally:
        await builder.close()


def test_one_switch_selects_the_backends(monkeypatch):
    from fermi_extension.control_plane.app import FermiService

    monkeypatch.setenv("FERMI_BACKEND", "kubernetes")
    service = FermiService()
    assert service.job_backend_class.__name__ == "KubeJobBackend"
    assert service.serving_backend_class.__name__ == "KubeServingBackend"
    monkeypatch.setenv("FERMI_BACKEND", "local")
    assert FermiService().job_backend_class.__name__ == "LocalJobBackend"
    monkeypatch.setenv("FERMI_BACKEND", "kubernets")
    with pytest.raises(Exception, match="kubernetes"):
        FermiService().backend


def test_the_hub_config_picks_the_spawner_from_the_same_switch(monkeypatch, tmp_path):
    from traitlets.config import Config

    from fermi_extension.paths import shipped

    env = {"FERMI_DATA_DIR": str(tmp_path), "FERMI_PUBLIC_URL": "http://x", "FERMI_PROXY_TOKEN": "t",
           "FERMI_SERVING_PORT": "1", "FERMI_SERVING_URL": "http://x:1",
           **{f"FERMI_{n}_PORT": "1" for n in ("PUBLIC", "HUB", "PROXY_API", "SERVICE", "TRACKING")}}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    source = (shipped("hub_config") / "jupyterhub_config.py").read_text()
    for backend, spawner in (("kubernetes", "fermi_spawner.kubernetes.FermiKubeSpawner"),
                             ("local", "fermi_spawner.local.FermiLocalSpawner")):
        monkeypatch.setenv("FERMI_BACKEND", backend)
        c = Config()
        exec(compile(source, "jupyterhub_config.py", "exec"),
             {"get_config": lambda: c, "load_subconfig": lambda path: None})
        assert c.JupyterHub.spawner_class == spawner


def test_the_install_manifests_are_valid_and_least_privilege():
    import yaml

    from fermi_extension.paths import shipped

    helm = shipped("hub_config") / "helm"
    objects = [o for name in ("rbac.yaml", "extras.yaml")
               for o in yaml.safe_load_all((helm / name).read_text()) if o]
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    role = next(o for o in objects if o["kind"] == "Role")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    # pods only through Jobs and Deployments, no Secret readable, no wildcard (and no more than
    # the backends call: test_rbac.py)
    assert "create" not in verbs[("", "pods")] and ("", "secrets") not in verbs
    assert not any("*" in v for v in verbs.values())
    values = yaml.safe_load((helm / "values.yaml").read_text())
    assert values["hub"]["extraEnv"]["FERMI_BACKEND"] == "kubernetes"
    assert values["hub"]["db"]["url"].startswith("postgresql+psycopg://")


def test_datasets_are_mounted_or_handed_over_and_paths_refused(runtime):
    from fermi_extension.backends.kubernetes.jobs import KubeJobBackend
    from fermi_extension.backends.kubernetes.objects import Cluster, make_job
    from fermi_extension.spec import DatasetMount

    volume = DatasetMount(name="wine", version="2", location="pvc://datasets/wine/v2",
                          kind="volume", env="FERMI_DATASET_WINE")
    bucket = DatasetMount(name="logs", version="1", location="s3://bucket/logs/v1", kind="s3",
                          env="FERMI_DATASET_LOGS")
    with_data = runtime.model_copy(update={"datasets": [volume, bucket]})
    (job,) = make_job("j1", "alice", with_data, Cluster(dataset_claims=("datasets",)))
    validate([job])
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "dataset-0")
    assert mount["readOnly"] and mount["subPath"] == "wine/v2"
    # mounted where the entry point finds it (and names it in $FERMI_DATASET_WINE, as on every
    # backend: tests/conformance/test_lineage.py), handed to it with the attempt
    assert mount["mountPath"] == "/fermi/jobs/j1/work/datasets/wine"
    spec = json.loads(container["command"][container["command"].index("--spec") + 1])
    assert [(d["name"], d["kind"], d["env"]) for d in spec["datasets"]] == [
        ("wine", "volume", "FERMI_DATASET_WINE"), ("logs", "s3", "FERMI_DATASET_LOGS")]
    assert {"name": "dataset-0", "persistentVolumeClaim": {"claimName": "datasets",
                                                           "readOnly": True}} in pod["volumes"]
    folder = DatasetMount(name="x", version="1", location="/srv/data/x", kind="path", env="X")
    assert "cannot see" in KubeJobBackend().dataset_refusal(folder)
    assert KubeJobBackend().dataset_refusal(volume) is None


async def test_a_distributed_job_is_an_indexed_job_with_its_rendezvous_service(kube, runtime):
    backend = await kube.job_backend()
    await kube.launch(backend, SUCCEEDS, runtime.model_copy(update={"nodes": 3}))
    created = sent(kube.cluster)
    job = next(o for o in created if o["kind"] == "Job")
    service = next(o for o in created if o["kind"] == "Service")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) \
        == ("Indexed", 3, 3)
    assert service["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORLD_SIZE"] == "3"
    assert validate([job, service]) == 2
    # cancelling takes the rendezvous Service (not a dependent of the Job) with the Job
    from fermi_extension.jobs.backend import Handle

    name = job["metadata"]["name"]
    await backend.kill(Handle(None, None, name))
    deleted = [str(r.url) for r in kube.cluster.requests("DELETE", name)]
    assert any("/jobs/" in url for url in deleted) and any("/services/" in url for url in deleted)
