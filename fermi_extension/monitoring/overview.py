"""The dashboard's figures (仪表盘), computed once for the JSON API and the HTML page.

Everyone: quick-create entries for the three modules, their running dev environments, jobs,
inference services and models, GPU pool use, and this month's cost (billed records plus what
running work has cost so far this month). Admins also: capacity and allocation per pool, queues,
failing jobs and services, and who used which GPUs for what at what cost this month.
"""

from __future__ import annotations

import datetime as dt
import math
from urllib.parse import quote

from pydantic import BaseModel, Field
from sqlalchemy import select

from ..caller import Caller
from ..containers.engine import Isolation
from ..db import UsageRecord
from ..usage.service import UsageService, cents, month_start
from ..i18n import N_, translations
from .state import Snapshot

FAILING_DAYS = 7
RECENT_JOBS = 10


class QuickCreate(BaseModel):
    module: str = Field(description="dev-environment | training-job | inference-service")
    title: str
    title_zh: str
    description: str
    description_zh: str
    href: str
    link_text: str
    cli: str | None


class EnvironmentOut(BaseModel):
    user: str
    name: str
    profile: str | None
    gpus: int
    started: dt.datetime | None
    last_activity: dt.datetime | None
    url: str | None
    cost_so_far: float | None


class Environments(BaseModel):
    source: str = Field(description="hub (the hub's server models) | gpu-assignments")
    note: str | None
    items: list[EnvironmentOut]


class JobOut(BaseModel):
    id: str
    name: str
    owner: str
    status: str
    pool: str
    profile: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    reason: str | None


class Jobs(BaseModel):
    counts: dict[str, int]
    recent: list[JobOut]


class DeploymentOut(BaseModel):
    name: str
    owner: str
    status: str
    reason: str | None
    profile: str
    gpus: int
    ready_replicas: int
    replicas: int
    desired_replicas: int
    min_replicas: int
    max_replicas: int


class ModelOut(BaseModel):
    name: str
    latest_version: str | None
    deploy: str


class PoolOut(BaseModel):
    slug: str
    name: str
    gpus: int
    gpu_type: str | None
    gpus_allocated: int
    gpus_by_kind: dict[str, int]
    gpus_mine: int
    max_running_jobs: int
    running_jobs: int
    queued_jobs: int
    oldest_wait_seconds: float


class Cost(BaseModel):
    month: str
    billed: float = Field(description="finished work this month (usage records)")
    accruing: float = Field(description="running work, from its start (or the 1st) until now")
    total: float
    total_rounded: float
    by_kind: dict[str, float]


class UsageLine(BaseModel):
    user: str
    kind: str
    profile: str
    gpus: int
    seconds: float
    gpu_hours: float
    cost: float
    audit: str = Field(description="the user's audit log")


class IsolationOut(BaseModel):
    mode: str = Field(description="containers | accounts (processes under per-user Unix accounts, "
                      "as root without an engine) | processes (not isolated: a trusted single "
                      "user)")
    engine: str = Field(description="e.g. podman 4.3.1; empty without containers")
    reason: str = Field(description="why workloads run as processes, when they do")


class AdminView(BaseModel):
    isolation: IsolationOut
    pools: list[PoolOut]
    failing_jobs: list[JobOut]
    failing_deployments: list[DeploymentOut]
    usage: list[UsageLine]
    usage_total: float
    alerts_firing: int


class Dashboard(BaseModel):
    user: str
    admin: bool
    generated_at: dt.datetime
    quick_create: list[QuickCreate]
    templates: list[TemplateOut]
    environments: Environments
    jobs: Jobs
    deployments: list[DeploymentOut]
    models: list[ModelOut]
    models_note: str | None
    pools: list[PoolOut]
    cost: Cost
    admin_view: AdminView | None


class TemplateOut(BaseModel):
    name: str
    title: str
    title_zh: str
    href: str = Field(description="opens your lab with a new notebook from the template")


def templates() -> list[TemplateOut]:
    from ..templates import lab_link, template_catalogue

    return [TemplateOut(name=t["name"], title=(t.get("title") or {}).get("en", t["name"]),
                        title_zh=(t.get("title") or {}).get("zh", t["name"]),
                        href=lab_link(t["name"])) for t in template_catalogue()]


def quick_create(prefix: str) -> list[QuickCreate]:
    # English msgids of the one catalogue; the page shows them in the reader's language, the
    # API carries both (``*_zh`` from the same catalogue)
    zh = translations("zh_CN").gettext
    entries = [
        ("dev-environment", N_("Dev environment"),
         N_("Interactive JupyterLab, terminal and TensorBoard; billed by run time."),
         "/hub/spawn", N_("Start a server"), None),
        ("training-job", N_("Training job"),
         N_("Run a notebook as a batch job: queued, tracked, resources freed at the end. From "
            "the lab: Submit as training job."),
         "/hub/user-redirect/lab", N_("Open the lab"),
         "fermi jobs submit train.ipynb -p C 0.5 --profile cpu-small --wait"),
        ("inference-service", N_("Inference service"),
         N_("Deploy a registered model version as an autoscaled API."),
         f"{prefix}api/models", N_("Models"),
         "fermi deploy MODEL --version 1 --min 1 --max 3 --wait"),
    ]
    return [QuickCreate(module=module, title=title, title_zh=zh(title), description=text,
                        description_zh=zh(text), href=href, link_text=link, cli=cli)
            for module, title, text, href, link, cli in entries]


def job_out(j) -> JobOut:
    return JobOut(id=j.id, name=j.name, owner=j.owner, status=j.status, pool=j.pool,
                  profile=j.profile, created_at=j.created_at, finished_at=j.finished_at,
                  reason=j.reason)


def deployment_out(d) -> DeploymentOut:
    return DeploymentOut(name=d.name, owner=d.owner, status=d.status, reason=d.reason,
                         profile=d.profile, gpus=d.gpus, ready_replicas=d.ready,
                         replicas=len(d.replicas), desired_replicas=d.desired_replicas,
                         min_replicas=d.min_replicas, max_replicas=d.max_replicas)


def running_costs(s: Snapshot, since: dt.datetime) -> list[tuple[str, str, str, int, float, float]]:
    """What running work has cost from ``since`` (or its start) until now:
    (user, kind, profile, gpus, seconds, cost) per job, replica and dev server."""
    out = []

    def add(user, kind, profile, gpus, start, price):
        if start is None or price is None:
            return
        seconds = max((s.now - max(start, since)).total_seconds(), 0.0)
        out.append((user, kind, profile or "unknown", gpus, seconds, seconds / 3600 * price))

    for j in s.jobs:
        if j.status == "running":
            add(j.owner, "job", j.profile, j.gpus, j.started_at, j.price_per_hour)
    for d in s.deployments:
        for r in d.replicas:
            add(d.owner, "replica", d.profile, d.gpus, r.started_at, d.price_per_hour)
    for server in s.servers:
        add(server.user, "server", server.profile, server.gpus, server.started,
            server.price_per_hour)
    return out


def pools_out(s: Snapshot, caller: Caller) -> list[PoolOut]:
    out = []
    for pool in s.catalog.pools:
        held = s.gpus_allocated(pool.slug)
        queued = [j for j in s.jobs if j.pool == pool.slug and j.status == "queued"]
        out.append(PoolOut(
            slug=pool.slug, name=pool.name, gpus=pool.gpus, gpu_type=pool.gpu_type,
            gpus_allocated=sum(held.values()), gpus_by_kind=held,
            gpus_mine=sum(h.gpus for h in s.holders if h.pool == pool.slug and h.user == caller.name),
            max_running_jobs=pool.max_running_jobs,
            running_jobs=sum(1 for j in s.jobs if j.pool == pool.slug and j.status == "running"),
            queued_jobs=len(queued),
            oldest_wait_seconds=max(((s.now - j.created_at).total_seconds() for j in queued),
                                    default=0.0)))
    return out


def build(s: Snapshot, caller: Caller, usage: UsageService, prefix: str, *,
          models: list | None = None, models_note: str | None = None,
          alerts_firing: int = 0) -> Dashboard:
    mine = lambda user: user == caller.name  # noqa: E731
    month_begin = month_start(s.now)
    month = month_begin.strftime("%Y-%m")

    running = running_costs(s, month_begin)
    environments = []
    for server in s.servers:
        if not mine(server.user):
            continue
        so_far = None
        if server.started and server.price_per_hour is not None:
            so_far = (s.now - server.started).total_seconds() / 3600 * server.price_per_hour
        environments.append(EnvironmentOut(
            user=server.user, name=server.name, profile=server.profile, gpus=server.gpus,
            started=server.started, last_activity=server.last_activity, url=server.url,
            cost_so_far=so_far))

    my_jobs = [j for j in s.jobs if mine(j.owner)]
    counts = {status: 0 for status in ("queued", "running", "succeeded", "failed", "cancelled")}
    for j in my_jobs:
        counts[j.status] = counts.get(j.status, 0) + 1

    # this month's cost of the caller: billed records (split by month) + running work
    parts = usage.parts(select(UsageRecord).where(UsageRecord.user == caller.name)
                        .where(UsageRecord.ended_at >= month_begin), month)
    by_kind: dict[str, float] = {}
    for p in parts:
        by_kind[p.kind] = by_kind.get(p.kind, 0.0) + p.cost
    billed = math.fsum(p.cost for p in parts)
    accruing_items = [r for r in running if mine(r[0])]
    for user, kind, *_rest, cost in accruing_items:
        by_kind[kind] = by_kind.get(kind, 0.0) + cost
    accruing = math.fsum(r[5] for r in accruing_items)
    cost = Cost(month=month, billed=billed, accruing=accruing, total=billed + accruing,
                total_rounded=cents(billed + accruing), by_kind=by_kind)

    pools = pools_out(s, caller)
    admin_view = None
    if caller.admin:
        failing_since = s.now - dt.timedelta(days=FAILING_DAYS)
        failing_jobs = [job_out(j) for j in s.jobs
                        if j.status == "failed" and j.finished_at and j.finished_at >= failing_since]
        failing_deployments = [deployment_out(d) for d in s.deployments
                               if d.status == "failed" or (d.status == "pending" and d.reason)]
        lines: dict[tuple, UsageLine] = {}

        def line(user, kind, profile, gpus, seconds, amount):
            key = (user, kind, profile, gpus)
            entry = lines.setdefault(key, UsageLine(
                user=user, kind=kind, profile=profile, gpus=gpus, seconds=0, gpu_hours=0, cost=0,
                audit=f"{prefix}api/audit?actor={quote(user)}"))
            entry.seconds += seconds
            entry.gpu_hours += seconds / 3600 * gpus
            entry.cost += amount

        everyone = usage.parts(select(UsageRecord).where(UsageRecord.ended_at >= month_begin),
                               month)
        for p in everyone:
            line(p.user, p.kind, p.profile, p.gpus, p.seconds, p.cost)
        for user, kind, profile, gpus, seconds, amount in running:
            line(user, kind, profile, gpus, seconds, amount)
        usage_lines = sorted(lines.values(), key=lambda u: (-u.cost, u.user))
        isolation = Isolation.from_env()
        admin_view = AdminView(
            isolation=IsolationOut(mode=isolation.mode, engine=isolation.engine,
                                   reason=isolation.reason),
            pools=pools, failing_jobs=failing_jobs[:50], failing_deployments=failing_deployments,
            usage=usage_lines, usage_total=math.fsum(u.cost for u in usage_lines),
            alerts_firing=alerts_firing)

    return Dashboard(
        user=caller.name, admin=caller.admin, generated_at=s.now,
        quick_create=quick_create(prefix), templates=templates(),
        environments=Environments(source=s.servers_source, note=s.servers_note,
                                  items=environments),
        jobs=Jobs(counts=counts, recent=[job_out(j) for j in my_jobs[:RECENT_JOBS]]),
        deployments=[deployment_out(d) for d in s.deployments if mine(d.owner)],
        models=[ModelOut(name=m.name, latest_version=m.latest_version,
                         deploy=f"fermi deploy {m.name} --version {m.latest_version or 1} --wait")
                for m in (models or [])[:10]],
        models_note=models_note, pools=pools, cost=cost, admin_view=admin_view)
