"""Usage per user, kind and month (runtime × the profile's price), totals per user, group and
month, the cost preview, and the audit log.

A record that spans a month boundary (a dev server running over midnight on the 31st) is split
between the months in proportion to its time in each, so that a month's bill holds exactly the
time used in that month; the parts add up to the record's cost.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..caller import Caller, visible
from ..catalog.access import offered_profiles
from ..catalog.schema import Catalog
from ..db import AuditEvent, UsageRecord
from ..errors import InvalidInput, NotFound

KINDS = ("job", "replica", "server")
TOTALS_BY = ("user", "group", "month", "profile", "kind")
NO_GROUP = "(no group)"
MAX_PREVIEW_HOURS = 24 * 366
MAX_PREVIEW_REPLICAS = 1000


def cents(amount: float) -> float:
    """An amount of money rounded to the cent, half up (what a bill shows)."""
    return float(Decimal(repr(amount)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def month_start(when: dt.datetime) -> dt.datetime:
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(when: dt.datetime) -> dt.datetime:
    start = month_start(when)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
        month=start.month + 1)


def usage_record(user: str, kind: str, ref: str, runtime: dict, started: dt.datetime,
                 ended: dt.datetime) -> UsageRecord:
    """The billing row of one run that ended: a job attempt, a replica, a dev server (``kind``
    in ``KINDS``). ``runtime`` is what the run ran on, as its ``RuntimeSpec`` JSON (``profile``,
    ``gpu``, ``price_per_hour``): the price it started at, not today's catalogue price."""
    if kind not in KINDS:
        raise ValueError(f"usage kind {kind!r} is not one of {', '.join(KINDS)}")
    # a clock stepped back between start and end must not make a negative bill
    seconds = max((ended - started).total_seconds(), 0.0)
    price = float(runtime.get("price_per_hour") or 0.0)
    return UsageRecord(user=user, kind=kind, ref=ref, profile=runtime["profile"],
                       gpus=int(runtime.get("gpu") or 0), started_at=started, ended_at=ended,
                       seconds=seconds, price_per_hour=price, cost=seconds / 3600 * price)


def month_slices(start: dt.datetime, end: dt.datetime) -> list[tuple[str, float]]:
    """The months an interval falls in, each with its share of the interval (shares add to 1)."""
    total = (end - start).total_seconds()
    if total <= 0:
        return [(start.strftime("%Y-%m"), 1.0)]
    out = []
    cursor = start
    while cursor < end:
        boundary = min(next_month(cursor), end)
        out.append((cursor.strftime("%Y-%m"), (boundary - cursor).total_seconds() / total))
        cursor = boundary
    return out


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


class UsagePart:
    """One record's share of one month."""

    __slots__ = ("user", "kind", "month", "profile", "gpus", "seconds", "cost")

    def __init__(self, user, kind, month, profile, gpus, seconds, cost):
        self.user, self.kind, self.month, self.profile = user, kind, month, profile
        self.gpus, self.seconds, self.cost = gpus, seconds, cost


class TotalRow(BaseModel):
    key: str = Field(description="the user, group, month, profile or kind")
    month: str = Field(description="YYYY-MM")
    users: int = Field(description="users whose usage is in the row")
    seconds: float
    gpu_seconds: float
    cost: float
    cost_rounded: float = Field(0.0, description="cost to the cent, as billed")


class TotalsReport(BaseModel):
    by: str
    month: str | None
    rows: list[TotalRow]
    total_cost: float = Field(description="everything in the report, each record counted once")
    total_cost_rounded: float


class CostPreview(BaseModel):
    profile: str
    name: str
    pool: str
    gpus: int
    price_per_hour: float
    hours: float
    replicas: int
    gpu_hours: float
    cost: float = Field(description="price_per_hour × hours × replicas, to the cent")
    formula: str


def _positive_number(value: str | None, name: str, default: float, maximum: float,
                     integer: bool = False) -> float:
    if value is None or value == "":
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise InvalidInput(f"`{name}` must be {kind}, not {value!r}.") from None
    if not math.isfinite(number) or number <= 0 or number > maximum:
        raise InvalidInput(f"`{name}` must be more than 0 and at most {maximum:g}, not {value!r}.")
    return number


def preview(catalog: Catalog, caller: Caller, profile: str | None, hours: str | None,
            replicas: str | None) -> CostPreview:
    """What a dev environment, job or deployment on ``profile`` costs for ``hours`` with
    ``replicas`` copies: before spawning, submitting or deploying."""
    offered = offered_profiles(catalog, caller)
    if not profile:
        raise InvalidInput("Give the profile to price: ?profile=SLUG (one of "
                           f"{', '.join(p.slug for p in offered)}).")
    chosen = next((p for p in offered if p.slug == profile), None)
    if chosen is None:
        raise NotFound(f"No profile {profile!r} is offered to you; choose one of "
                       f"{', '.join(p.slug for p in offered)}.")
    h = _positive_number(hours, "hours", 1.0, MAX_PREVIEW_HOURS)
    n = int(_positive_number(replicas, "replicas", 1, MAX_PREVIEW_REPLICAS, integer=True))
    exact = Decimal(repr(chosen.price_per_hour)) * Decimal(repr(h)) * n
    cost = float(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return CostPreview(
        profile=chosen.slug, name=chosen.name, pool=chosen.pool, gpus=chosen.gpu,
        price_per_hour=chosen.price_per_hour, hours=h, replicas=n, gpu_hours=chosen.gpu * h * n,
        cost=cost,
        formula=f"{chosen.price_per_hour:g}/h × {h:g} h × {n} replica{'s' if n != 1 else ''} "
                f"= {cost:.2f}")


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
        query = visible(select(UsageRecord), UsageRecord.user, caller, user)
        if kind:
            query = query.where(UsageRecord.kind == kind)
        rows: dict[tuple, UsageRow] = {}
        for part in self.parts(query, month):
            key = (part.user, part.kind, part.month, part.profile)
            row = rows.setdefault(key, UsageRow(user=part.user, kind=part.kind, month=part.month,
                                                profile=part.profile, seconds=0, gpu_seconds=0,
                                                cost=0))
            row.seconds += part.seconds
            row.gpu_seconds += part.seconds * part.gpus
            row.cost += part.cost
        ordered = sorted(rows.values(), key=lambda r: (r.month, r.user, r.kind, r.profile))
        return UsageReport(rows=ordered, total_cost=math.fsum(r.cost for r in ordered),
                           total_seconds=math.fsum(r.seconds for r in ordered))

    def parts(self, query, month: str | None = None) -> list["UsagePart"]:
        """The records of ``query``, each split by month (only ``month``'s part when given)."""
        out = []
        with self.session_factory() as session:
            for record in session.scalars(query):
                for record_month, share in month_slices(record.started_at, record.ended_at):
                    if month and record_month != month:
                        continue
                    out.append(UsagePart(record.user, record.kind, record_month, record.profile,
                                         record.gpus, record.seconds * share, record.cost * share))
        return out

    def totals(self, caller: Caller, *, by: str = "user", month: str | None = None,
               groups: dict[str, list[str]] | None = None) -> "TotalsReport":
        """Usage summed per user, group, month, profile or kind. ``groups`` maps users to their
        groups (from the hub); a user in two groups counts in both, so group totals can add up
        to more than the whole (``total_cost`` is the whole, counted once)."""
        if by not in TOTALS_BY:
            raise InvalidInput(f"`by` must be one of {', '.join(TOTALS_BY)}, not {by!r}.")
        month = _month(month, "month")
        query = visible(select(UsageRecord), UsageRecord.user, caller)
        groups = dict(groups or {})
        if not caller.admin or caller.name not in groups:
            groups[caller.name] = list(caller.groups)
        rows: dict[tuple[str, str], TotalRow] = {}
        users: dict[tuple[str, str], set] = {}
        parts = self.parts(query, month)
        for part in parts:
            keys = {"user": [part.user], "month": [part.month], "profile": [part.profile],
                    "kind": [part.kind],
                    "group": groups.get(part.user) or [NO_GROUP]}[by]
            for key in keys:
                row = rows.setdefault((key, part.month), TotalRow(
                    key=key, month=part.month, users=0, seconds=0, gpu_seconds=0, cost=0))
                row.seconds += part.seconds
                row.gpu_seconds += part.seconds * part.gpus
                row.cost += part.cost
                users.setdefault((key, part.month), set()).add(part.user)
        for key, row in rows.items():
            row.users = len(users[key])
            row.cost_rounded = cents(row.cost)
        ordered = sorted(rows.values(), key=lambda r: (r.month, r.key))
        total = math.fsum(p.cost for p in parts)
        return TotalsReport(by=by, month=month, rows=ordered, total_cost=total,
                            total_cost_rounded=cents(total))

    def audit(self, caller: Caller, *, actor: str | None = None, target_kind: str | None = None,
              action: str | None = None, before_id: int | None = None,
              limit: int = 100) -> AuditPage:
        if not 1 <= limit <= 1000:
            raise InvalidInput("`limit` must be between 1 and 1000.")
        # a user sees the record of their own actions
        query = visible(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit),
                        AuditEvent.actor, caller, actor)
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


# a spreadsheet runs a cell that begins with one of these as a formula (OWASP, CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A value as a spreadsheet shows it and never runs it: text that a spreadsheet would read as
    a formula (a user named ``=1+2``) gets a leading apostrophe; objects are written as JSON."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(rows: list[BaseModel]) -> str:
    """Every CSV the platform writes (usage, totals, waste, audit) is written here."""
    out = io.StringIO()
    if rows:
        fields = list(type(rows[0]).model_fields)
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(v) for k, v in row.model_dump(mode="json").items()})
    return out.getvalue()
