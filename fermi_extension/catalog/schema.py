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


# The Docker reference grammar (github.com/distribution/reference, regexp.go), piece by piece so
# that a bad reference is answered with the piece that is wrong.
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
HOST = re.compile(rf"{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\]")
TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
REFERENCE_FORM = ("[registry[:port]/]path[:tag][@sha256:digest], e.g. "
                  "quay.io/jupyter/scipy-notebook:2025-06-30")
# a Kubernetes Secret name (DNS subdomain)
SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag):
        raise ValueError(
            f"tag {tag!r} is not a valid image tag: up to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return tag


def check_digest(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise ValueError(
            f"digest {digest!r} is not a valid digest: expected sha256:<64 hex digits>")
    algorithm, _, hex_ = digest.partition(":")
    if algorithm == "sha256" and len(hex_) != 64:
        raise ValueError(f"digest {digest!r} is not a valid sha256 digest: it needs 64 hex digits")
    return digest


def check_reference(reference: str) -> str:
    """Validate a container image reference; the error says which piece is wrong."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"{reference!r} is not a valid image reference: {reason}; "
                          f"expected {REFERENCE_FORM}")

    if not reference or reference != reference.strip() or any(c.isspace() for c in reference):
        raise bad("it is empty or contains spaces")
    name, at, digest = reference.partition("@")
    if at:
        try:
            check_digest(digest)
        except ValueError as error:
            raise bad(str(error)) from None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1:]
        try:
            check_tag(tag)
        except ValueError as error:
            raise bad(str(error)) from None
    if len(name) > 255:
        raise bad("the name is longer than 255 characters")
    components = name.split("/")
    first = components[0]
    # as Docker decides: the first component is a registry if it looks like a host
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost"
                                or first != first.lower()):
        split = first.rfind(":") if not first.startswith("[") else first.find("]:") + 1
        if split <= 0:
            host, colon, port = first, "", ""
        else:
            host, colon, port = first[:split], ":", first[split + 1:]
        if not HOST.fullmatch(host) or (colon and not port.isdigit()):
            raise bad(f"registry {first!r} is not host[:port]")
        components = components[1:]
    for component in components:
        if not component:
            raise bad("it has an empty path component ('//' or a '/' at an end)")
        if not PATH_COMPONENT.fullmatch(component):
            if PATH_COMPONENT.fullmatch(component.lower()):
                raise bad(f"path component {component!r} must be lowercase")
            raise bad(f"path component {component!r} may only have lowercase letters and digits "
                      "separated by '.', '_', '__' or '-'")
    return reference


class ImageVersion(Strict):
    tag: str
    digest: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. python, cuda, framework")

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        return check_tag(value)

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        return None if value is None else check_digest(value)


class Image(Strict):
    slug: str = Field(pattern=SLUG, description=SLUG_HELP)
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    kind: Literal["official", "community", "custom"] = "official"
    reference: str = Field(
        description="registry reference without the version's tag, "
        "e.g. quay.io/jupyter/scipy-notebook"
    )
    local: bool = Field(
        False, description="runs on the embedded default with the platform's own Python environment"
    )
    kernel: str = Field("python3", description="the Jupyter kernel jobs run with")
    versions: list[ImageVersion] = Field(default_factory=list)
    featured: bool = False
    hidden: bool = False
    deprecated: bool = Field(False, description="still runs, but users are told to move on")
    redirect_message: str | None = Field(
        None, max_length=500,
        description="shown to users of a deprecated or hidden image, e.g. 'use pytorch-2 instead'",
    )
    pull_secret: str | None = Field(
        None, pattern=SECRET_NAME, max_length=253,
        description="Kubernetes Secret with the registry credentials (private registries)",
    )
    owner: str | None = None

    def offered_to(self, caller) -> bool:
        """A hidden image exists for admins only: users neither list it nor read it by slug."""
        return caller.admin or not self.hidden

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str) -> str:
        return check_reference(value)

    @model_validator(mode="after")
    def _reference_without_version(self) -> "Image":
        if self.versions and ("@" in self.reference
                              or ":" in self.reference.rpartition("/")[2]):
            raise ValueError(
                f"reference {self.reference!r} carries a tag or digest while versions lists the "
                "tags to run; write the reference without it (the tag of a version is appended)"
            )
        return self


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
        for kind in ("images", "profiles", "pools"):
            if not getattr(self, kind):
                raise ValueError(f"{kind}: the catalogue needs at least one {kind[:-1]}")
        pools = {p.slug: p for p in self.pools}
        most_gpus = max(p.gpus for p in self.pools)
        for profile in self.profiles:
            if profile.pool not in pools:
                raise ValueError(
                    f"profile {profile.slug!r} names pool {profile.pool!r}, which is not in pools "
                    f"(field pool; pools: {', '.join(pools)})"
                )
            pool = pools[profile.pool]
            if profile.gpu > pool.gpus:
                message = (f"profile {profile.slug!r}: gpu asks for {gpus(profile.gpu)} but pool "
                           f"{pool.slug!r} has {pool.gpus}")
                if profile.gpu > most_gpus:
                    message += f"; no pool has that many (the largest has {most_gpus})"
                raise ValueError(message)
        defaults = [p.slug for p in self.profiles if p.default]
        if len(defaults) > 1:
            raise ValueError(
                f"only one profile can be the default (field default: {', '.join(defaults)}); "
                "set default to false on all but one"
            )
        return self

    def default_profile(self) -> Profile:
        for profile in self.profiles:
            if profile.default:
                return profile
        return self.profiles[0]

    def default_image(self) -> Image:
        for image in self.images:
            if not image.hidden and not image.deprecated:
                return image
        for image in self.images:
            if not image.hidden:
                return image
        return self.images[0]


def gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def parse_memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti)", quantity)
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    power = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(float(match.group(1)) * 1024**power)
