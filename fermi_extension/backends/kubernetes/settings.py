"""The settings the Kubernetes backends share (configure them once as ``c.KubernetesSettings.*``;
traitlets applies a base class's section to every backend that inherits it)."""

from __future__ import annotations

import os

from traitlets import Bool, Enum, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from ...datasets.service import DatasetPolicy
from .kube_client import KubeClient
from .objects import CONTROL_PLANE_TRACKING, Cluster, Storage


class KubernetesSettings(LoggingConfigurable):
    kubeconfig = Unicode(
        help="""Kubeconfig file of the cluster. Default: $FERMI_KUBECONFIG; empty means the
        in-cluster service account when the control plane runs in a pod, else $KUBECONFIG or
        ~/.kube/config. Example: /etc/fermi/kubeconfig""",
    ).tag(config=True)

    @default("kubeconfig")
    def _default_kubeconfig(self):
        return os.environ.get("FERMI_KUBECONFIG", "")

    context = Unicode("", help="Kubeconfig context to use (default: its current context).").tag(
        config=True)

    namespace = Unicode(
        help="Namespace where jobs, builds and inference services run (default: $FERMI_NAMESPACE "
             "or 'fermi').",
    ).tag(config=True)

    @default("namespace")
    def _default_namespace(self):
        return os.environ.get("FERMI_NAMESPACE", "fermi")

    service_account = Unicode(
        "fermi-workload",
        help="ServiceAccount of job and model-server pods (no API rights needed; see "
             "hub_config/helm/rbac.yaml). Default: fermi-workload.",
    ).tag(config=True)

    cluster_tracking_uri = Unicode(
        help="""MLflow as pods reach it: the control plane's tracking proxy, which lets a job's
        token reach its own run and a model server's token its one model version (the tracking
        server itself listens on the hub pod's loopback only). Default: $FERMI_KUBE_TRACKING_URI,
        else http://fermi-control-plane:10101/services/fermi/tracking (the Service of
        hub_config/helm/extras.yaml).""",
    ).tag(config=True)

    @default("cluster_tracking_uri")
    def _default_cluster_tracking_uri(self):
        return os.environ.get("FERMI_KUBE_TRACKING_URI", CONTROL_PLANE_TRACKING)

    storage = Enum(
        ["pvc", "s3"], default_value="pvc",
        help="""How notebooks reach job pods and outputs come back. 'pvc' (default): the control
        plane's jobs folder is a ReadWriteMany PersistentVolumeClaim (``jobs_claim``) that job
        pods mount too. 's3': the snapshot is uploaded to ``s3_prefix`` and papermill reads and
        writes s3:// paths itself (needs boto3 in the control plane and the job images).""",
    ).tag(config=True)

    jobs_claim = Unicode("fermi-jobs", help="The PVC holding the jobs folder (storage='pvc').").tag(
        config=True)

    s3_prefix = Unicode("", help="s3://bucket/prefix for job folders (storage='s3').").tag(
        config=True)

    s3_secret = Unicode(
        "", help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
                 "S3-compatible storage such as MinIO) given to job pods (storage='s3').",
    ).tag(config=True)

    s3_endpoint_url = Unicode(
        help="Endpoint of S3-compatible storage for the control plane (default: "
             "$AWS_ENDPOINT_URL; empty: AWS).",
    ).tag(config=True)

    @default("s3_endpoint_url")
    def _default_s3_endpoint_url(self):
        return os.environ.get("AWS_ENDPOINT_URL", "")

    kueue = Enum(
        ["auto", "on", "off"], default_value="auto",
        help="""Queue jobs through Kueue (queue-name label = the profile's pool, created
        suspended; Kueue admits them). 'auto' (default): when the cluster serves Kueue's
        LocalQueue API. The queues (one per catalogue pool) are the operator's:
        `python -m fermi_extension.backends.kubernetes.queues | kubectl apply -f -`.""",
    ).tag(config=True)

    serving_image = Unicode(
        help="""Image of model-server pods, built by `fermi images build model-server` (default:
        $FERMI_SERVING_IMAGE, which the overlay of `fermi images push` sets to the pushed
        digest, else localhost/fermi/model-server:VERSION, the name the build gives it).""",
    ).tag(config=True)

    @default("serving_image")
    def _serving_image_default(self):
        return os.environ.get("FERMI_SERVING_IMAGE", Cluster.serving_image)

    vllm_image = Unicode("vllm/vllm-openai:v0.11.0", help="Image of vLLM model servers.").tag(
        config=True)

    watch_timeout_seconds = Int(
        300, help="Server-side timeout of one watch request; the watch then resumes.").tag(
        config=True)

    delete_finished = Bool(
        True, help="Delete a job's Kubernetes Job once its outcome, log and output are collected "
                   "(they live on in the platform); False keeps it until its TTL (7 days).",
    ).tag(config=True)

    def cluster(self, *, use_kueue: bool) -> Cluster:
        claims = self.dataset_policy.claims
        if self.storage == "pvc" and self.jobs_claim in claims:
            # a dataset on it would show a pod every user's job folder
            raise ValueError(
                f"FermiService.dataset_claims lists {self.jobs_claim!r}, the jobs claim "
                "(KubernetesSettings.jobs_claim), which holds every user's jobs; remove it from "
                "the claims for datasets.")
        return Cluster(
            namespace=self.namespace, service_account=self.service_account,
            tracking_uri=self.cluster_tracking_uri,
            storage=Storage(kind=self.storage, claim=self.jobs_claim, s3_prefix=self.s3_prefix,
                            s3_secret=self.s3_secret),
            dataset_claims=tuple(sorted(claims)),
            use_kueue=use_kueue, serving_image=self.serving_image, vllm_image=self.vllm_image,
        )

    dataset_policy = Instance(
        DatasetPolicy,
        help="""Where datasets may live (the one list of claims a pod may mount). Handed in by
        the control plane's composition root (FermiService.dataset_roots/dataset_claims);
        default: the same settings from the environment, for a backend made on its own (tests,
        tools).""",
    )

    @default("dataset_policy")
    def _policy_from_env(self) -> DatasetPolicy:
        return DatasetPolicy.from_env()

    async def connect(self) -> KubeClient:
        return await KubeClient.connect(self.kubeconfig, self.context)

    async def disconnect(self, *informers) -> None:
        """Stop the watches, then close the client that ``connect`` gave (``self.client``)."""
        for informer in informers:
            if informer is not None:
                await informer.stop()
        if getattr(self, "client", None) is not None:
            await self.client.close()
            self.client = None
