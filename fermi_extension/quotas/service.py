"""Quotas per user and per group: concurrent GPUs, running jobs, deployments, monthly spend.

A user's quota limits what that user holds; a group's quota limits what all its members hold
together. Every limit that applies must hold (the strictest wins). They are enforced where work
starts:

- submitting a job: refused (403) once the monthly spend is reached; a queued job whose start
  would pass the running-jobs or GPU limit waits in the queue with the reason shown;
- deploying: refused (403) past the deployments, GPU or spend limit;
- spawning a dev environment (the hub's spawner, same database): refused past the GPU or spend
  limit.

Group membership comes from the hub with each request; it is remembered (``GroupMember``) so that
the queue, which runs with no request, can count a group's holdings too.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ..caller import Caller, audit
from ..db import Deployment, GpuAssignment, GroupMember, Job, Quota, Replica, UsageRecord, utcnow
from ..errors import Forbidden, InvalidInput, NotFound

FIELDS = ("gpus", "running_jobs", "deployments", "monthly_spend")
WHAT = {"gpus": "GPUs in use", "running_jobs": "running jobs", "deployments": "deployments",
        "monthly_spend": "spend this month"}


class QuotaLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpus: int | None = Field(None, ge=0, le=10_000, description="GPUs held at once (jobs, dev "
                             "environments and replicas together); null: no limit")
    running_jobs: int | None = Field(None, ge=0, le=10_000)
    deployments: int | None = Field(None, ge=0, le=10_000)
    monthly_spend: float | None = Field(None, ge=0, description="cost units per calendar month (UTC)")


class DescribeQuota(QuotaLimits):
    model_config = ConfigDict(extra="ignore")

    scope: str = Field(description="user | group")
    subject: str
    updated_at: dt.datetime
    updated_by: str


class QuotaList(BaseModel):
    quotas: list[DescribeQuota]


class Holdings(BaseModel):
    gpus: int = 0
    running_jobs: int = 0
    deployments: int = 0
    monthly_spend: float = 0.0


class EffectiveLimit(BaseModel):
    field: str
    limit: float
    use: float
    source: str = Field(description="which quota sets it: user:NAME or group:NAME")


class MyQuota(BaseModel):
    user: str
    use: Holdings
    limits: list[EffectiveLimit]


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def check_scope(scope: str) -> str:
    if scope not in ("user", "group"):
        raise InvalidInput(f"Quota scope {scope!r} is unknown: use `user` or `group`.")
    return scope


class QuotaService:
    def __init__(self, session_factory: sessionmaker):
        self.session_factory = session_factory

    # -- admin --------------------------------------------------------------------------------

    def list(self, caller: Caller) -> QuotaList:
        with self.session_factory() as session:
            query = select(Quota).order_by(Quota.scope, Quota.subject)
            if not caller.admin:  # users see the quotas that apply to them
                query = query.where(
                    ((Quota.scope == "user") & (Quota.subject == caller.name))
                    | ((Quota.scope == "group") & Quota.subject.in_(caller.groups or ("",))))
            return QuotaList(quotas=[describe(q) for q in session.scalars(query)])

    def put(self, caller: Caller, scope: str, subject: str, limits: QuotaLimits) -> DescribeQuota:
        if not caller.admin:
            raise Forbidden("Only admins set quotas; ask a JupyterHub admin.")
        check_scope(scope)
        if not subject or len(subject) > 255:
            raise InvalidInput("Name the user or group the quota is for (1–255 characters).")
        with self.session_factory() as session:
            row = session.get(Quota, (scope, subject))
            before = None if row is None else limits_of(row)
            if row is None:
                row = Quota(scope=scope, subject=subject)
                session.add(row)
            for name in FIELDS:
                setattr(row, name, getattr(limits, name))
            row.updated_at, row.updated_by = utcnow(), caller.name
            audit(session, caller, "set-quota", f"quota-{scope}", subject,
                  before=before, after=limits.model_dump())
            session.commit()
            return describe(row)

    def delete(self, caller: Caller, scope: str, subject: str) -> None:
        if not caller.admin:
            raise Forbidden("Only admins remove quotas; ask a JupyterHub admin.")
        check_scope(scope)
        with self.session_factory() as session:
            row = session.get(Quota, (scope, subject))
            if row is None:
                raise NotFound(f"No quota for {scope} {subject!r}.")
            audit(session, caller, "delete-quota", f"quota-{scope}", subject, before=limits_of(row))
            session.delete(row)
            session.commit()

    # -- what is held, and what may start ----------------------------------------------------

    def mine(self, caller: Caller) -> MyQuota:
        with self.session_factory() as session:
            use = holdings(session, [caller.name])
            limits = []
            for quota in applicable(session, caller.name, caller.groups):
                held = use if quota.scope == "user" else holdings(
                    session, members(session, quota.subject, caller))
                for name in FIELDS:
                    if getattr(quota, name) is not None:
                        limits.append(EffectiveLimit(
                            field=name, limit=getattr(quota, name), use=getattr(held, name),
                            source=f"{quota.scope}:{quota.subject}"))
            return MyQuota(user=caller.name, use=use, limits=limits)

    def refusal(self, session: Session, user: str, groups: tuple[str, ...] | None = None, *,
                gpus: int = 0, running_jobs: int = 0, deployments: int = 0) -> str | None:
        """Why adding this much for ``user`` would pass a quota (None: it fits). ``groups``:
        the user's groups as the hub says now (None: as last remembered)."""
        caller = Caller(user, groups=tuple(groups or ()))
        if groups is None:
            caller = Caller(user, groups=tuple(session.scalars(
                select(GroupMember.group).where(GroupMember.user == user))))
        adding = {"gpus": gpus, "running_jobs": running_jobs, "deployments": deployments,
                  "monthly_spend": 0}
        for quota in applicable(session, user, caller.groups):
            users = [user] if quota.scope == "user" else members(session, quota.subject, caller)
            held = holdings(session, users)
            for name in FIELDS:
                limit = getattr(quota, name)
                if limit is None:
                    continue
                now = getattr(held, name)
                over = now >= limit if name == "monthly_spend" else (
                    adding[name] and now + adding[name] > limit)
                if over:
                    whose = ("Your quota" if quota.scope == "user"
                             else f"The quota of group {quota.subject!r} (its members together)")
                    return (f"{whose} of {limit:g} {WHAT[name]} is reached ({now:g} in use"
                            + (f", {adding[name]:g} more asked" if adding[name] else "")
                            + "): free some, or ask an admin to raise the quota.")
        return None

    def admit(self, caller: Caller, **asked: int) -> None:
        """Raise ``Forbidden`` with the reason if the request would pass a quota; remember the
        caller's groups for the queue."""
        with self.session_factory() as session:
            if remember_groups(session, caller):
                session.commit()
            reason = self.refusal(session, caller.name, caller.groups, **asked)
        if reason:
            raise Forbidden(reason)


def limits_of(row: Quota) -> dict:
    return {name: getattr(row, name) for name in FIELDS}


def describe(row: Quota) -> DescribeQuota:
    return DescribeQuota(scope=row.scope, subject=row.subject, updated_at=row.updated_at,
                         updated_by=row.updated_by, **limits_of(row))


def applicable(session: Session, user: str, groups: tuple[str, ...]) -> list[Quota]:
    return list(session.scalars(select(Quota).where(
        ((Quota.scope == "user") & (Quota.subject == user))
        | ((Quota.scope == "group") & Quota.subject.in_(groups or ("",))))))


def members(session: Session, group: str, caller: Caller) -> list[str]:
    known = set(session.scalars(select(GroupMember.user).where(GroupMember.group == group)))
    return sorted(known | {caller.name})


def remember_groups(session: Session, caller: Caller) -> bool:
    """Keep the user's groups as the hub says now; True when they changed (then commit: this
    runs on every submission, which mostly writes nothing)."""
    known = set(session.scalars(select(GroupMember.group).where(GroupMember.user == caller.name)))
    if known == set(caller.groups):
        return False
    session.execute(delete(GroupMember).where(GroupMember.user == caller.name))
    for group in set(caller.groups):
        session.add(GroupMember(user=caller.name, group=group))
    return True


def holdings(session: Session, users: list[str]) -> Holdings:
    """What ``users`` hold now: running jobs, GPUs (jobs, dev servers, replicas), deployments,
    and this month's spend."""
    running = session.execute(
        select(Job.runtime).where(Job.status == "running", Job.owner.in_(users))).scalars().all()
    gpus = sum(int((runtime or {}).get("gpu", 0)) * int((runtime or {}).get("nodes", 1))
               for runtime in running)
    for holder in session.scalars(select(GpuAssignment.holder).where(
            GpuAssignment.holder.like("server:%"))):
        if holder.split(":", 1)[1].split("/", 1)[0] in users:
            gpus += 1
    for runtime, count in session.execute(
            select(Deployment.runtime, func.count(Replica.id))
            .join(Replica, Replica.deployment == Deployment.name)
            .where(Deployment.owner.in_(users)).group_by(Deployment.name)):
        gpus += int((runtime or {}).get("gpu", 0)) * count
    deployments = session.scalar(
        select(func.count()).select_from(Deployment).where(Deployment.owner.in_(users)))
    spend = session.scalar(select(func.coalesce(func.sum(UsageRecord.cost), 0.0)).where(
        UsageRecord.user.in_(users), UsageRecord.ended_at >= month_start(utcnow())))
    return Holdings(gpus=gpus, running_jobs=len(running), deployments=deployments or 0,
                    monthly_spend=round(float(spend or 0), 6))
