"""Usage per user, kind and month (runtime × the profile's price), and the audit log."""

from __future__ import annotations

import csv
import datetime as dt
import io

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..caller import Caller
from ..db import AuditEvent, UsageRecord
from ..errors import InvalidInput

KINDS = ("job", "replica", "server")


class UsageRow(BaseModel):
    user: str
    kind: str = Field(description="job | replica | server (dev environment)")
    month: str = Field(description="YYYY-MM")
    profile: str
    seconds: float
    gpu_seconds: float
    cost: float


class UsageReport(BaseModel):
    rows: list[UsageRow]
    total_cost: float
    total_seconds: float


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target_kind: str
    target_id: str
    remote_addr: str | None
    before: dict | None
    after: dict | None


class AuditPage(BaseModel):
    events: list[AuditOut]
    next_before_id: int | None = Field(None, description="pass as before_id for the next page")


def _month(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        dt.datetime.strptime(value, "%Y-%m")
    except ValueError:
        raise InvalidInput(f"`{name}` must be a month as YYYY-MM, not {value!r}.") from None
    return value


class UsageService:
    def __init__(self, session_factory: sessionmaker):
        self.session_factory = session_factory

    def report(self, caller: Caller, *, user: str | None = None, month: str | None = None,
               kind: str | None = None) -> UsageReport:
        if kind is not None and kind not in KINDS:
            raise InvalidInput(f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
        month = _month(month, "month")
        query = select(UsageRecord)
        if not caller.admin:
            query = query.where(UsageRecord.user == caller.name)
        elif user:
            query = query.where(UsageRecord.user == user)
        if kind:
            query = query.where(UsageRecord.kind == kind)
        rows: dict[tuple, UsageRow] = {}
        with self.session_factory() as session:
            for record in session.scalars(query):
                record_month = record.started_at.strftime("%Y-%m")
                if month and record_month != month:
                    continue
                key = (record.user, record.kind, record_month, record.profile)
                row = rows.setdefault(key, UsageRow(user=record.user, kind=record.kind,
                                                    month=record_month, profile=record.profile,
                                                    seconds=0, gpu_seconds=0, cost=0))
                row.seconds += record.seconds
                row.gpu_seconds += record.seconds * record.gpus
                row.cost += record.cost
        ordered = sorted(rows.values(), key=lambda r: (r.month, r.user, r.kind, r.profile))
        return UsageReport(rows=ordered, total_cost=sum(r.cost for r in ordered),
                           total_seconds=sum(r.seconds for r in ordered))

    def audit(self, caller: Caller, *, actor: str | None = None, target_kind: str | None = None,
              action: str | None = None, before_id: int | None = None,
              limit: int = 100) -> AuditPage:
        if not 1 <= limit <= 1000:
            raise InvalidInput("`limit` must be between 1 and 1000.")
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if not caller.admin:  # a user sees the record of their own actions
            query = query.where(AuditEvent.actor == caller.name)
        elif actor:
            query = query.where(AuditEvent.actor == actor)
        if target_kind:
            query = query.where(AuditEvent.target_kind == target_kind)
        if action:
            query = query.where(AuditEvent.action == action)
        if before_id:
            query = query.where(AuditEvent.id < before_id)
        with self.session_factory() as session:
            events = [AuditOut.model_validate(e, from_attributes=True) for e in session.scalars(query)]
        return AuditPage(events=events,
                         next_before_id=events[-1].id if len(events) == limit else None)


def to_csv(rows: list[BaseModel]) -> str:
    out = io.StringIO()
    if rows:
        fields = list(type(rows[0]).model_fields)
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v for k, v in row.model_dump(mode="json").items()})
    return out.getvalue()
