"""The neutral runtime spec: catalogue image × profile, compiled per backend.

Jobs and deployments carry a ``RuntimeSpec``; the local backend turns it into a process
environment, the Kubernetes backend into pod fields. Nothing here knows about either.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from .catalog.schema import Image, Profile, Toleration


class DatasetMount(BaseModel):
    """A dataset version attached to a job or dev environment: found at ``datasets/NAME`` in its
    working folder, its location in ``$ENV`` (``datasets.py``)."""

    name: str
    version: str
    location: str
    kind: str  # path | volume | s3
    env: str


class RuntimeSpec(BaseModel):
    image: str
    image_version: str | None = None
    image_reference: str
    image_local: bool
    kernel: str
    profile: str
    pool: str
    cpu: float
    memory: str
    gpu: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    gpu_type: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    price_per_hour: float = 0.0
    pull_secrets: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    datasets: list[DatasetMount] = Field(default_factory=list)
    nodes: int = 1  # a job's ranks (distributed training); each has the profile's resources


def runtime_spec(image: Image, profile: Profile, version: str | None = None) -> RuntimeSpec:
    chosen = next((v for v in image.versions if v.tag == version), None) if version else (
        image.versions[0] if image.versions else None)
    tag = chosen.tag if chosen else version
    reference = image.reference
    if chosen is not None and chosen.digest:  # a digest pins the exact image; a tag can move
        reference = f"{image.reference}@{chosen.digest}"
    elif tag:
        reference = f"{image.reference}:{tag}"
    return RuntimeSpec(
        image=image.slug,
        image_version=tag,
        image_reference=reference,
        image_local=image.local,
        kernel=image.kernel,
        profile=profile.slug,
        pool=profile.pool,
        cpu=profile.cpu,
        memory=profile.memory,
        gpu=profile.gpu,
        gpu_resource=profile.gpu_resource,
        gpu_type=profile.gpu_type,
        node_selector=dict(profile.node_selector),
        tolerations=list(profile.tolerations),
        price_per_hour=profile.price_per_hour,
        pull_secrets=[image.pull_secret] if image.pull_secret else [],
        env=thread_env(profile.cpu),
    )


def thread_env(cpu: float) -> dict[str, str]:
    """Numerical libraries (torch, BLAS) start one thread per core of the host unless told:
    on a shared machine or node that oversubscribes the CPUs the profile did not grant."""
    threads = str(max(1, int(cpu)))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads}
