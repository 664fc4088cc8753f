"""The catalogue: the shipped seed file, its validation, the database copy, and the runtime spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fermi_extension.catalog.schema import Catalog, Image, Profile
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.db import make_session_factory
from fermi_extension.errors import InvalidInput, NotFound
from fermi_extension.paths import shipped
from fermi_extension.spec import runtime_spec

SHIPPED = shipped("hub_config") / "catalog.yaml"


@pytest.fixture
def shipped_catalog() -> Catalog:
    return load_catalog_file(SHIPPED)


@pytest.fixture
def store(shipped_catalog) -> CatalogStore:
    store = CatalogStore(make_session_factory("sqlite://"))
    store.seed_if_empty(shipped_catalog)
    return store


def raw_shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# -- the shipped seed file ----------------------------------------------------------------


def test_shipped_catalog_has_cpu_small_as_default_profile(shipped_catalog):
    assert shipped_catalog.default_profile().slug == "cpu-small"
    assert [p.slug for p in shipped_catalog.profiles if p.default] == ["cpu-small"]


def test_shipped_catalog_default_image_runs_without_containers(shipped_catalog):
    assert shipped_catalog.default_image().local is True


def test_shipped_catalog_profiles_name_declared_pools(shipped_catalog):
    pools = {p.slug for p in shipped_catalog.pools}
    assert {p.pool for p in shipped_catalog.profiles} <= pools
    gpu_profiles = [p for p in shipped_catalog.profiles if p.gpu]
    assert gpu_profiles, "the catalogue offers a GPU profile"
    pool_gpus = {p.slug: p.gpus for p in shipped_catalog.pools}
    assert all(p.gpu <= pool_gpus[p.pool] for p in gpu_profiles)


# -- validation of a catalogue file -------------------------------------------------------


def test_duplicate_image_slug_is_rejected_naming_the_slug(tmp_path):
    data = raw_shipped()
    data["images"].append(dict(data["images"][0], name="Copy"))
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(write(tmp_path, data))
    assert "duplicate" in caught.value.message
    assert "python-local" in caught.value.message


def test_duplicate_profile_slug_is_rejected_naming_the_slug(tmp_path):
    data = raw_shipped()
    data["profiles"].append(dict(data["profiles"][1]))
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(write(tmp_path, data))
    assert "cpu-large" in caught.value.message


def test_profile_naming_an_unknown_pool_is_rejected(tmp_path):
    data = raw_shipped()
    data["profiles"][1]["pool"] = "tpu"
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(write(tmp_path, data))
    assert "'cpu-large'" in caught.value.message
    assert "'tpu'" in caught.value.message


def test_two_default_profiles_are_rejected(tmp_path):
    data = raw_shipped()
    data["profiles"][1]["default"] = True
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(write(tmp_path, data))
    assert "only one profile can be the default" in caught.value.message


def test_invalid_yaml_is_rejected_naming_the_file(tmp_path):
    path = write(tmp_path, "images: [\n  - slug: x\nprofiles: {")
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(path)
    assert str(path) in caught.value.message
    assert "not valid YAML" in caught.value.message


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [("cpus", 2, "profiles.0.cpus"), ("memory", "2GB", "profiles.0.memory"),
     ("slug", "CPU_Small", "profiles.0.slug")],
)
def test_a_bad_profile_field_is_rejected_naming_file_and_field(tmp_path, field, value, where):
    data = raw_shipped()
    data["profiles"][0][field] = value
    path = write(tmp_path, data)
    with pytest.raises(InvalidInput) as caught:
        load_catalog_file(path)
    assert str(path) in caught.value.message
    assert where in caught.value.message


# -- the catalogue in the database --------------------------------------------------------


def test_seeding_happens_once(shipped_catalog):
    store = CatalogStore(make_session_factory("sqlite://"))
    assert store.seed_if_empty(shipped_catalog) is True
    changed = shipped_catalog.model_copy(update={"images": shipped_catalog.images[:1]})
    assert store.seed_if_empty(changed) is False
    assert [i.slug for i in store.catalog().images] == ["python-local", "pytorch"]


def test_stored_catalog_is_the_seeded_one_in_order(store, shipped_catalog):
    assert store.catalog() == shipped_catalog


def test_resolve_without_choices_gives_the_defaults(store):
    _, image, profile = store.resolve(None, None)
    assert image.slug == "python-local"
    assert profile.slug == "cpu-small"


def test_resolve_named_image_and_profile(store):
    catalog, image, profile = store.resolve("pytorch", "gpu-a100-1")
    assert (image.slug, profile.slug) == ("pytorch", "gpu-a100-1")
    assert profile.pool in {p.slug for p in catalog.pools}


def test_unknown_image_lists_the_valid_images(store):
    with pytest.raises(InvalidInput) as caught:
        store.resolve("tensorflow", None)
    message = caught.value.message
    assert "'tensorflow'" in message
    assert "python-local" in message and "pytorch" in message


def test_unknown_profile_lists_the_valid_profiles(store):
    with pytest.raises(InvalidInput) as caught:
        store.resolve(None, "huge")
    message = caught.value.message
    assert "'huge'" in message
    for slug in ("cpu-small", "cpu-large", "gpu-a100-1"):
        assert slug in message


def test_hidden_image_is_neither_default_nor_offered(shipped_catalog):
    hidden = shipped_catalog.images[0].model_copy(update={"hidden": True})
    catalog = shipped_catalog.model_copy(update={"images": [hidden, *shipped_catalog.images[1:]]})
    store = CatalogStore(make_session_factory("sqlite://"))
    store.seed_if_empty(catalog)
    assert store.resolve(None, None)[1].slug == "pytorch"
    with pytest.raises(InvalidInput) as caught:
        store.resolve("python-local", None)
    assert "choose one of: pytorch " in caught.value.message


def test_get_returns_an_item_or_not_found(store):
    assert store.get("profiles", "cpu-large").cpu == 4
    with pytest.raises(NotFound):
        store.get("images", "nope")


# -- runtime spec -------------------------------------------------------------------------


def test_runtime_spec_carries_the_profile_placement_and_price(shipped_catalog):
    image = next(i for i in shipped_catalog.images if i.slug == "pytorch")
    profile = next(p for p in shipped_catalog.profiles if p.slug == "gpu-a100-1")
    spec = runtime_spec(image, profile)
    assert (spec.image, spec.profile, spec.pool) == ("pytorch", "gpu-a100-1", "gpu-a100")
    assert (spec.cpu, spec.memory, spec.gpu) == (8, "64Gi", 1)
    assert spec.gpu_resource == "nvidia.com/gpu"
    assert spec.gpu_type == "nvidia-a100"
    assert spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert [t.model_dump() for t in spec.tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "value": None, "effect": "NoSchedule"}
    ]
    assert spec.price_per_hour == 2.5
    assert spec.kernel == "python3"


def test_runtime_spec_pins_images_to_a_tag_or_digest():
    """A local image runs in the platform's Python here, but on Kubernetes the same catalogue
    entry is a container: its reference is pinned either way."""
    profile = Profile(slug="cpu-small", name="CPU small")
    local = Image(slug="py", name="Py", reference="quay.io/jupyter/scipy-notebook", local=True,
                  versions=[{"tag": "2025-06-30"}])
    container = local.model_copy(update={"local": False})
    assert runtime_spec(local, profile).image_reference == "quay.io/jupyter/scipy-notebook:2025-06-30"
    digest = "sha256:" + "a" * 64
    pinned = Image.model_validate({**container.model_dump(), "versions": [{"tag": "2025-06-30", "digest": digest}]})
    assert runtime_spec(pinned, profile).image_reference == f"quay.io/jupyter/scipy-notebook@{digest}"
    assert runtime_spec(container, profile).image_reference == \
        "quay.io/jupyter/scipy-notebook:2025-06-30"
    assert runtime_spec(container, profile, "2024-01-01").image_reference == \
        "quay.io/jupyter/scipy-notebook:2024-01-01"


def test_runtime_spec_does_not_share_the_profile_node_selector():
    profile = Profile(slug="p", name="P", node_selector={"zone": "a"})
    image = Image(slug="py", name="Py", reference="r", local=True)
    spec = runtime_spec(image, profile)
    spec.node_selector["zone"] = "b"
    assert profile.node_selector == {"zone": "a"}
