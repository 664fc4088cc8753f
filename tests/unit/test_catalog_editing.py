"""Editing the catalogue at run time: validation of the whole, revisions, history, revert,
optimistic concurrency, import/export and the audit trail (in-memory SQLite, no platform)."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from sqlalchemy import func, select

from fermi_extension.caller import Caller
from fermi_extension.catalog.service import (
    ANY,
    CatalogEditor,
    PreconditionRequired,
    diff,
    expected_revision,
    export_yaml,
    parse_catalog_document,
    parse_if_match,
)
from fermi_extension.catalog.schema import Catalog, Image, check_reference
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.db import AuditEvent, CatalogItem, CatalogRevision, make_session_factory
from fermi_extension.errors import Conflict, Forbidden, InvalidInput, NotFound
from fermi_extension.paths import shipped

SHIPPED = shipped("hub_config") / "catalog.yaml"
ADMIN = Caller("root", admin=True)
ALICE = Caller("alice")
T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        self.now += dt.timedelta(minutes=1)
        return self.now


@pytest.fixture
def store() -> CatalogStore:
    store = CatalogStore(make_session_factory("sqlite://"))
    store.seed_if_empty(load_catalog_file(SHIPPED))
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def editor(store, clock) -> CatalogEditor:
    return CatalogEditor(store, ADMIN, clock=clock)


def image(slug: str = "tf", **fields) -> dict:
    return {"slug": slug, "name": "TensorFlow", "reference": "quay.io/jupyter/tensorflow-notebook",
            "versions": [{"tag": "2025-06-30", "labels": {"framework": "tensorflow"}}], **fields}


def gpu_profile(slug: str = "gpu-a100-2", **fields) -> dict:
    return {"slug": slug, "name": "2 × A100", "cpu": 16, "memory": "128Gi", "gpu": 2,
            "pool": "gpu-a100", "price_per_hour": 5.0, **fields}


def counts(store) -> tuple[int, int, int]:
    with store.session_factory() as session:
        return (session.scalar(select(func.count()).select_from(CatalogItem)),
                session.scalar(select(func.count()).select_from(CatalogRevision)),
                session.scalar(select(func.count()).select_from(AuditEvent)))


def audits(store) -> list[AuditEvent]:
    with store.session_factory() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all())


# -- the schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", [
    "r", "quay.io/jupyter/scipy-notebook", "ubuntu:22.04", "docker.io/library/ubuntu",
    "localhost:5000/team/img:v1.2_rc-3", "registry.example.com:443/a/b/c",
    "ghcr.io/org/img@sha256:" + "a" * 64, "ghcr.io/org/img:1@sha256:" + "0" * 64,
    "[::1]:5000/x", "a__b/c.d-e",
])
def test_valid_references(reference):
    assert check_reference(reference) == reference


@pytest.mark.parametrize(("reference", "phrase"), [
    ("quay.io/Jupyter/scipy", "'Jupyter' must be lowercase"),
    ("quay.io//scipy", "empty path component"),
    ("scipy:", "tag ''"),
    ("scipy:-bad", "tag '-bad'"),
    ("scipy@sha256:abc", "digest"),
    ("scipy@sha256:" + "a" * 63, "64 hex digits"),
    ("host:port/x", "registry 'host:port'"),
    ("with space", "spaces"),
    ("", "empty"),
    ("a/-b", "path component '-b'"),
])
def test_invalid_references_say_which_piece_is_wrong(reference, phrase):
    with pytest.raises(ValueError) as caught:
        check_reference(reference)
    assert phrase in str(caught.value)
    assert "[registry[:port]/]path[:tag][@sha256:digest]" in str(caught.value)


def test_image_has_deprecation_redirect_and_pull_secret_fields():
    img = Image.model_validate(image(deprecated=True, redirect_message="use tf-2",
                                     pull_secret="regcred"))
    assert (img.deprecated, img.redirect_message, img.pull_secret) == (True, "use tf-2", "regcred")
    with pytest.raises(ValueError, match="pull_secret"):
        Image.model_validate(image(pull_secret="Not A Secret"))


def test_reference_with_a_tag_and_versions_is_refused():
    with pytest.raises(ValueError, match="carries a tag or digest"):
        Image.model_validate(image(reference="quay.io/jupyter/tensorflow-notebook:latest"))
    assert Image.model_validate(image(reference="quay.io/x/y:latest", versions=[])).versions == []


def test_profile_asking_more_gpus_than_its_pool_is_invalid():
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["profiles"].append(gpu_profile(gpu=9))
    with pytest.raises(ValueError) as caught:
        Catalog.model_validate(raw)
    message = str(caught.value)
    assert "asks for 9 GPUs but pool 'gpu-a100' has 8" in message
    assert "no pool has that many" in message


def test_default_image_skips_deprecated_ones():
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["images"][0]["deprecated"] = True
    assert Catalog.model_validate(raw).default_image().slug == "pytorch"


# -- create -----------------------------------------------------------------------------------


def test_admin_creates_an_image_and_the_next_read_sees_it(store, editor):
    item, meta = editor.create("images", image())
    assert (item.slug, meta.revision, meta.updated_by) == ("tf", 1, "root")
    assert [i.slug for i in store.catalog().images][-1] == "tf"
    assert store.resolve("tf", None)[1].reference == "quay.io/jupyter/tensorflow-notebook"
    history = editor.history("images", "tf")
    assert [(r.revision, r.action, r.by) for r in history.revisions] == [(1, "create", "root")]
    event = audits(store)[-1]
    assert (event.actor, event.action, event.target_kind, event.target_id) == \
        ("root", "create", "image", "tf")
    assert event.after["reference"] == "quay.io/jupyter/tensorflow-notebook"


def test_admin_creates_a_gpu_profile_and_jobs_can_resolve_it(store, editor):
    editor.create("profiles", gpu_profile())
    _, _, profile = store.resolve(None, "gpu-a100-2")
    assert (profile.gpu, profile.pool) == (2, "gpu-a100")


def test_non_admin_cannot_edit_and_nothing_is_written(store):
    before = counts(store)
    with pytest.raises(Forbidden) as caught:
        CatalogEditor(store, ALICE).create("images", image())
    assert "Only admins" in caught.value.message
    assert counts(store) == before


def test_duplicate_slug_is_a_conflict(store, editor):
    before = counts(store)
    with pytest.raises(Conflict) as caught:
        editor.create("profiles", {"slug": "cpu-small", "name": "again"})
    assert "already a profile 'cpu-small'" in caught.value.message
    assert counts(store) == before


@pytest.mark.parametrize(("kind", "data", "phrases"), [
    ("images", image(reference="Quay.io/Jupyter/X"), ["reference", "must be lowercase"]),
    ("profiles", gpu_profile(gpu=12), ["gpu", "asks for 12 GPUs but pool 'gpu-a100' has 8"]),
    ("profiles", gpu_profile(pool="tpu"), ["pool", "'tpu'"]),
    ("profiles", gpu_profile(memory="2GB"), ["memory"]),
    ("profiles", gpu_profile(default=True), ["only one profile can be the default"]),
    ("pools", {"slug": "x", "name": "X", "gpus": -1}, ["gpus"]),
    ("images", {**image(), "colour": "red"}, ["colour", "Extra inputs"]),
])
def test_invalid_items_are_refused_naming_the_field_and_nothing_is_written(
        store, editor, kind, data, phrases):
    before = counts(store)
    with pytest.raises(InvalidInput) as caught:
        editor.create(kind, data)
    for phrase in phrases:
        assert phrase in caught.value.message
    assert counts(store) == before


# -- update, optimistic concurrency -------------------------------------------------------------


def test_patch_changes_only_the_fields_sent_and_bumps_the_revision(store, editor):
    item, meta = editor.update("profiles", "cpu-large", {"price_per_hour": 0.3}, expected=1)
    assert (item.price_per_hour, item.cpu, meta.revision) == (0.3, 4, 2)
    assert store.get("profiles", "cpu-large").price_per_hour == 0.3
    detail = editor.revision("profiles", "cpu-large", 2)
    assert detail.action == "update" and detail.previous_revision == 1
    assert detail.diff == {"price_per_hour": (0.2, 0.3)}
    event = audits(store)[-1]
    assert event.before["price_per_hour"] == 0.2 and event.after["price_per_hour"] == 0.3


def test_a_stale_revision_is_refused_and_nothing_is_written(store, editor, clock):
    editor.update("profiles", "cpu-large", {"price_per_hour": 0.3}, expected=1)
    other = CatalogEditor(store, Caller("mallory", admin=True), clock=clock)
    before = counts(store)
    with pytest.raises(Conflict) as caught:
        other.update("profiles", "cpu-large", {"price_per_hour": 0.4}, expected=1)
    message = caught.value.message
    assert "changed by root at 2026-01-02 03:05:05 UTC since you loaded it" in message
    assert "reload and apply your change again" in message
    assert counts(store) == before
    assert store.get("profiles", "cpu-large").price_per_hour == 0.3


def test_a_change_without_a_revision_is_refused(store, editor):
    with pytest.raises(PreconditionRequired) as caught:
        editor.update("images", "pytorch", {"featured": True}, expected=None)
    assert caught.value.status == 428 and 'If-Match: "1"' in caught.value.message
    editor.update("images", "pytorch", {"featured": True}, expected=ANY)
    assert store.get("images", "pytorch").featured is True


def test_a_patch_that_changes_nothing_makes_no_revision(store, editor):
    before = counts(store)
    _, meta = editor.update("profiles", "cpu-large", {"cpu": 4}, expected=1)
    assert meta.revision == 1 and counts(store) == before


def test_slug_cannot_be_renamed(editor):
    with pytest.raises(InvalidInput, match="cannot be renamed"):
        editor.update("profiles", "cpu-large", {"slug": "cpu-xl"}, expected=1)


def test_shrinking_a_pool_below_a_profile_is_refused(store, editor):
    with pytest.raises(InvalidInput) as caught:
        editor.update("pools", "gpu-a100", {"gpus": 0}, expected=1)
    assert "asks for 1 GPU but pool 'gpu-a100' has 0" in caught.value.message
    assert store.get("pools", "gpu-a100").gpus == 8


def test_unknown_item_is_not_found(editor):
    with pytest.raises(NotFound):
        editor.update("images", "nope", {"name": "x"}, expected=1)


# -- delete -----------------------------------------------------------------------------------


def test_the_default_profile_cannot_be_deleted(store, editor):
    before = counts(store)
    with pytest.raises(Conflict) as caught:
        editor.delete("profiles", "cpu-small", expected=1)
    assert "default profile" in caught.value.message
    assert counts(store) == before


def test_a_pool_in_use_cannot_be_deleted(editor):
    with pytest.raises(Conflict) as caught:
        editor.delete("pools", "gpu-a100", expected=1)
    assert "used by profile(s) gpu-a100-1" in caught.value.message


def test_delete_then_revert_recreates_with_continuing_revisions(store, editor):
    deleted = editor.delete("profiles", "cpu-large", expected=1)
    assert deleted.revision == 2
    assert "cpu-large" not in [p.slug for p in store.catalog().profiles]
    assert editor.history("profiles", "cpu-large").current_revision is None
    with pytest.raises(Conflict):  # the state of a deleted item is its deletion revision
        editor.revert("profiles", "cpu-large", 1, expected=1)
    item, meta = editor.revert("profiles", "cpu-large", 1, expected=2)
    assert (item.cpu, meta.revision) == (4, 3)
    history = editor.history("profiles", "cpu-large")
    assert [(r.revision, r.action) for r in history.revisions] == \
        [(3, "revert"), (2, "delete"), (1, "import")]
    assert [a.action for a in audits(store)] == ["delete", "revert"]


def test_recreating_a_deleted_slug_continues_its_revision_numbers(editor):
    editor.create("images", image())
    editor.delete("images", "tf", expected=1)
    _, meta = editor.create("images", image(name="TF again"))
    assert meta.revision == 3


def test_the_last_image_cannot_be_deleted(editor):
    editor.delete("images", "pytorch", expected=1)
    with pytest.raises(InvalidInput, match="at least one image"):
        editor.delete("images", "python-local", expected=1)


# -- history, diff, revert --------------------------------------------------------------------


def test_history_diff_and_revert(store, editor):
    editor.update("images", "pytorch", {"name": "PyTorch 2", "deprecated": True,
                                        "redirect_message": "use pytorch-3"}, expected=1)
    history = editor.history("images", "pytorch")
    assert history.current_revision == 2
    assert [r.revision for r in history.revisions] == [2, 1]
    detail = editor.revision("images", "pytorch", 2)
    assert detail.diff == {"name": ("PyTorch (CUDA)", "PyTorch 2"), "deprecated": (False, True),
                           "redirect_message": (None, "use pytorch-3")}
    first = editor.revision("images", "pytorch", 1)
    assert first.previous_revision is None and first.diff["slug"] == (None, "pytorch")
    item, meta = editor.revert("images", "pytorch", 1, expected=2)
    assert (item.name, item.deprecated, meta.revision) == ("PyTorch (CUDA)", False, 3)
    assert editor.revision("images", "pytorch", 3).action == "revert"
    assert store.get("images", "pytorch").name == "PyTorch (CUDA)"
    with pytest.raises(NotFound, match="revisions 1, 2, 3"):
        editor.revision("images", "pytorch", 9)


def test_a_revert_that_no_longer_fits_the_catalogue_is_refused(store, editor):
    editor.create("pools", {"slug": "tiny", "name": "Tiny", "gpus": 1})
    editor.create("profiles", gpu_profile("one-gpu", gpu=1, pool="tiny"))
    editor.update("profiles", "one-gpu", {"pool": "gpu-a100", "gpu": 4}, expected=1)
    editor.update("pools", "tiny", {"gpus": 0}, expected=1)
    with pytest.raises(InvalidInput) as caught:
        editor.revert("profiles", "one-gpu", 1, expected=2)
    assert "Revision 1 cannot be restored" in caught.value.message
    assert "asks for 1 GPU but pool 'tiny' has 0" in caught.value.message


def test_old_databases_get_a_first_revision_from_the_current_row(store, editor):
    with store.session_factory() as session:  # as before revisions were kept
        session.query(CatalogRevision).delete()
        session.commit()
    history = editor.history("pools", "cpu")
    assert [(r.revision, r.action, r.by) for r in history.revisions] == [(1, "import", "seed")]
    editor.update("pools", "cpu", {"max_running_jobs": 3}, expected=1)
    assert [r.revision for r in editor.history("pools", "cpu").revisions] == [2, 1]
    assert editor.revision("pools", "cpu", 2).diff == {"max_running_jobs": (2, 3)}


def test_seeding_records_a_first_revision_of_every_item(store):
    with store.session_factory() as session:
        rows = session.scalars(select(CatalogRevision)).all()
    assert {(r.kind, r.slug, r.revision, r.action) for r in rows} >= {
        ("profiles", "cpu-small", 1, "import"), ("pools", "cpu", 1, "import")}


# -- the whole catalogue: export and import ----------------------------------------------------


def test_export_import_round_trip_changes_nothing(store, editor):
    text = export_yaml(store.catalog())
    assert text.startswith("# The Fermi catalogue")
    raw = yaml.safe_load(text)
    assert list(raw) == ["pools", "images", "profiles"]
    assert Catalog.model_validate(raw) == store.catalog()
    before = counts(store)
    plan = editor.replace(parse_catalog_document(text), dry_run=False)
    assert plan.changed is False
    assert all(not (c.created or c.updated or c.deleted) for c in plan.changes.values())
    assert counts(store) == before


def test_import_dry_run_shows_changes_and_writes_nothing(store, editor):
    raw = yaml.safe_load(export_yaml(store.catalog()))
    raw["images"].append(image())
    raw["profiles"] = [p for p in raw["profiles"] if p["slug"] != "cpu-large"]
    raw["pools"][0]["max_running_jobs"] = 4
    before = counts(store)
    plan = editor.replace(raw, dry_run=True)
    assert plan.dry_run and plan.changed
    assert plan.changes["images"].created == ["tf"]
    assert plan.changes["profiles"].deleted == ["cpu-large"]
    assert plan.changes["pools"].updated == ["cpu"]
    assert plan.changes["pools"].fields == {"cpu": ["max_running_jobs"]}
    assert counts(store) == before


def test_import_applies_as_one_change_with_import_revisions(store, editor):
    raw = yaml.safe_load(export_yaml(store.catalog()))
    raw["images"].insert(0, image())
    raw["profiles"] = [p for p in raw["profiles"] if p["slug"] != "cpu-large"]
    audits_before = len(audits(store))
    plan = editor.replace(raw)
    assert plan.changed and not plan.dry_run
    catalog, meta, version = editor.state()
    assert [i.slug for i in catalog.images] == ["tf", "python-local", "pytorch"]
    assert "cpu-large" not in [p.slug for p in catalog.profiles]
    assert version == plan.version
    assert [(r.revision, r.action, r.data is None)
            for r in editor.history("profiles", "cpu-large").revisions] == \
        [(2, "import", True), (1, "import", False)]
    assert editor.history("images", "tf").revisions[0].action == "import"
    new_audits = audits(store)[audits_before:]
    assert [(a.action, a.target_kind) for a in new_audits] == [("import", "catalog")]
    assert new_audits[0].after["changes"]["images"]["created"] == ["tf"]


def test_import_of_an_invalid_catalogue_names_the_field_and_writes_nothing(store, editor):
    raw = yaml.safe_load(export_yaml(store.catalog()))
    raw["profiles"][2]["gpu"] = 99
    before = counts(store)
    with pytest.raises(InvalidInput, match="asks for 99 GPUs"):
        editor.replace(raw)
    raw["profiles"][2]["gpu"] = 1
    raw["profiles"][1]["memory"] = "lots"
    with pytest.raises(InvalidInput) as caught:
        editor.replace(raw)
    assert "profiles.1.memory (profile 'cpu-large')" in caught.value.message
    assert counts(store) == before


def test_import_against_a_stale_version_is_refused(store, editor):
    _, _, version = editor.state()
    raw = yaml.safe_load(export_yaml(store.catalog()))
    editor.update("pools", "cpu", {"name": "CPUs"}, expected=1)
    with pytest.raises(Conflict, match="changed since you loaded it"):
        editor.replace(raw, expected_version=version)


def test_catalogue_documents_must_be_mappings():
    with pytest.raises(InvalidInput, match="not valid YAML"):
        parse_catalog_document("images: [\n  - a\nprofiles: {")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_catalog_document(b"{images", "application/json")
    with pytest.raises(InvalidInput, match="mapping"):
        parse_catalog_document("- 1\n- 2\n")
    assert parse_catalog_document(b'{"pools": []}', "application/json") == {"pools": []}


def test_an_import_without_a_kind_is_refused_rather_than_deleting_it(store, editor):
    raw = yaml.safe_load(export_yaml(store.catalog()))
    del raw["pools"]
    with pytest.raises(InvalidInput, match="pools: missing"):
        editor.replace(raw, dry_run=True)


# -- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ('"3"', 3), ("3", 3), ('W/"7"', 7), ("*", ANY)])
def test_if_match_parsing(header, expected):
    assert parse_if_match(header) == expected


def test_if_match_and_body_must_agree():
    assert expected_revision('"2"', None) == 2
    assert expected_revision(None, 4) == 4
    with pytest.raises(InvalidInput):
        expected_revision('"2"', 3)
    with pytest.raises(InvalidInput):
        parse_if_match('"abc"')


def test_diff_lists_changed_fields_in_order():
    assert diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": (2, 3), "c": (None, 4)}
    assert diff({"a": 1}, None) == {"a": (1, None)}


def test_hidden_image_with_a_redirect_message_says_where_to_go(store, editor):
    editor.update("images", "pytorch", {"hidden": True, "redirect_message": "use python-local"},
                  expected=1)
    with pytest.raises(InvalidInput) as caught:
        store.resolve("pytorch", None)
    assert "no longer offered: use python-local. Choose one of: python-local" in \
        caught.value.message
