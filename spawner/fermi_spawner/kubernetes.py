"""Dev environments as Kubernetes pods: KubeSpawner with its ``profile_list`` from the catalogue.

``profile_list`` is a callable, so the catalogue is read at every spawn (an admin's edit is seen
by the next one). Each catalogue profile becomes one KubeSpawner profile whose
``kubespawner_override`` sets CPU and memory (limits, and guarantees as a share of them), the
GPU resource (limits and requests, only for GPU profiles: a CPU profile asks for none), the node
selector and tolerations; the catalogue's images are the profile option ``image``, whose choices
set the pod's ``image`` and pull secrets. The form, the options model and their checks are the
same as the local spawner's (``options.py``, ``base.py``).
"""

from __future__ import annotations

import copy

from kubespawner import KubeSpawner
from traitlets import Float, default, validate

from fermi_extension.catalog.schema import Catalog, Image, Profile, parse_memory_bytes
from fermi_extension.spec import runtime_spec

from .base import FermiSpawnerMixin, spawn_error
from .options import Refused, Resolved, offered_images, offered_profiles


def image_choices(catalog: Catalog, base_pull_secrets: list) -> dict[str, dict]:
    """The profile option ``image``: one choice per offered image (its default version)."""
    choices = {}
    default_image = catalog.default_image()
    for image in offered_images(catalog):
        spec = runtime_spec(image, catalog.default_profile())
        override: dict = {"image": spec.image_reference}
        if image.pull_secret:
            override["image_pull_secrets"] = [*base_pull_secrets, {"name": image.pull_secret}]
        choices[image.slug] = {
            "display_name": image.name + (" (deprecated)" if image.deprecated else ""),
            "default": image.slug == default_image.slug,
            "kubespawner_override": override,
        }
    return choices


def profile_entry(profile: Profile, *, default: bool, images: dict[str, dict],
                  guarantee_fraction: float, base_tolerations: list) -> dict:
    """One KubeSpawner profile for a catalogue profile."""
    memory = parse_memory_bytes(profile.memory)
    override: dict = {
        "cpu_limit": float(profile.cpu),
        "cpu_guarantee": round(float(profile.cpu) * guarantee_fraction, 3),
        "mem_limit": memory,
        "mem_guarantee": int(memory * guarantee_fraction),
    }
    if profile.gpu:
        # extended resources: requests must equal limits, and only GPU profiles name the key
        override["extra_resource_limits"] = {profile.gpu_resource: str(profile.gpu)}
        override["extra_resource_guarantees"] = {profile.gpu_resource: str(profile.gpu)}
    if profile.node_selector:
        override["node_selector"] = dict(profile.node_selector)
    if profile.tolerations:
        override["tolerations"] = [*base_tolerations, *(
            t.model_dump(exclude_none=True) for t in profile.tolerations)]
    return {
        "slug": profile.slug,
        "display_name": profile.name,
        "description": profile.description,
        "default": default,
        "kubespawner_override": override,
        "profile_options": {"image": {"display_name": "Image", "choices": copy.deepcopy(images)}},
    }


def build_profile_list(catalog: Catalog, *, groups: set[str], admin: bool,
                       guarantee_fraction: float = 1.0, base_tolerations: list | None = None,
                       base_pull_secrets: list | None = None) -> list[dict]:
    """KubeSpawner's ``profile_list`` for one user: the profiles offered to them."""
    images = image_choices(catalog, list(base_pull_secrets or []))
    mine = offered_profiles(catalog, groups, admin)
    default = catalog.default_profile()
    if default not in mine and mine:
        default = mine[0]
    return [profile_entry(p, default=p is default, images=images,
                          guarantee_fraction=guarantee_fraction,
                          base_tolerations=list(base_tolerations or []))
            for p in mine]


class FermiKubeSpawner(FermiSpawnerMixin, KubeSpawner):
    """KubeSpawner with Fermi's catalogue, form, checks, notices and usage records."""

    guarantee_fraction = Float(
        1.0,
        help="""Share of a profile's CPU and memory a pod requests (its guarantee); the limit is
        always the profile's full size. 1.0 (default): guaranteed QoS, nothing overcommitted;
        e.g. 0.5 lets a node hold twice as many idle servers. GPUs are always requested whole.""",
    ).tag(config=True)

    @validate("guarantee_fraction")
    def _check_fraction(self, proposal):
        if not 0 < proposal.value <= 1:
            raise ValueError("guarantee_fraction must be in (0, 1]")
        return proposal.value

    @default("profile_list")
    def _fermi_profile_list(self):
        return self.catalog_profile_list

    def catalog_profile_list(self, _spawner=None) -> list[dict]:
        try:
            catalog = self.read_catalog()
        except Refused as error:
            raise spawn_error(error.status, error.message) from None
        return build_profile_list(
            catalog, groups=self.user_groups(), admin=self.user_is_admin(),
            guarantee_fraction=self.guarantee_fraction,
            base_tolerations=self._sorted_dict_values(self.tolerations),
            base_pull_secrets=list(self.image_pull_secrets or []),
        )

    # KubeSpawner merges a profile's overrides into the spawner's settings, which live as long
    # as the hub; every setting an override touched is put back before the next spawn applies
    # its own, so nothing of one spawn (a GPU limit, a node selector) leaks into the next
    def _apply_overrides(self, spawner_override: dict):
        pristine = self.__dict__.setdefault("_fermi_pristine", {})
        for key in spawner_override:
            if key not in pristine:
                pristine[key] = copy.deepcopy(getattr(self, key))
        super()._apply_overrides(spawner_override)

    def _restore_settings(self) -> None:
        for key, value in self.__dict__.get("_fermi_pristine", {}).items():
            setattr(self, key, copy.deepcopy(value))

    async def load_user_options(self) -> Resolved:
        self._restore_settings()
        resolved = await FermiSpawnerMixin.load_user_options(self)
        await KubeSpawner.load_user_options(self)  # the profile's and the image's overrides
        pristine = self.__dict__.setdefault("_fermi_pristine", {})
        pristine.setdefault("image", self.image)
        self.image = resolved.spec.image_reference  # the chosen version (or digest) exactly
        return resolved

    async def start(self):
        url = await super().start()
        self.mark_running()
        return url

    def image_check(self, image: Image):
        return True, None
