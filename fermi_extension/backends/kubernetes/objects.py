"""Kubernetes objects built by pure functions from the neutral spec (no cluster, no client).

Every function returns plain dicts, exactly what is applied; tests validate them against the
official schemas of each supported Kubernetes version (kubernetes-validate, strict mode).
Custom resources (Kueue, KServe) follow those projects' v1beta1 APIs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ... import __version__
from ...catalog.schema import Catalog
from ...jobs.entry import JobSpec, entry_command
from ...spec import RuntimeSpec

MANAGED_BY = {"app.kubernetes.io/managed-by": "fermi"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOBS_MOUNT = "/fermi/jobs"
MODELS_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a model, and so do we
# The model server's port, which a revision's Service also declares (port = targetPort): its URL
# then names the same port whether the name resolves to the Service or straight to a pod.
MODEL_SERVER_PORT = 8080
MODEL_URI_PREFIX = "models:/"  # a registered model version, as ServingRevision.storage_uri
# the storage initializer, given ``URI FOLDER`` as its arguments (ours and KServe's alike)
FETCH_COMMAND = ["python", "-m", "fermi_extension.serving.fetch"]
# a KServe predictor pod's copy of its revision's fetch token, for its storage initializer
FETCH_TOKEN_ANNOTATION = "fermi.io/model-fetch-token"


def label_value(text: str) -> str:
    """A label value (≤ 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "x"


def dns_name(text: str, limit: int = 63) -> str:
    value = re.sub(r"[^a-z0-9-]+", "-", text.lower())[:limit].strip("-")
    return value or "x"


# where pods reach MLflow: the control plane's tracking proxy (its Service in extras.yaml), which
# checks each pod's own token; the tracking server listens on the hub pod's loopback only
CONTROL_PLANE_TRACKING = "http://fermi-control-plane:10101/services/fermi/tracking"


@dataclass(frozen=True)
class Storage:
    """Where job notebooks and outputs live: a PVC shared with the control plane, or an
    S3-compatible bucket (papermill reads and writes s3:// paths itself)."""

    kind: str = "pvc"  # pvc | s3
    claim: str = "fermi-jobs"
    s3_prefix: str = ""  # s3://bucket/prefix
    s3_secret: str = ""  # a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ endpoint)


@dataclass(frozen=True)
class Cluster:
    namespace: str = "fermi"
    service_account: str = "fermi-workload"
    tracking_uri: str = CONTROL_PLANE_TRACKING
    storage: Storage = field(default_factory=Storage)
    # the claims datasets may be on (FermiService.dataset_claims): a pod mounts no other claim,
    # whatever the spec it is built from says
    dataset_claims: tuple[str, ...] = ()
    use_kueue: bool = True
    # images/model-server (`fermi images build`); `fermi images push` overlays a digest
    serving_image: str = f"localhost/fermi/model-server:{__version__}"
    vllm_image: str = "vllm/vllm-openai:v0.11.0"


def resources(runtime: RuntimeSpec) -> dict:
    requests = {"cpu": _cpu(runtime.cpu), "memory": runtime.memory}
    limits = {"cpu": _cpu(runtime.cpu), "memory": runtime.memory}
    if runtime.gpu:  # never a zero GPU limit on CPU profiles
        requests[runtime.gpu_resource] = str(runtime.gpu)
        limits[runtime.gpu_resource] = str(runtime.gpu)
    return {"requests": requests, "limits": limits}


def _cpu(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else f"{int(cpu * 1000)}m"


def pod_placement(runtime: RuntimeSpec) -> dict:
    spec: dict = {}
    if runtime.node_selector:
        spec["nodeSelector"] = dict(runtime.node_selector)
    if runtime.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in runtime.tolerations]
    if runtime.pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in runtime.pull_secrets]
    return spec


def _env(values: dict[str, str]) -> list[dict]:
    return [{"name": k, "value": str(v)} for k, v in sorted(values.items())]


def _shm(runtime: RuntimeSpec) -> tuple[list[dict], list[dict]]:
    """GPU workloads (PyTorch data loaders, NCCL, vLLM) need a /dev/shm larger than 64 MiB."""
    if not runtime.gpu:
        return [], []
    return ([{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
            [{"name": "dshm", "mountPath": "/dev/shm"}])


def _datasets(runtime: RuntimeSpec, workdir: str,
              cluster: Cluster) -> tuple[list[dict], list[dict]]:
    """Attached dataset versions on a volume (pvc://CLAIM/SUBPATH), mounted read-only at
    ``datasets/NAME`` in the working folder, where the job entry point finds them and names
    them in ``$ENV`` as on every backend (``datasets/mounts.py``); an s3:// location needs no
    mount. (Paths on the control plane's machine are refused earlier.)

    The control plane checked the claim when the dataset was attached; it is checked here again
    (a ValueError) so that no spec, however it was made, mounts another claim: the jobs claim
    holds every user's jobs, and any other claim may be someone's home."""
    volumes, mounts = [], []
    for index, mount in enumerate(getattr(runtime, "datasets", None) or []):
        if mount.kind == "volume" and mount.location.startswith("pvc://"):
            claim, _, subpath = mount.location[len("pvc://"):].partition("/")
            if cluster.storage.kind == "pvc" and claim == cluster.storage.claim:
                raise ValueError(
                    f"dataset {mount.name!r} is on the jobs volume {claim!r}, which holds every "
                    "user's jobs and is never mounted whole; attach a version on a claim for "
                    "datasets (FermiService.dataset_claims).")
            if claim not in cluster.dataset_claims:
                raise ValueError(
                    f"dataset {mount.name!r} is on the volume {claim!r}, which is not one the "
                    "admin lists for datasets (FermiService.dataset_claims); attach a version "
                    "on one of those.")
            if ".." in subpath.split("/"):
                raise ValueError(f"dataset {mount.name!r}: its path {subpath!r} climbs out of "
                                 "the volume ('..'); register a version without '..'.")
            volumes.append({"name": f"dataset-{index}",
                            "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            entry = {"name": f"dataset-{index}", "mountPath": f"{workdir}/datasets/{mount.name}",
                     "readOnly": True}
            if subpath.strip("/"):
                entry["subPath"] = subpath.strip("/")
            mounts.append(entry)
    return volumes, mounts


# -- training jobs ----------------------------------------------------------------------------


def job_name(job_id: str) -> str:
    return f"fermi-job-{dns_name(job_id, 40)}"


def job_labels(job_id: str, owner: str, runtime: RuntimeSpec) -> dict:
    return {**MANAGED_BY, "app.kubernetes.io/component": "training-job",
            "fermi.io/job-id": label_value(job_id), "fermi.io/user": label_value(owner),
            "fermi.io/profile": label_value(runtime.profile)}


def make_job(job_id: str, owner: str, runtime: RuntimeSpec, cluster: Cluster, *,
             parameters: dict | None = None, env: dict[str, str] | None = None,
             timeout_seconds: int | None = None, nodes: int = 1,
             name: str | None = None, attempt: int = 1) -> list[dict]:
    """The batch/v1 Job running the job entry point (``jobs/entry.py``, which runs papermill)
    on the job's snapshot in the catalogue image (and, for ``nodes`` > 1, the headless Service
    its indexed pods rendezvous through, torchrun-style). ``name``: the attempt's object name
    (default ``job_name(job_id)``). The environment is the job's (``env``: its run, its job
    id) on top of the cluster's tracking address and the image × profile's own."""
    name = name or job_name(job_id)
    labels = job_labels(job_id, owner, runtime)
    if cluster.storage.kind == "s3":
        folder = f"{cluster.storage.s3_prefix.rstrip('/')}/{job_id}"
        volumes, mounts, root = [], [], "/tmp/job"
    else:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", job_id) or ".." in job_id:
            raise ValueError(f"job id {job_id!r} cannot name a folder of the jobs volume: use "
                             "letters, digits, '.', '_' and '-', not '..'.")
        folder = f"{JOBS_MOUNT}/{job_id}"
        volumes = [{"name": "jobs", "persistentVolumeClaim": {"claimName": cluster.storage.claim}}]
        # only this job's folder of the shared volume (subPath), at the same path as before:
        # the claim holds every user's jobs, and a pod sees none but its own
        mounts = [{"name": "jobs", "mountPath": folder, "subPath": job_id}]
        root = folder
    shm_volumes, shm_mounts = _shm(runtime)
    variables = {
        "MLFLOW_TRACKING_URI": cluster.tracking_uri,
        "FERMI_JOB_ID": job_id,
        "FERMI_JOB_USER": owner,
        **runtime.env,
        **(env or {}),
    }
    # the attempt travels in the object itself: what is reviewed is what runs
    spec_of = JobSpec.of(job_id, runtime, parameters, attempt)
    if cluster.storage.kind == "s3":  # papermill reads and writes the bucket itself
        command = entry_command(root, spec_of, snapshot=f"{folder}/input.ipynb",
                                output=f"{folder}/output.ipynb")
    else:
        command = entry_command(root, spec_of)
    if nodes > 1:  # every rank runs the notebook (its rank: JOB_COMPLETION_INDEX); rank 0's
        # output is the job's
        variables.update({"WORLD_SIZE": str(nodes), "MASTER_ADDR": f"{name}-0.{name}",
                          "MASTER_PORT": "29500"})
    container = {
        "name": "notebook",
        "image": runtime.image_reference,
        "command": command,
        "env": _env(variables),
        "resources": resources(runtime),
        "volumeMounts": mounts + shm_mounts,
        # a failing notebook's last log lines (papermill's error) become the pod's termination
        # message: the job's reason where the entry point's result.json cannot come back (s3)
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    dataset_volumes, dataset_mounts = _datasets(runtime, f"{root}/work", cluster)
    if dataset_mounts:
        container["volumeMounts"] = container["volumeMounts"] + dataset_mounts
        volumes = volumes + dataset_volumes
    if cluster.storage.kind == "s3" and cluster.storage.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": cluster.storage.s3_secret}}]
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": cluster.service_account,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100},
        "containers": [container],
        **pod_placement(runtime),
    }
    if volumes or shm_volumes:
        pod_spec["volumes"] = volumes + shm_volumes
    spec: dict = {
        "backoffLimit": 0,  # retries are the platform's (per policy, with the reason recorded)
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if timeout_seconds:
        spec["activeDeadlineSeconds"] = timeout_seconds
    metadata = {"name": name, "namespace": cluster.namespace, "labels": dict(labels)}
    if cluster.use_kueue:  # Kueue admits it (unsuspends) when its pool has quota
        metadata["labels"][KUEUE_QUEUE_LABEL] = runtime.pool
        spec["suspend"] = True
    objects = []
    if nodes > 1:
        # the label tells the backend to delete the rendezvous Service with the Job
        metadata["labels"]["fermi.io/nodes"] = str(nodes)
        spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
        pod_spec["subdomain"] = name
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": cluster.namespace, "labels": dict(labels)},
            "spec": {"clusterIP": "None", "selector": {"fermi.io/job-id": label_value(job_id)},
                     "ports": [{"name": "rendezvous", "port": 29500}]},
        })
    objects.insert(0, {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec})
    return objects


def make_kueue_objects(catalog: Catalog, namespace: str,
                       cpu_quota: str = "64", memory_quota: str = "256Gi") -> list[dict]:
    """ResourceFlavor, ClusterQueue and LocalQueue per pool of the catalogue (Kueue v1beta1):
    the queue a job names is its profile's pool; GPU quotas are the pool's GPUs."""
    objects = []
    gpu_resources = sorted({p.gpu_resource for p in catalog.profiles if p.gpu})
    for pool in catalog.pools:
        flavor = f"fermi-{pool.slug}"
        node_labels = {}
        for profile in catalog.profiles:
            if profile.pool == pool.slug and profile.node_selector:
                node_labels = dict(profile.node_selector)
                break
        objects.append({
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ResourceFlavor",
            "metadata": {"name": flavor, "labels": dict(MANAGED_BY)},
            "spec": {"nodeLabels": node_labels} if node_labels else {},
        })
        covered = ["cpu", "memory", *(gpu_resources if pool.gpus else [])]
        quotas = [{"name": "cpu", "nominalQuota": cpu_quota},
                  {"name": "memory", "nominalQuota": memory_quota}]
        quotas += [{"name": r, "nominalQuota": pool.gpus} for r in covered[2:]]
        objects.append({
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue",
            "metadata": {"name": flavor, "labels": dict(MANAGED_BY)},
            "spec": {
                "namespaceSelector": {},
                "queueingStrategy": "BestEffortFIFO",
                "resourceGroups": [{"coveredResources": covered,
                                    "flavors": [{"name": flavor, "resources": quotas}]}],
            },
        })
        objects.append({
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue",
            "metadata": {"name": pool.slug, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "spec": {"clusterQueue": flavor},
        })
    return objects


# -- inference services -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServingRevision:
    deployment: str
    owner: str
    model: str
    version: str
    revision: str  # r1, r2, …
    storage_uri: str  # the model version (models:/NAME/VERSION), fetched by serving.fetch
    engine: str = "auto"
    # what the storage initializer shows the tracking proxy: a token that reads this version
    # only (deployments/service.py issues it, revokes it when the version stops running)
    fetch_token: str = ""


def _serving_labels(rev: ServingRevision) -> dict:
    return {**MANAGED_BY, "app.kubernetes.io/component": "inference-service",
            "fermi.io/deployment": label_value(rev.deployment),
            "fermi.io/revision": label_value(rev.revision), "fermi.io/user": label_value(rev.owner)}


def _server_container(rev: ServingRevision, runtime: RuntimeSpec, cluster: Cluster) -> dict:
    if rev.engine == "vllm":
        container = {
            "name": "model-server", "image": cluster.vllm_image,
            "args": ["--model", MODELS_MOUNT, "--served-model-name", rev.model,
                     "--port", str(MODEL_SERVER_PORT)],
            # a large model takes minutes to load: readiness waits, liveness does not kill it
            "startupProbe": {"httpGet": {"path": "/health", "port": MODEL_SERVER_PORT},
                             "periodSeconds": 10, "failureThreshold": 90},
            "readinessProbe": {"httpGet": {"path": "/health", "port": MODEL_SERVER_PORT},
                               "periodSeconds": 5},
        }
    else:
        container = {
            "name": "model-server", "image": cluster.serving_image,
            "args": ["python", "-m", "fermi_extension.serving.server", "--model-dir", MODELS_MOUNT,
                     "--model-name", rev.model, "--model-version", rev.version,
                     "--host", "0.0.0.0", "--port", str(MODEL_SERVER_PORT)],
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": MODEL_SERVER_PORT},
                               "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": MODEL_SERVER_PORT},
                              "periodSeconds": 10, "failureThreshold": 3},
        }
    container.update({
        "ports": [{"name": "http", "containerPort": MODEL_SERVER_PORT}],
        "resources": resources(runtime),
        "env": _env(runtime.env) if runtime.env else [],
    })
    if not container["env"]:
        del container["env"]
    return container


def make_serving_objects(rev: ServingRevision, runtime: RuntimeSpec, cluster: Cluster, *,
                         min_replicas: int, max_replicas: int, target_concurrency: float) -> list[dict]:
    """Deployment + Service + HorizontalPodAutoscaler (autoscaling/v2, on in-flight requests per
    pod from the Prometheus adapter) + PodDisruptionBudget for one revision, for clusters
    without KServe. The router (or an Ingress) splits traffic between revisions' Services."""
    name = dns_name(f"{rev.deployment}-{rev.revision}")
    labels = _serving_labels(rev)
    selector = {"fermi.io/deployment": labels["fermi.io/deployment"],
                "fermi.io/revision": labels["fermi.io/revision"]}
    shm_volumes, shm_mounts = _shm(runtime)
    container = _server_container(rev, runtime, cluster)
    container["volumeMounts"] = [{"name": "model", "mountPath": MODELS_MOUNT, "readOnly": True},
                                 *shm_mounts]
    init = {  # the storage initializer: copies the model version's files before the server starts
        "name": "fetch-model", "image": cluster.serving_image,
        "command": list(FETCH_COMMAND), "args": [rev.storage_uri, MODELS_MOUNT],  # as KServe runs it
        # the token in this container only: the model server (which runs the model's own code,
        # a pickle is code) never holds it
        "env": _env({"MLFLOW_TRACKING_URI": cluster.tracking_uri,
                     **({"MLFLOW_TRACKING_TOKEN": rev.fetch_token} if rev.fetch_token else {})}),
        "volumeMounts": [{"name": "model", "mountPath": MODELS_MOUNT}],
    }
    pod = {
        "serviceAccountName": cluster.service_account,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "initContainers": [init],
        "containers": [container],
        "volumes": [{"name": "model", "emptyDir": {}}, *shm_volumes],
        "terminationGracePeriodSeconds": 30,  # the server drains in-flight requests on SIGTERM
        **pod_placement(runtime),
    }
    metadata = {"name": name, "namespace": cluster.namespace, "labels": labels}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
         "spec": {"replicas": min_replicas, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": labels}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
         "spec": {"selector": selector, "ports": [{"name": "http", "port": MODEL_SERVER_PORT,
                                                   "targetPort": MODEL_SERVER_PORT}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": metadata,
         "spec": {
             "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
             "minReplicas": min_replicas, "maxReplicas": max_replicas,
             "metrics": [{"type": "Pods", "pods": {
                 "metric": {"name": "fermi_replica_in_flight"},
                 "target": {"type": "AverageValue", "averageValue": _quantity(target_concurrency)}}}],
             "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                          "scaleDown": {"stabilizationWindowSeconds": 30}},
         }},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata,
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}}},
    ]


def service_url(service: str, namespace: str, port: int = 80) -> str:
    """The in-cluster URL of a Service, as the router is handed it: no port when the Service
    declares 80 (KServe's ``NAME-predictor``), else the one it declares."""
    suffix = "" if port == 80 else f":{port}"
    return f"http://{service}.{namespace}.svc.cluster.local{suffix}"


def revision_url(name: str, namespace: str) -> str:
    """The URL of the Service of ``make_serving_objects`` named ``name``."""
    return service_url(name, namespace, MODEL_SERVER_PORT)


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(value * 1000)}m"


def make_inference_service(stable: ServingRevision, runtime: RuntimeSpec, cluster: Cluster, *,
                           min_replicas: int, max_replicas: int, target_concurrency: float,
                           canary: ServingRevision | None = None,
                           canary_percent: int = 0) -> dict:
    """A KServe InferenceService (v1beta1) in Standard (raw deployment) mode, V2 protocol.
    ``canary``: the spec names the new model and ``canaryTrafficPercent`` — for review only:
    KServe honours a canary split in its Serverless mode alone, so the Kubernetes backend runs
    one InferenceService per revision and splits traffic in Fermi's router."""
    current = canary or stable
    predictor: dict = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "scaleMetric": "concurrency",
        "scaleTarget": max(1, round(target_concurrency)),
        "serviceAccountName": cluster.service_account,
        **pod_placement(runtime),
    }
    if current.engine == "vllm":
        predictor["model"] = {
            "modelFormat": {"name": "huggingface"}, "storageUri": current.storage_uri,
            "args": [f"--served-model-name={current.model}"], "resources": resources(runtime),
        }
    else:
        predictor["model"] = {
            "modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
            "storageUri": current.storage_uri, "resources": resources(runtime),
        }
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if current.fetch_token:  # the pods' annotation, which only the storage initializer reads
        predictor["annotations"] = {FETCH_TOKEN_ANNOTATION: current.fetch_token}
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": dns_name(stable.deployment), "namespace": cluster.namespace,
                     "labels": _serving_labels(current),
                     "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
        "spec": {"predictor": predictor},
    }


def make_cluster_storage_container(cluster: Cluster, name: str = "fermi-models") -> dict:
    """A KServe ClusterStorageContainer (serving.kserve.io/v1alpha1) that fetches ``models:/``
    URIs, the ``storageUri`` of ``make_inference_service``: KServe has no storage initializer of
    its own for MLflow's registry. KServe injects the init container ``storage-initializer`` with
    the arguments ``URI /mnt/models`` and merges this container into it (strategic merge: our
    fields win, so no ``args`` here, or they would replace KServe's); ``serving.fetch`` takes
    exactly those arguments and finds the tracking server in ``MLFLOW_TRACKING_URI``. It shows the
    tracking proxy the revision's own token, which KServe cannot pass per InferenceService: the
    predictor's pods carry it as an annotation (``make_inference_service``), read through the
    downward API into this container alone (the model server never sees it)."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterStorageContainer",
        "metadata": {"name": name, "labels": dict(MANAGED_BY)},
        "spec": {
            "container": {
                "name": "storage-initializer",  # KServe recognises its init container by name
                "image": cluster.serving_image,
                "command": list(FETCH_COMMAND),
                "env": [*_env({"MLFLOW_TRACKING_URI": cluster.tracking_uri}),
                        {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"fieldRef": {
                            "fieldPath": f"metadata.annotations['{FETCH_TOKEN_ANNOTATION}']"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "allowPrivilegeEscalation": False},
            },
            "supportedUriFormats": [{"prefix": MODEL_URI_PREFIX}],
            "workloadType": "initContainer",
        },
    }


# -- image builds -----------------------------------------------------------------------------


def make_kaniko_build(build_id: str, dockerfile: str, destination: str, cluster: Cluster, *,
                      push_secret: str = "fermi-registry-push",
                      executor: str = "gcr.io/kaniko-project/executor:v1.23.2") -> list[dict]:
    """A ConfigMap holding the Dockerfile and a Job building it with Kaniko and pushing to
    ``destination`` with the registry credentials of ``push_secret`` (a dockerconfigjson)."""
    name = f"fermi-build-{dns_name(build_id, 40)}"
    labels = {**MANAGED_BY, "app.kubernetes.io/component": "image-build",
              "fermi.io/build-id": label_value(build_id)}
    metadata = {"name": name, "namespace": cluster.namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
         "data": {"Dockerfile": dockerfile}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": {
            "backoffLimit": 0, "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "kaniko", "image": executor,
                    "args": ["--dockerfile=/workspace/Dockerfile", "--context=dir:///workspace",
                             f"--destination={destination}"],
                    "volumeMounts": [{"name": "context", "mountPath": "/workspace"},
                                     {"name": "push", "mountPath": "/kaniko/.docker"}],
                }],
                "volumes": [
                    {"name": "context", "configMap": {"name": name}},
                    {"name": "push", "secret": {"secretName": push_secret, "items": [
                        {"key": ".dockerconfigjson", "path": "config.json"}]}},
                ],
            }},
        }},
    ]
