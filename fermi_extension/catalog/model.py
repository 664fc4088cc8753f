"""The catalogue schema, one validated shape for both backends.

An *image* is an environment to run in (locally: a Python interpreter with its kernel; on
Kubernetes: a container reference). A *profile* is a size (CPU, memory, GPUs) and where it runs
(a pool, node selector, tolerations) with a price per hour. A *pool* is a set of machines with a
capacity: how many jobs may run at once and how many GPUs it has.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SLUG_HELP = "lowercase letters, digits and '-', 1–63 characters, starting and ending with a letter or digit"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageVersion(Strict):
    tag: str
    digest: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. python, cuda, framework")


class Image(Strict):
    slug: str = Field(pattern=SLUG, description=SLUG_HELP)
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    kind: Literal["official", "community", "custom"] = "official"
    reference: str = Field(description="registry reference, e.g. quay.io/jupyter/scipy-notebook")
    local: bool = Field(
        False, description="runs on the embedded default with the platform's own Python environment"
    )
    kernel: str = Field("python3", description="the Jupyter kernel jobs run with")
    versions: list[ImageVersion] = Field(default_factory=list)
    featured: bool = False
    hidden: bool = False
    owner: str | None = None


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Pool(Strict):
    slug: str = Field(pattern=SLUG, description=SLUG_HELP)
    name: str
    max_running_jobs: int = Field(2, ge=1, description="jobs of this pool that run at once")
    gpus: int = Field(0, ge=0, description="GPUs in this pool (0 for CPU pools)")
    gpu_type: str | None = None


class Profile(Strict):
    slug: str = Field(pattern=SLUG, description=SLUG_HELP)
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    cpu: float = Field(1.0, gt=0)
    memory: str = Field("2Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$")
    gpu: int = Field(0, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    gpu_type: str | None = None
    pool: str = Field("cpu", pattern=SLUG)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    price_per_hour: float = Field(0.0, ge=0)
    allowed_groups: list[str] = Field(default_factory=list, description="empty: everyone")
    idle_cull_minutes: int = Field(60, ge=0)
    default: bool = False

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        return v.strip()


class Catalog(Strict):
    """The whole catalogue as kept in ``hub_config/catalog.yaml``."""

    images: list[Image]
    profiles: list[Profile]
    pools: list[Pool] = Field(default_factory=lambda: [Pool(slug="cpu", name="CPU")])

    @model_validator(mode="after")
    def _consistent(self) -> "Catalog":
        for kind in ("images", "profiles", "pools"):
            slugs = [item.slug for item in getattr(self, kind)]
            dupes = sorted({s for s in slugs if slugs.count(s) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate slug(s) {', '.join(dupes)}")
        pools = {p.slug: p for p in self.pools}
        for profile in self.profiles:
            if profile.pool not in pools:
                raise ValueError(
                    f"profile {profile.slug!r} names pool {profile.pool!r}, which is not in pools"
                )
        if sum(p.default for p in self.profiles) > 1:
            raise ValueError("only one profile can be the default")
        return self

    def default_profile(self) -> Profile:
        for profile in self.profiles:
            if profile.default:
                return profile
        return self.profiles[0]

    def default_image(self) -> Image:
        for image in self.images:
            if not image.hidden:
                return image
        return self.images[0]


def parse_memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti)", quantity)
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    power = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(float(match.group(1)) * 1024**power)
