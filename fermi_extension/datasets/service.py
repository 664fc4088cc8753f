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

Where a location may be is the admin's (``DatasetPolicy``, the one rule for registering,
attaching and mounting): paths only inside the folders allowed for datasets, volumes only on the
claims listed for them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from ..caller import Caller, audit
from ..db import Dataset, DatasetVersion
from ..errors import Conflict, InvalidInput, NotFound, Unprocessable
from ..spec import DatasetMount
from .mounts import link_datasets  # noqa: F401  (where callers have always found it)

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
CLAIM = r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?"  # a PersistentVolumeClaim's name (DNS subdomain)
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


def location_kind(location: str) -> str:
    if location.startswith("s3://") and len(location) > 5:
        return "s3"
    if location.startswith("pvc://") and re.fullmatch(rf"pvc://{CLAIM}(/.*)?", location) \
            and ".." not in location.split("/"):  # a subPath climbing out of the claim's folder
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
    location: str = Field(description="/abs/path inside a folder the admin allows for datasets, "
                                      "pvc://CLAIM/SUBPATH on a claim the admin lists, or "
                                      "s3://BUCKET/PREFIX")

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


ROOTS_SETTING = "FermiService.dataset_roots ($FERMI_DATASET_ROOTS)"
CLAIMS_SETTING = "FermiService.dataset_claims ($FERMI_DATASET_CLAIMS)"


def dataset_roots_from_env() -> list[str]:
    """$FERMI_DATASET_ROOTS: folders separated by os.pathsep (':'), as in $PATH."""
    return [p for p in os.environ.get("FERMI_DATASET_ROOTS", "").split(os.pathsep) if p.strip()]


def dataset_claims_from_env() -> list[str]:
    """$FERMI_DATASET_CLAIMS: claim names separated by ','."""
    return [c.strip() for c in os.environ.get("FERMI_DATASET_CLAIMS", "").split(",") if c.strip()]


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


class DatasetPolicy:
    """Where dataset versions may be: the one rule for registering a location, attaching it to
    a job or dev server (the admin's lists may have changed since), and mounting it.

    - A path on this machine only inside a folder of ``roots``, judged by its real path (links
      followed: a link inside a root pointing elsewhere is elsewhere), and never inside
      ``data_dir``, the platform's own state (database, job folders, secrets), even where a
      root holds it. A path outside gets one answer, whether or not anything is there, so that
      registering cannot be used to probe the machine; inside, a missing one says so.
    - A volume only on a claim of ``claims``: a claim is any volume of the namespace (a user's
      home, the jobs volume with every user's jobs), so only those the admin set aside for data.
    - S3-compatible storage: any bucket; reading it takes the job's own credentials.
    """

    def __init__(self, roots: Iterable[str] = (), claims: Iterable[str] = (),
                 data_dir: str | None = None):
        self.roots = tuple(str(r) for r in roots)
        for root in self.roots:
            if not os.path.isabs(root):
                raise ValueError(f"{ROOTS_SETTING}: {root!r} is not an absolute path; give "
                                 "folders such as /srv/datasets.")
        self.claims = frozenset(claims)
        for claim in self.claims:
            if not re.fullmatch(CLAIM, claim):
                raise ValueError(f"{CLAIMS_SETTING}: {claim!r} is not a claim name; give "
                                 "PersistentVolumeClaim names such as datasets.")
        self.data_dir = str(data_dir) if data_dir else None

    @classmethod
    def from_env(cls) -> "DatasetPolicy":
        """The policy a process without its own settings follows: the same variables as the
        control plane's defaults, and its data dir ($FERMI_DATA_DIR)."""
        return cls(dataset_roots_from_env(), dataset_claims_from_env(),
                   os.environ.get("FERMI_DATA_DIR") or None)

    def check(self, location: str) -> str:
        """The location's kind ("path", "volume", "s3"), or Unprocessable saying what is
        allowed."""
        return self.place(location)[0]

    def place(self, location: str) -> tuple[str, str]:
        """``(kind, where to attach it from)``: for a path, its real path, the one judged, so a
        link re-pointed after the check changes nothing."""
        try:
            kind = location_kind(location)
        except ValueError as error:
            raise Unprocessable(f"{str(error)[0].upper()}{str(error)[1:]}.") from None
        if kind == "path":
            return kind, self._path(location)
        if kind == "volume":
            claim = location[len("pvc://"):].partition("/")[0]
            if not self.claims:
                raise Unprocessable(
                    "Datasets on volumes are not enabled: the admin lists no claims for them "
                    f"(the setting {CLAIMS_SETTING}). Give an s3:// location, or ask an admin "
                    "to list a claim for datasets.")
            if claim not in self.claims:
                raise Unprocessable(
                    f"Datasets may be only on the volumes the admin lists for them "
                    f"({', '.join(sorted(self.claims))}; the setting {CLAIMS_SETTING}), not on "
                    f"{claim!r}: put the data on one of those, or give an s3:// location.")
        return kind, location

    def _path(self, location: str) -> str:
        real = os.path.realpath(location)
        roots = [os.path.realpath(r) for r in self.roots]  # a root may be a link itself
        private = os.path.realpath(self.data_dir) if self.data_dir else None
        if not any(_within(real, root) for root in roots) or (private and _within(real, private)):
            # one sentence for every path outside, existing or not, naming only what is allowed
            if not roots:
                raise Unprocessable(
                    "Datasets on this machine are not enabled: the admin allows no folders for "
                    f"them (the setting {ROOTS_SETTING}). Give a pvc:// or s3:// location, or "
                    "ask an admin to allow a folder.")
            raise Unprocessable(
                "A dataset on this machine must be inside a folder the admin allows for "
                f"datasets ({', '.join(self.roots)}; the setting {ROOTS_SETTING}), outside the "
                "platform's own data folder, links followed: copy the data there, or give a "
                "pvc:// or s3:// location.")
        if not os.path.exists(real):
            raise Unprocessable(f"Nothing at {location!r} on this machine: give an existing "
                                "folder or file (or a pvc:// or s3:// location).")
        return real


class DatasetService:
    def __init__(self, session_factory: sessionmaker, policy: DatasetPolicy | None = None):
        self.session_factory = session_factory
        # no policy given: nothing on this machine, no volume (the admin enables them)
        self.policy = policy or DatasetPolicy()

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
        kind = self.policy.check(request.location)
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
        kind = self.policy.check(request.location)
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
                # checked again: the admin's folders and claims may have changed since it was
                # registered, and a link inside a folder may point elsewhere now
                try:
                    kind, location = self.policy.place(chosen.location)
                except Unprocessable as error:
                    raise Unprocessable(f"Dataset {name!r} version {chosen.version} cannot be "
                                        f"attached: {error.message}") from None
                mounts.append(DatasetMount(name=name, version=chosen.version, location=location,
                                           kind=kind, env=env_name(name)))
        return mounts
