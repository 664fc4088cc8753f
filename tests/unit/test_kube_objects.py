"""Kubernetes objects from the neutral spec: every object the backend would create, for every
profile × engine combination of the shipped catalogue, is valid for Kubernetes 1.31 to 1.37
(official schemas, strict: unknown fields fail). No cluster is involved."""

from __future__ import annotations

import json

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from fermi_extension.backends.kubernetes.objects import (  # noqa: E402
    JOBS_MOUNT,
    KUEUE_QUEUE_LABEL,
    Cluster,
    ServingRevision,
    Storage,
    make_inference_service,
    make_job,
    make_kaniko_build,
    make_kueue_objects,
    make_serving_objects,
)
from fermi_extension.catalog.store import load_catalog_file  # noqa: E402
from fermi_extension.paths import shipped  # noqa: E402
from fermi_extension.spec import DatasetMount, runtime_spec  # noqa: E402

VERSIONS = [f"1.{minor}.0" for minor in range(31, 38)]
CATALOG = load_catalog_file(shipped("hub_config") / "catalog.yaml")
RUNTIMES = [runtime_spec(image, profile) for image in CATALOG.images for profile in CATALOG.profiles]
IDS = [f"{r.image}-{r.profile}" for r in RUNTIMES]
CLUSTERS = {"pvc": Cluster(), "s3": Cluster(storage=Storage(kind="s3", s3_prefix="s3://b/jobs",
                                                            s3_secret="s3-creds"), use_kueue=False)}


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        if "." in obj["apiVersion"].split("/")[0] and obj["apiVersion"].split("/")[0] not in (
                "apps", "batch", "policy", "autoscaling"):
            continue  # custom resources: checked by shape below, no official schema
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def container_of(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("runtime", RUNTIMES, ids=IDS)
@pytest.mark.parametrize("storage", sorted(CLUSTERS))
@pytest.mark.parametrize("nodes", [1, 3])
def test_training_job_objects_are_valid(runtime, storage, nodes):
    cluster = CLUSTERS[storage]
    objects = make_job("a1b2c3", "alice@example.org", runtime, cluster,
                       env={"MLFLOW_RUN_ID": "r1"}, timeout_seconds=3600, nodes=nodes)
    validate_all(objects)
    job = objects[0]
    limits = container_of(job)["resources"]["limits"]
    assert (runtime.gpu_resource in limits) == bool(runtime.gpu)  # never a 0-GPU limit
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 3600
    assert (job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == runtime.pool) == cluster.use_kueue
    assert job["spec"].get("suspend", False) == cluster.use_kueue
    pod = job["spec"]["template"]["spec"]
    assert pod.get("nodeSelector", {}) == runtime.node_selector
    if nodes > 1:
        assert job["spec"]["completionMode"] == "Indexed" and objects[1]["kind"] == "Service"
    if runtime.gpu:
        assert any(v["mountPath"] == "/dev/shm" for v in container_of(job)["volumeMounts"])
    if storage == "pvc":  # every rank sees its own job's folder only
        jobs = [m for m in container_of(job)["volumeMounts"] if m["name"] == "jobs"]
        assert jobs == [{"name": "jobs", "mountPath": f"{JOBS_MOUNT}/a1b2c3", "subPath": "a1b2c3"}]


# -- what a job pod may mount (security review, hole A) ------------------------------------------


def volume_dataset(location: str, name: str = "wine") -> DatasetMount:
    return DatasetMount(name=name, version="1", location=location, kind="volume",
                        env=f"FERMI_DATASET_{name.upper()}")


@pytest.mark.parametrize("nodes", [1, 3])
def test_a_job_pod_mounts_only_its_own_folder_of_the_jobs_claim(nodes):
    # today's pod mounts the whole claim at /fermi/jobs: every user's job folder, read-write
    runtime = RUNTIMES[0]
    job = make_job("a1b2c3", "alice", runtime, Cluster(), nodes=nodes)[0]
    validate_all([job])
    pod = job["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    for mount in container_of(job)["volumeMounts"]:
        if claims.get(mount["name"]) == "fermi-jobs":
            assert mount["subPath"] == "a1b2c3" and mount["mountPath"] == f"{JOBS_MOUNT}/a1b2c3"
    # the pod runs the job entry point on that folder (input.ipynb, output.ipynb, work/ in it),
    # with the attempt it was made for
    command = container_of(job)["command"]
    assert command[:4] == ["python", "-m", "fermi_extension.jobs.entry", f"{JOBS_MOUNT}/a1b2c3"]
    spec = json.loads(command[command.index("--spec") + 1])
    assert (spec["job_id"], spec["kernel"]) == ("a1b2c3", runtime.kernel)
    for bad in ("..", "a/b", ""):
        with pytest.raises(ValueError, match="job id"):
            make_job(bad, "alice", runtime, Cluster())


def test_a_pod_mounts_a_dataset_only_on_a_claim_the_admin_lists():
    runtime = RUNTIMES[0]
    allowed = Cluster(dataset_claims=("datasets",))
    with_data = runtime.model_copy(update={"datasets": [volume_dataset("pvc://datasets/wine/v2")]})
    job = make_job("a1b2c3", "alice", with_data, allowed)[0]
    validate_all([job])
    assert {"name": "dataset-0", "persistentVolumeClaim": {"claimName": "datasets",
            "readOnly": True}} in job["spec"]["template"]["spec"]["volumes"]
    # today's builder mounts whatever claim the spec names: bob's home, the jobs claim
    for location, cluster, says in [
            ("pvc://claim-bob/home", allowed, "not one the admin lists"),
            ("pvc://datasets/wine", Cluster(), "not one the admin lists"),
            ("pvc://fermi-jobs/b9c8d7", allowed, "every user's jobs"),
            ("pvc://fermi-jobs", Cluster(dataset_claims=("fermi-jobs",)), "every user's jobs")]:
        spec = runtime.model_copy(update={"datasets": [volume_dataset(location)]})
        with pytest.raises(ValueError, match=says):
            make_job("a1b2c3", "alice", spec, cluster)
    climbing = runtime.model_copy(
        update={"datasets": [volume_dataset("pvc://datasets/wine/../../x")]})
    with pytest.raises(ValueError, match=r"\.\."):
        make_job("a1b2c3", "alice", climbing, allowed)


@pytest.mark.parametrize("runtime", RUNTIMES, ids=IDS)
@pytest.mark.parametrize("engine", ["auto", "vllm"])
def test_serving_objects_are_valid(runtime, engine):
    if engine == "vllm" and not runtime.gpu:
        pytest.skip("the vllm engine is refused on CPU profiles")
    rev = ServingRevision("wine", "alice", "wine-classifier", "3", "r2", "models:/wine-classifier/3",
                          engine)
    objects = make_serving_objects(rev, runtime, Cluster(), min_replicas=1, max_replicas=4,
                                   target_concurrency=2.5)
    validate_all(objects)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    hpa = objects[2]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "2500m"
    container = container_of(objects[0])
    probe = container.get("startupProbe") if engine == "vllm" else container["readinessProbe"]
    assert probe is not None


def test_inference_service_canary_and_kueue_objects():
    runtime = RUNTIMES[0]
    stable = ServingRevision("wine", "alice", "m", "1", "r1", "models:/m/1")
    canary = ServingRevision("wine", "alice", "m", "2", "r2", "models:/m/2")
    isvc = make_inference_service(stable, runtime, Cluster(), min_replicas=1, max_replicas=3,
                                  target_concurrency=2, canary=canary, canary_percent=20)
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert predictor["model"]["storageUri"] == "models:/m/2"
    assert predictor["model"]["protocolVersion"] == "v2"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    objects = make_kueue_objects(CATALOG, "fermi")
    queues = {o["metadata"]["name"]: o for o in objects if o["kind"] == "LocalQueue"}
    assert set(queues) == {p.slug for p in CATALOG.pools}
    gpu_queue = next(o for o in objects if o["kind"] == "ClusterQueue" and "gpu" in o["metadata"]["name"])
    quotas = gpu_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {"name": "nvidia.com/gpu", "nominalQuota": 8} in quotas


def run_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fermi_extension.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_dry_runs_print_every_object_without_a_platform(tmp_path):
    import yaml

    template = str(shipped("templates") / "tabular-classifier.ipynb")
    job = run_cli("--url", "http://127.0.0.1:9", "jobs", "submit", template, "-p", "C", "0.3",
                  "--profile", "gpu-a100-1", "--nodes", "2", "--dry-run", "-o", "yaml",
                  "--backend", "kubernetes")
    assert job.returncode == 0, job.stderr
    objects = list(yaml.safe_load_all(job.stdout))
    assert [o["kind"] for o in objects] == ["Job", "Service"]
    command = objects[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert json.loads(command[command.index("--spec") + 1])["parameters"] == {"C": 0.3}
    validate_all(objects)
    deploy = run_cli("deploy", "wine", "--version", "3", "--min", "1", "--max", "3",
                     "--dry-run", "-o", "yaml", "--backend", "kubernetes")
    assert deploy.returncode == 0, deploy.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(deploy.stdout)]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    bad = run_cli("jobs", "submit", template, "-p", "epochs", "3", "--dry-run")
    assert bad.returncode == 1 and "Unknown parameter 'epochs'" in bad.stderr
    vllm = run_cli("deploy", "wine", "--version", "3", "--engine", "vllm", "--dry-run")
    assert vllm.returncode == 1 and "GPU" in vllm.stderr
    custom = tmp_path / "catalog.yaml"
    custom.write_text((shipped("hub_config") / "catalog.yaml").read_text()
                      .replace("slug: cpu-small", "slug: cpu-tiny"))
    tiny = run_cli("jobs", "submit", template, "--profile", "cpu-tiny", "--dry-run",
                   "--catalog", str(custom))
    assert tiny.returncode == 0, tiny.stderr


def test_kaniko_build_objects_are_valid():
    objects = make_kaniko_build("b1", "FROM python:3.11\nRUN pip install torch\n",
                                "registry.example.org/team/torch:1", Cluster())
    validate_all(objects)
    config_map, job = objects
    assert config_map["data"]["Dockerfile"].startswith("FROM python")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--destination=registry.example.org/team/torch:1" in args
