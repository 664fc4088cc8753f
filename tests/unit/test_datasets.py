"""Datasets: locations checked, versions, sharing by group, and attaching follows access; where
a location may be is the admin's (paths inside the allowed folders, claims on the list)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from fermi_extension.caller import Caller
from fermi_extension.datasets.service import (
    CreateDataset,
    DatasetPolicy,
    DatasetService,
    NewVersion,
    PatchDataset,
)
from fermi_extension.db import AuditEvent, Dataset, make_session_factory
from fermi_extension.errors import Conflict, InvalidInput, NotFound, Unprocessable

ALICE = Caller("alice", groups=("lab",))
BOB = Caller("bob", groups=("other",))
CAROL = Caller("carol", groups=("lab",))
ADMIN = Caller("root", admin=True)


@pytest.fixture
def sessions():
    return make_session_factory("sqlite://")


@pytest.fixture
def datasets(sessions, tmp_path):
    # the test's folder is the one the admin allows for datasets; "datasets" the one claim
    return DatasetService(sessions, DatasetPolicy([str(tmp_path)], ["datasets"]))


def count(sessions, model):
    with sessions() as session:
        return session.query(model).count()


@pytest.mark.parametrize("location, says", [
    ("data/wine", "absolute path"), ("/srv/../etc", "absolute path"), ("ftp://x/y", "s3://"),
    ("pvc://datasets/../claim-bob", "pvc://"), ("pvc://datasets/wine/../../x", "pvc://"),
])
def test_a_location_fermi_cannot_read_is_refused_with_the_forms_it_can(location, says):
    with pytest.raises(ValidationError, match=says.replace("(", r"\(")):
        CreateDataset(name="wine", location=location)


def test_bad_names_and_missing_paths_write_nothing(datasets, sessions, tmp_path):
    with pytest.raises(ValidationError, match="lowercase"):
        CreateDataset(name="Wine Data", location=str(tmp_path))
    with pytest.raises(Unprocessable, match="Nothing at"):
        datasets.create(ALICE, CreateDataset(name="wine", location=str(tmp_path / "missing")))
    assert count(sessions, Dataset) == 0 and count(sessions, AuditEvent) == 0


def test_versions_sharing_and_attaching(datasets, tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    made = datasets.create(ALICE, CreateDataset(name="wine", location=str(tmp_path / "v1"),
                                                description="UCI wine"))
    assert (made.mount_path, made.env) == ("datasets/wine", "FERMI_DATASET_WINE")
    datasets.add_version(ALICE, "wine", NewVersion(location=str(tmp_path / "v2")))
    datasets.add_version(ALICE, "wine", NewVersion(version="s3", location="s3://bucket/wine"))
    with pytest.raises(Conflict):
        datasets.add_version(ALICE, "wine", NewVersion(version="s3", location="s3://b/x"))
    assert [v.version for v in datasets.get(ALICE, "wine").versions] == ["1", "2", "s3"]

    # the latest version unless one is named
    latest, = datasets.resolve(ALICE, ["wine"])
    assert (latest.version, latest.location, latest.kind) == ("s3", "s3://bucket/wine", "s3")
    first, = datasets.resolve(ALICE, ["wine:1"])
    assert first.location == os.path.realpath(tmp_path / "v1") and first.kind == "path"
    with pytest.raises(NotFound, match="no version '9'"):
        datasets.resolve(ALICE, ["wine:9"])
    with pytest.raises(InvalidInput, match="twice"):
        datasets.resolve(ALICE, ["wine", "wine:1"])

    # others see it only once it is shared with a group of theirs; only the owner changes it
    for caller in (BOB, CAROL):
        with pytest.raises(NotFound):
            datasets.resolve(caller, ["wine"])
    assert datasets.list(CAROL).datasets == []
    datasets.patch(ALICE, "wine", PatchDataset(groups=["lab"]))
    assert [d.name for d in datasets.list(CAROL).datasets] == ["wine"]
    assert datasets.resolve(CAROL, ["wine:2"])[0].version == "2"
    with pytest.raises(NotFound, match="only its owner"):
        datasets.patch(CAROL, "wine", PatchDataset(description="mine now"))
    with pytest.raises(NotFound):
        datasets.get(BOB, "wine")
    assert [d.name for d in datasets.list(ADMIN).datasets] == ["wine"]
    datasets.delete(ALICE, "wine")
    assert datasets.list(ADMIN).datasets == []


# -- where a dataset may be: the admin's folders and claims (security review, holes A and B) ----


@pytest.fixture
def machine(tmp_path):
    """A machine with an allowed folder for datasets holding the platform's data dir (as when an
    admin allows a whole disk), a secret in that data dir, and a folder outside."""
    root, outside = tmp_path / "srv", tmp_path / "elsewhere"
    (root / "wine").mkdir(parents=True)
    data = root / "fermi-data"
    data.mkdir()
    (data / "jupyterhub_cookie_secret").write_text("s3cret")
    outside.mkdir()
    (outside / "notes.txt").write_text("private")
    return root, data, outside


def refusal(datasets, location) -> str:
    with pytest.raises(Unprocessable) as caught:
        datasets.create(ALICE, CreateDataset(name="probe", location=str(location)))
    return caught.value.message


def test_a_path_outside_the_allowed_folders_gets_one_answer_whether_it_exists_or_not(
        sessions, machine):
    root, data, outside = machine
    datasets = DatasetService(sessions, DatasetPolicy([str(root)], data_dir=str(data)))
    # today's code answers "Nothing at …" for a missing path and 201 for an existing one
    answers = {location: refusal(datasets, location) for location in (
        "/", outside, outside / "notes.txt", outside / "missing",   # outside every root
        data, data / "jupyterhub_cookie_secret", data / "missing",  # the data dir, in a root
        "/no/such/folder/anywhere")}
    assert len(set(answers.values())) == 1, answers
    message = next(iter(answers.values()))
    assert "FermiService.dataset_roots" in message and str(root) in message
    assert str(data) not in message and "Nothing" not in message
    # inside a root: a missing path says so, an existing one is registered
    assert "Nothing at" in refusal(datasets, root / "missing")
    assert datasets.create(ALICE, CreateDataset(name="wine", location=str(root / "wine"))).name
    assert count(sessions, Dataset) == 1


def test_links_are_judged_by_where_they_point(sessions, machine):
    root, data, outside = machine
    datasets = DatasetService(sessions, DatasetPolicy([str(root)], data_dir=str(data)))
    (root / "to-secret").symlink_to(data / "jupyterhub_cookie_secret")
    (root / "to-outside").symlink_to(outside)
    (root / "to-nowhere").symlink_to("/no/such/folder")
    expected = refusal(datasets, "/")
    for link in ("to-secret", "to-outside", "to-nowhere"):
        assert refusal(datasets, root / link) == expected
    # a link from an allowed folder into another allowed folder is fine
    (root / "to-wine").symlink_to(root / "wine")
    assert datasets.create(ALICE, CreateDataset(name="wine", location=str(root / "to-wine")))


def test_with_no_allowed_folders_paths_are_refused_naming_the_setting(sessions, machine):
    root, _, _ = machine
    datasets = DatasetService(sessions)  # the default: none
    message = refusal(datasets, root / "wine")
    assert "not enabled" in message and "FERMI_DATASET_ROOTS" in message
    assert refusal(datasets, root / "missing") == message
    assert count(sessions, Dataset) == 0


def test_volumes_only_on_the_claims_the_admin_lists(datasets, sessions):
    # today's code registers (and Kubernetes then mounts) anyone's claim
    for location in ("pvc://claim-bob/home", "pvc://fermi-jobs", "pvc://fermi-jobs/a1b2c3"):
        message = refusal(datasets, location)
        assert "FermiService.dataset_claims" in message and "datasets" in message
    made = datasets.create(ALICE, CreateDataset(name="wine", location="pvc://datasets/wine/v1"))
    assert made.versions[0].kind == "volume"
    with pytest.raises(Unprocessable, match="claim-bob"):
        datasets.add_version(ALICE, "wine", NewVersion(location="pvc://claim-bob/home"))
    assert [v.version for v in datasets.get(ALICE, "wine").versions] == ["1"]
    unset = DatasetService(sessions)
    with pytest.raises(Unprocessable, match="FERMI_DATASET_CLAIMS"):
        unset.create(ALICE, CreateDataset(name="other", location="pvc://datasets/x"))


def test_attaching_checks_again_with_the_admins_lists_as_they_are_now(sessions, machine):
    root, data, outside = machine
    before = DatasetService(sessions, DatasetPolicy([str(root)], ["datasets"], str(data)))
    (root / "current").symlink_to(root / "wine")
    before.create(ALICE, CreateDataset(name="wine", location=str(root / "current")))
    before.add_version(ALICE, "wine", NewVersion(location="pvc://datasets/wine"))
    attached, = before.resolve(ALICE, ["wine:1"])
    assert attached.location == os.path.realpath(root / "wine")  # what was judged is attached

    # the link is re-pointed at the data dir after registration: attaching refuses
    (root / "current").unlink()
    (root / "current").symlink_to(data)
    with pytest.raises(Unprocessable, match="'wine' version 1 cannot be attached.*dataset_roots"):
        before.resolve(ALICE, ["wine:1"])

    # the admin took the folder and the claim off the lists: nothing registered then attaches
    after = DatasetService(sessions, DatasetPolicy([str(outside)], [], str(data)))
    with pytest.raises(Unprocessable, match="dataset_claims"):
        after.resolve(ALICE, ["wine:2"])
    (root / "current").unlink()
    (root / "current").symlink_to(root / "wine")
    with pytest.raises(Unprocessable, match="dataset_roots"):
        after.resolve(ALICE, ["wine:1"])


def test_the_policy_refuses_settings_it_cannot_apply(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        DatasetPolicy(["srv/data"])
    with pytest.raises(ValueError, match="claim name"):
        DatasetPolicy(claims=["Bad Claim"])
    monkeypatch.setenv("FERMI_DATASET_ROOTS", f"{tmp_path}{os.pathsep}/srv/data")
    monkeypatch.setenv("FERMI_DATASET_CLAIMS", "datasets, shared-data")
    monkeypatch.setenv("FERMI_DATA_DIR", str(tmp_path / "fermi-data"))
    policy = DatasetPolicy.from_env()
    assert policy.roots == (str(tmp_path), "/srv/data")
    assert policy.claims == {"datasets", "shared-data"}
    assert policy.data_dir == str(tmp_path / "fermi-data")
