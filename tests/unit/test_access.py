"""Who may use a profile and an image (``catalog/access.py``): the rule itself, and every place
that applies it — the spawn form and the spawner, job submissions (real, dry and offline),
deployments, the catalogue API and pages, cost previews — giving the same answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fermi_extension.backends.kubernetes.render import render_deployment, render_job
from fermi_extension.caller import Caller
from fermi_extension.catalog import access
from fermi_extension.catalog.api import visible_profiles
from fermi_extension.catalog.schema import Catalog
from fermi_extension.catalog.store import CatalogStore
from fermi_extension.db import make_session_factory
from fermi_extension.deployments.backend import ServingBackend
from fermi_extension.deployments.models import CreateDeployment
from fermi_extension.deployments.service import DeploymentService
from fermi_extension.errors import Forbidden, InvalidInput, NotFound
from fermi_extension.jobs.models import CreateJob
from fermi_extension.jobs.service import JobService
from fermi_extension.usage.service import preview
from fermi_spawner.options import Refused, offered_images, offered_profiles, resolve
from tests.mocking import FakeBackend
from tests.platform import make_notebook

CATALOG = {
    "pools": [{"slug": "cpu", "name": "CPU"}],
    "images": [
        {"slug": "python-local", "name": "Python", "reference": "quay.io/jupyter/scipy-notebook",
         "local": True, "versions": [{"tag": "v1"}]},
        {"slug": "star", "name": "Featured", "reference": "quay.io/jupyter/base-notebook",
         "local": True, "featured": True},
        {"slug": "retired", "name": "Retired", "reference": "example.org/retired", "local": True,
         "hidden": True, "redirect_message": "use python-local"},
    ],
    "profiles": [
        {"slug": "cpu-small", "name": "Small", "default": True, "price_per_hour": 0.1},
        {"slug": "team-only", "name": "Team", "allowed_groups": ["team", "ml"],
         "price_per_hour": 1.0},
        {"slug": "ml-only", "name": "ML", "allowed_groups": ["ml"]},
    ],
}

ANN = Caller("ann")  # in no group
TEAM = Caller("tess", groups=("team",))
ADMIN = Caller("root", admin=True)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.model_validate(CATALOG)


@pytest.fixture
def store(catalog) -> CatalogStore:
    store = CatalogStore(make_session_factory("sqlite://"))
    store.seed_if_empty(catalog)
    return store


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("caller, offered", [
    (ANN, ["cpu-small"]),
    (TEAM, ["cpu-small", "team-only"]),
    (Caller("mo", groups=("ml", "other")), ["cpu-small", "team-only", "ml-only"]),
    (ADMIN, ["cpu-small", "team-only", "ml-only"]),
])
def test_a_profile_is_offered_to_everyone_or_to_members_of_its_groups_and_admins(
        catalog, caller, offered):
    assert [p.slug for p in access.offered_profiles(catalog, caller)] == offered
    assert [p.slug for p in catalog.profiles if access.may_use_profile(p, caller)] == offered


def test_naming_a_reserved_profile_is_refused_with_its_groups_and_the_choices(catalog):
    with pytest.raises(Forbidden) as refused:
        access.choose_profile(catalog, ANN, "team-only")
    assert refused.value.status == 403
    assert "reserved for members of the group(s) team, ml" in refused.value.message
    assert "choose one of: cpu-small." in refused.value.message
    assert access.choose_profile(catalog, TEAM, "team-only").slug == "team-only"
    with pytest.raises(InvalidInput) as unknown:
        access.choose_profile(catalog, ANN, "huge")
    # the choices listed are the caller's: a reserved profile's name is not advertised
    assert "Unknown profile 'huge'; choose one of: cpu-small " in unknown.value.message


def test_without_any_offered_profile_the_default_is_refused(catalog):
    closed = catalog.model_copy(update={"profiles": [
        p.model_copy(update={"allowed_groups": ["x"], "default": False})
        for p in catalog.profiles]})
    with pytest.raises(Forbidden) as refused:
        access.choose_profile(closed, ANN, None)
    assert "No profile of the catalogue is offered to you" in refused.value.message
    assert access.choose_profile(closed, ADMIN, None).slug == "cpu-small"


def test_the_default_profile_falls_back_to_the_first_offered(catalog):
    reserved_default = catalog.model_copy(update={"profiles": [
        catalog.profiles[1].model_copy(update={"default": True}),
        catalog.profiles[0].model_copy(update={"default": False})]})
    assert access.choose_profile(reserved_default, ANN, None).slug == "cpu-small"
    assert access.choose_profile(reserved_default, TEAM, None).slug == "team-only"


def test_a_hidden_image_is_run_by_nobody_and_read_by_admins_only(catalog):
    assert [i.slug for i in access.runnable_images(catalog)] == ["star", "python-local"]
    assert [i.slug for i in access.readable_images(catalog, ANN)] == ["star", "python-local"]
    assert "retired" in [i.slug for i in access.readable_images(catalog, ADMIN)]
    for who in (ANN, ADMIN):
        with pytest.raises(InvalidInput) as refused:
            access.choose_image(catalog, "retired")
        assert "no longer offered: use python-local. Choose one of: python-local, star" in \
            refused.value.message, who
    assert access.choose_image(catalog, None).slug == "python-local"


# -- every place that applies it ----------------------------------------------------------------


def test_the_spawn_form_and_the_spawner_apply_the_rule(catalog):
    assert [p.slug for p in offered_profiles(catalog, set(), False)] == ["cpu-small"]
    assert [p.slug for p in offered_profiles(catalog, {"team"}, False)] == [
        "cpu-small", "team-only"]
    assert [i.slug for i in offered_images(catalog)] == ["star", "python-local"]
    with pytest.raises(Refused) as refused:
        resolve(catalog, {"profile": "team-only"}, groups=set(), requested=True)
    assert refused.value.status == 403
    assert refused.value.message == access.reserved(catalog.profiles[1], catalog.profiles[:1])
    assert resolve(catalog, {"profile": "team-only"}, groups={"team"}).profile.slug == "team-only"
    # saved options: the same rule, a fallback with the same sentence as a notice
    saved = resolve(catalog, {"profile": "team-only"}, groups=set(), requested=False)
    assert saved.profile.slug == "cpu-small" and refused.value.message in saved.notices[0]


def test_job_submissions_apply_the_rule(store, tmp_path):
    jobs = JobService(store.session_factory, store, FakeBackend(), tmp_path / "jobs")
    request = CreateJob(notebook=make_notebook(), profile="team-only")
    for path in (jobs.prepare, lambda c, r: jobs.submit(c, r, dry_run=True), jobs.submit):
        with pytest.raises(Forbidden) as refused:
            path(ANN, request)
        assert "reserved for members of the group(s) team, ml" in refused.value.message
    assert jobs.list(ADMIN)[1] == 0  # nothing was written by the refusals
    assert jobs.submit(TEAM, request).profile == "team-only"
    with pytest.raises(InvalidInput, match="no longer offered: use python-local"):
        jobs.submit(ADMIN, CreateJob(notebook=make_notebook(), image="retired"))


async def test_deployments_apply_the_rule(store):
    deployments = DeploymentService(store.session_factory, store, registry=None,
                                    backend=ServingBackend(), public_url="http://127.0.0.1:1")
    with pytest.raises(Forbidden) as refused:
        await deployments.create(ANN, CreateDeployment(name="d", model="m", version="1",
                                                       profile="team-only"))
    assert "reserved for members of the group(s) team, ml" in refused.value.message
    assert deployments.list(ADMIN) == []


def test_the_catalogue_api_and_pages_list_what_the_rule_offers(store):
    settings = {"services": SimpleNamespace(catalog=store, job_backend=FakeBackend())}
    for caller in (ANN, TEAM, ADMIN):
        listed = [p.slug for p in visible_profiles(settings, caller).profiles]
        assert listed == [p.slug for p in access.offered_profiles(store.catalog(), caller)]


def test_cost_previews_apply_the_rule(catalog):
    with pytest.raises(NotFound) as refused:
        preview(catalog, ANN, "team-only", "1", "1")
    assert "choose one of cpu-small" in refused.value.message
    assert preview(catalog, TEAM, "team-only", "2", "1").cost == 2.0


def test_offline_renders_are_the_platforms_own_and_see_every_profile(catalog, tmp_path):
    notebook = tmp_path / "train.ipynb"
    notebook.write_text(__import__("json").dumps(make_notebook()))
    job, = [o for o in render_job(notebook, {}, catalog=catalog, image=None, profile="team-only")
            if o["kind"] == "Job"]
    assert job["kind"] == "Job"
    assert render_deployment("m", "1", catalog=catalog, name="d", profile="ml-only")
    with pytest.raises(InvalidInput, match="no longer offered"):
        render_job(notebook, {}, catalog=catalog, image="retired", profile=None)
