"""Datasets (数据集): named, versioned locations of data, shared with groups, attached to jobs.

A dataset is a name, a description, the groups it is shared with, and versions; each version is a
location:

- an absolute path on the machine (``/srv/data/wine``) — the embedded default;
- a volume, ``pvc://CLAIM/SUBPATH`` — a PersistentVolumeClaim on Kubernetes;
- S3-compatible storage, ``s3://BUCKET/PREFIX``.

A job that names ``datasets: ["wine", "images:2"]`` finds each one at ``datasets/NAME`` in its
working folder (a link on the embedded default, a volume mount on Kubernetes) and its location in
``$FERMI_DATASET_NAME`` (upper case, '-' as '_'). Reading and attaching follow ownership: the
owner, admins and the groups it is shared with; only the owner and admins change it.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .caller import Caller, audit
from .db import Dataset, DatasetVersion
from .errors import Conflict, InvalidInput, NotFound, Unprocessable
from .spec import DatasetMount

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


def location_kind(location: str) -> str:
    if location.startswith("s3://") and len(location) > 5:
        return "s3"
    if location.startswith("pvc://") and re.fullmatch(r"pvc://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(/.*)?", location):
        return "volume"
    if location.startswith("/") and ".." not in Path(location).parts:
        return "path"
    raise ValueError(
        f"location {location!r} is not one Fermi reads: give an absolute path on the machine "
        "(/srv/data/wine), a volume (pvc://CLAIM/SUBPATH) or S3-compatible storage (s3://BUCKET/PREFIX)"
    )


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="default: the next number (1, 2, …)")
    location: str = Field(description="/abs/path, pvc://CLAIM/SUBPATH or s3://BUCKET/PREFIX")

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        location_kind(value)
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(VERSION, value):
            raise ValueError(f"version {value!r}: use 1–32 letters, digits, '.', '_' or '-'")
        return value


class CreateDataset(NewVersion):
    name: str = Field(description="lowercase letters, digits and '-', at most 63 characters")
    description: str = Field("", max_length=2000)
    groups: list[str] = Field(default_factory=list, description="hub groups that may use it")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME, value):
            raise ValueError(f"dataset name {value!r}: use lowercase letters, digits and '-' "
                             "(1–63 characters, starting and ending with a letter or digit)")
        return value


class PatchDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=2000)
    groups: list[str] | None = None


class VersionOut(BaseModel):
    version: str
    location: str
    kind: str
    created_at: dt.datetime
    created_by: str


class DescribeDataset(BaseModel):
    name: str
    owner: str
    description: str
    groups: list[str]
    versions: list[VersionOut]
    mount_path: str = Field(description="where a job or dev environment finds it")
    env: str = Field(description="the environment variable holding its location")
    created_at: dt.datetime


class DatasetList(BaseModel):
    datasets: list[DescribeDataset]


def env_name(name: str) -> str:
    return "FERMI_DATASET_" + name.upper().replace("-", "_")


def describe(row: Dataset, versions: list[DatasetVersion]) -> DescribeDataset:
    return DescribeDataset(
        name=row.name, owner=row.owner, description=row.description, groups=row.groups or [],
        versions=[VersionOut(version=v.version, location=v.location, kind=v.kind,
                             created_at=v.created_at, created_by=v.created_by) for v in versions],
        mount_path=f"datasets/{row.name}", env=env_name(row.name), created_at=row.created_at)


class DatasetService:
    def __init__(self, session_factory: sessionmaker, local_paths_must_exist: bool = True):
        self.session_factory = session_factory
        self.local_paths_must_exist = local_paths_must_exist

    def _check_location(self, location: str) -> str:
        kind = location_kind(location)
        if kind == "path" and self.local_paths_must_exist and not Path(location).exists():
            raise Unprocessable(f"Nothing at {location!r} on this machine: give an existing "
                                "folder or file (or a pvc:// or s3:// location).")
        return kind

    @staticmethod
    def _can_read(row: Dataset, caller: Caller) -> bool:
        return caller.admin or row.owner == caller.name or bool(set(row.groups or ()) & set(caller.groups))

    def _readable(self, session: Session, caller: Caller, name: str) -> Dataset:
        row = session.get(Dataset, name)
        if row is None or not self._can_read(row, caller):
            raise NotFound(f"No dataset {name!r} (or it is not shared with you).")
        return row

    def _writable(self, session: Session, caller: Caller, name: str) -> Dataset:
        row = self._readable(session, caller, name)
        if row.owner != caller.name and not caller.admin:
            raise NotFound(f"Dataset {name!r} is {row.owner}'s: only its owner or an admin "
                           "changes it.")
        return row

    @staticmethod
    def _versions(session: Session, name: str) -> list[DatasetVersion]:
        return list(session.scalars(select(DatasetVersion).where(DatasetVersion.dataset == name)
                                    .order_by(DatasetVersion.created_at, DatasetVersion.version)))

    def create(self, caller: Caller, request: CreateDataset) -> DescribeDataset:
        kind = self._check_location(request.location)
        with self.session_factory() as session:
            if session.get(Dataset, request.name) is not None:
                raise Conflict(f"A dataset named {request.name!r} exists; choose another name or "
                               "add a version to it.")
            row = Dataset(name=request.name, owner=caller.name, description=request.description,
                          groups=sorted(set(request.groups)))
            session.add(row)
            session.flush()
            session.add(DatasetVersion(dataset=row.name, version=request.version or "1",
                                       location=request.location, kind=kind, created_by=caller.name))
            audit(session, caller, "create", "dataset", row.name, after=request.model_dump())
            session.commit()
            return describe(row, self._versions(session, row.name))

    def add_version(self, caller: Caller, name: str, request: NewVersion) -> DescribeDataset:
        kind = self._check_location(request.location)
        with self.session_factory() as session:
            row = self._writable(session, caller, name)
            versions = self._versions(session, name)
            version = request.version or str(1 + max(
                (int(v.version) for v in versions if v.version.isdigit()), default=0))
            if any(v.version == version for v in versions):
                raise Conflict(f"Dataset {name!r} already has a version {version!r}.")
            session.add(DatasetVersion(dataset=name, version=version, location=request.location,
                                       kind=kind, created_by=caller.name))
            audit(session, caller, "add-version", "dataset", name,
                  after={"version": version, "location": request.location})
            session.commit()
            return describe(row, self._versions(session, name))

    def list(self, caller: Caller) -> DatasetList:
        with self.session_factory() as session:
            rows = [r for r in session.scalars(select(Dataset).order_by(Dataset.name))
                    if self._can_read(r, caller)]
            return DatasetList(datasets=[describe(r, self._versions(session, r.name)) for r in rows])

    def get(self, caller: Caller, name: str) -> DescribeDataset:
        with self.session_factory() as session:
            return describe(self._readable(session, caller, name), self._versions(session, name))

    def patch(self, caller: Caller, name: str, request: PatchDataset) -> DescribeDataset:
        with self.session_factory() as session:
            row = self._writable(session, caller, name)
            before = {"description": row.description, "groups": row.groups}
            if request.description is not None:
                row.description = request.description
            if request.groups is not None:
                row.groups = sorted(set(request.groups))
            audit(session, caller, "update", "dataset", name, before=before,
                  after={"description": row.description, "groups": row.groups})
            session.commit()
            return describe(row, self._versions(session, name))

    def delete(self, caller: Caller, name: str) -> None:
        """Forget the dataset (its data stays where it is)."""
        with self.session_factory() as session:
            row = self._writable(session, caller, name)
            session.execute(delete(DatasetVersion).where(DatasetVersion.dataset == name))
            audit(session, caller, "delete", "dataset", name,
                  before={"owner": row.owner, "groups": row.groups})
            session.delete(row)
            session.commit()

    def resolve(self, caller: Caller, refs: list[str]) -> list[DatasetMount]:
        """``["wine", "images:2"]`` → what to mount (latest version unless one is named)."""
        mounts, seen = [], set()
        with self.session_factory() as session:
            for ref in refs:
                name, _, version = str(ref).partition(":")
                if name in seen:
                    raise InvalidInput(f"Dataset {name!r} is named twice; attach it once.")
                seen.add(name)
                self._readable(session, caller, name)
                versions = self._versions(session, name)
                chosen = next((v for v in versions if v.version == version), None) if version \
                    else (versions[-1] if versions else None)
                if chosen is None:
                    raise NotFound(f"Dataset {name!r} has no version {version!r}; it has "
                                   f"{', '.join(v.version for v in versions)}.")
                mounts.append(DatasetMount(name=name, version=chosen.version,
                                           location=chosen.location, kind=chosen.kind,
                                           env=env_name(name)))
        return mounts


def link_datasets(folder: Path, datasets: list[DatasetMount]) -> dict[str, str]:
    """Each dataset at ``datasets/NAME`` in ``folder`` (a link to its path); returns the
    environment naming where each one is (an s3:// location is only named)."""
    env = {}
    for mount in datasets:
        if mount.kind == "path":
            link = folder / "datasets" / mount.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(mount.location)
            env[mount.env] = str(link)
        else:
            env[mount.env] = mount.location
    return env
