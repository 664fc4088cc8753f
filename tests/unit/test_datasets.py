"""Datasets: locations checked, versions, sharing by group, and attaching follows access."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fermi_extension.caller import Caller
from fermi_extension.datasets import CreateDataset, DatasetService, NewVersion, PatchDataset
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
def datasets(sessions):
    return DatasetService(sessions)


def count(sessions, model):
    with sessions() as session:
        return session.query(model).count()


@pytest.mark.parametrize("location, says", [
    ("data/wine", "absolute path"), ("/srv/../etc", "absolute path"), ("ftp://x/y", "s3://"),
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
    assert first.location == str(tmp_path / "v1") and first.kind == "path"
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
