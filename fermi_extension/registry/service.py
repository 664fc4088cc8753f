"""Models registered by training jobs, with their lineage, visible to owners, groups and admins."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db import GroupMember, Job, RegisteredModel
from ..errors import Forbidden, NotFound
from ..caller import Caller, audit
from ..tracking.tracker import Tracker
from .models import DescribeModel, JobLineage, ModelSummary, ModelVersionOut


def version_refusal(session: Session, name: str, owner: str) -> str | None:
    """The one rule for model names: a job of ``owner`` adds a version only to a model ``owner``
    owns or that is shared with one of their groups for writing; a name no one has claimed yet
    becomes ``owner``'s (flushed, so that of two jobs claiming it at once one fails on the
    primary key). Returns why not, or None. Called where versions are created (the tracking
    server's gate, ``tracking/gate.py``) and again when the job ends."""
    model = session.get(RegisteredModel, name)
    if model is None:
        session.add(RegisteredModel(name=name, owner=owner, groups=[], writer_groups=[]))
        session.flush()
        return None
    if model.owner == owner:
        return None
    groups = set(session.scalars(select(GroupMember.group).where(GroupMember.user == owner)))
    if groups & set(model.writer_groups or ()):
        return None
    return f"model name {name!r} belongs to another user; choose another name"


def _ms(timestamp: int | str | None) -> dt.datetime | None:
    if timestamp in (None, ""):
        return None
    return dt.datetime.fromtimestamp(int(timestamp) / 1000, dt.timezone.utc).replace(tzinfo=None)


def can_see(caller: Caller, model: RegisteredModel) -> bool:
    shared = set(model.groups) | set(model.writer_groups or ())
    return caller.admin or model.owner == caller.name or bool(shared & set(caller.groups))


class ModelRepository:
    def __init__(self, session_factory: sessionmaker, tracker: Tracker):
        self.session_factory = session_factory
        self.tracker = tracker

    def visible(self, caller: Caller, name: str) -> RegisteredModel:
        with self.session_factory() as session:
            model = session.get(RegisteredModel, name)
        if model is None or not can_see(caller, model):
            raise NotFound(f"No model {name!r} (or it is not shared with you).")
        return model

    async def list(self, caller: Caller) -> list[ModelSummary]:
        with self.session_factory() as session:
            models = [m for m in session.scalars(select(RegisteredModel).order_by(RegisteredModel.name))
                      if can_see(caller, m)]
        summaries = []
        for model in models:
            versions = await self.tracker.model_versions(model.name)
            latest = max(versions, key=lambda v: int(v["version"]), default=None)
            summaries.append(ModelSummary(
                name=model.name, owner=model.owner, groups=model.groups,
                writer_groups=model.writer_groups or [],
                latest_version=latest["version"] if latest else None,
                updated_at=_ms(latest.get("last_updated_timestamp")) if latest else model.created_at,
            ))
        return summaries

    async def get(self, caller: Caller, name: str) -> DescribeModel:
        model = self.visible(caller, name)
        versions = await self.tracker.model_versions(name)
        run_ids = [v.get("run_id") for v in versions if v.get("run_id")]
        with self.session_factory() as session:
            jobs = {j.tracking_run_id: j for j in session.scalars(
                select(Job).where(Job.tracking_run_id.in_(run_ids)))}
        out = []
        for version in sorted(versions, key=lambda v: int(v["version"]), reverse=True):
            job = jobs.get(version.get("run_id"))
            lineage = None
            if job is not None and (job.owner == caller.name or caller.admin or can_see(caller, model)):
                lineage = JobLineage(
                    id=job.id, name=job.name, owner=job.owner, notebook_name=job.notebook_name,
                    parameters=job.parameters or {}, metrics=job.metrics or {}, image=job.image,
                    profile=job.profile, finished_at=job.finished_at,
                    notebook_url=f"jobs/{job.id}/output",
                )
            out.append(ModelVersionOut(
                version=str(version["version"]), status=version.get("status", ""),
                created_at=_ms(version.get("creation_timestamp")), run_id=version.get("run_id"),
                job=lineage,
            ))
        return DescribeModel(
            name=model.name, owner=model.owner, groups=model.groups,
            writer_groups=model.writer_groups or [],
            latest_version=out[0].version if out else None,
            updated_at=out[0].created_at if out else model.created_at, versions=out,
        )

    async def version(self, caller: Caller, name: str, version: str) -> dict:
        """The registry's record of one version the caller may deploy."""
        self.visible(caller, name)
        for found in await self.tracker.model_versions(name):
            if str(found["version"]) == str(version):
                return found
        raise NotFound(f"Model {name!r} has no version {version!r}; GET models/{name} lists them.")

    def share(self, caller: Caller, name: str, groups: list[str],
              writer_groups: list[str] | None = None) -> None:
        model = self.visible(caller, name)
        if model.owner != caller.name and not caller.admin:
            raise Forbidden(f"Only {model.owner} (the owner) or an admin can share {name!r}.")
        with self.session_factory() as session:
            row = session.get(RegisteredModel, name)
            before = {"groups": list(row.groups), "writer_groups": list(row.writer_groups or [])}
            row.groups = sorted(set(groups))
            if writer_groups is not None:
                row.writer_groups = sorted(set(writer_groups))
            audit(session, caller, "share", "model", name, before=before,
                  after={"groups": row.groups, "writer_groups": list(row.writer_groups or [])})
            session.commit()
