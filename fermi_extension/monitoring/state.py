"""One read of the platform's state, shared by metrics, dashboard, cost analysis and alerts.

``Monitor.load(hub_view)`` is synchronous and takes the hub's answer as an argument, so tests
build a snapshot from a database they filled and a ``HubView`` they wrote. GPUs are counted per
pool from what holds them, for both backends: running job attempts (their runtime's ``gpu``),
live replicas (their deployment's), running dev servers (their profile's, from the hub), and on
the embedded default the GPU assignments of this machine that no running job explains.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from .. import db
from ..catalog.schema import Catalog, Pool, Profile
from ..db import Deployment, GpuAssignment, Job, Replica
from .hub_view import HubClient, HubView
from .traffic import TrafficHistory

log = logging.getLogger("fermi.monitoring")

# seconds between two background evaluations of the alert rules (Prometheus' evaluation_interval)
EVALUATION_INTERVAL = 60.0
# finished jobs listed one by one (the dashboard, failing jobs); older ones only count in totals
RECENT_DAYS = 40


@dataclass
class JobRow:
    id: str
    name: str
    owner: str
    status: str
    pool: str
    profile: str
    gpus: int
    price_per_hour: float
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    reason: str | None


@dataclass
class FinishedJob:
    pool: str
    status: str
    seconds: float
    finished_at: dt.datetime


@dataclass
class ReplicaRow:
    id: str
    state: str
    started_at: dt.datetime


@dataclass
class DeploymentRow:
    name: str
    owner: str
    status: str
    reason: str | None
    profile: str
    pool: str
    gpus: int
    price_per_hour: float
    min_replicas: int
    max_replicas: int
    desired_replicas: int
    target_concurrency: float
    replicas: list[ReplicaRow]

    @property
    def ready(self) -> int:
        return sum(1 for r in self.replicas if r.state == "ready")


@dataclass
class ServerRow:
    """A running dev environment."""

    user: str
    name: str
    profile: str | None
    pool: str | None
    gpus: int
    price_per_hour: float | None
    started: dt.datetime | None
    last_activity: dt.datetime | None
    url: str | None
    source: str  # "hub" | "gpu-assignment"
    devices: list[int] = field(default_factory=list)


@dataclass
class GpuHolder:
    holder: str  # job:ID | replica:ID | server:USER/NAME
    kind: str  # job | replica | server | orphan (an assignment no running job explains)
    user: str
    pool: str
    gpus: int
    since: dt.datetime | None
    # seconds since the holder last did something: 0 for running jobs and replicas; for dev
    # servers the hub's last_activity; None where nothing tells (see ``activity``)
    idle_seconds: float | None
    activity: str  # busy | hub (last_activity from the hub) | held (only the holding time is known)


@dataclass
class Snapshot:
    now: dt.datetime
    catalog: Catalog
    jobs: list[JobRow]
    finished: list[FinishedJob]
    deployments: list[DeploymentRow]
    servers: list[ServerRow]
    servers_source: str  # hub | gpu-assignments
    servers_note: str | None
    holders: list[GpuHolder]
    traffic: dict
    history: TrafficHistory
    groups: dict[str, list[str]]
    hub: HubView

    @property
    def pools(self) -> dict[str, Pool]:
        return {p.slug: p for p in self.catalog.pools}

    @property
    def profiles(self) -> dict[str, Profile]:
        return {p.slug: p for p in self.catalog.profiles}

    def gpus_allocated(self, pool: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.holders:
            if h.pool == pool:
                out[h.kind] = out.get(h.kind, 0) + h.gpus
        return out


def parse_holder(holder: str) -> tuple[str, str, str]:
    """``server:ann/dev`` → (server, ann, dev); ``job:abc`` → (job, abc, "")."""
    kind, _, rest = holder.partition(":")
    if kind == "server":
        user, _, name = rest.partition("/")
        return kind, user, name
    return kind, rest, ""


def gpu_pool_guess(catalog: Catalog) -> str | None:
    """The pool of this machine's GPUs when only one pool has GPUs (the embedded default)."""
    pools = [p.slug for p in catalog.pools if p.gpus > 0]
    return pools[0] if len(pools) == 1 else None


def price_per_gpu(catalog: Catalog) -> float | None:
    """The cheapest price of one GPU-hour in the catalogue: the estimate for a dev server whose
    profile is not known (the hub's server models are not readable)."""
    prices = [p.price_per_hour / p.gpu for p in catalog.profiles if p.gpu]
    return min(prices) if prices else None


class Monitor:
    """Reads snapshots; owns the traffic history and the alert evaluator's memory."""

    def __init__(self, session_factory: sessionmaker, catalog, deployments,
                 hub: HubClient | None = None, history: TrafficHistory | None = None):
        self.session_factory = session_factory
        self.catalog = catalog  # a CatalogStore
        self.deployments = deployments  # DeploymentService (its ``traffic``)
        self.hub = hub
        self.history = history or TrafficHistory(lambda: self.deployments.traffic)
        from .rules import Evaluator

        self.evaluator = Evaluator()
        self._evaluating: asyncio.Task | None = None
        self._stopped = False
        self.start()

    def start(self, every: float = EVALUATION_INTERVAL) -> None:
        """Sample traffic and evaluate the alert rules in the background (as Prometheus does
        every evaluation_interval), so that ``for`` durations run while nobody looks. A no-op
        outside a running event loop (tests build monitors without one)."""
        if self._stopped:
            return
        self.history.start()
        if self._evaluating is not None and not self._evaluating.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._evaluating = loop.create_task(self._evaluate_forever(every))

    async def stop(self) -> None:
        """End the evaluator and the traffic sampler (the control plane's shutdown); a snapshot
        read afterwards starts neither again."""
        self._stopped = True
        if self._evaluating is not None:
            self._evaluating.cancel()
            await asyncio.gather(self._evaluating, return_exceptions=True)
        await self.history.stop()

    async def _evaluate_forever(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                self.evaluator.evaluate(await self.snapshot())
            except Exception:  # the next round tries again; pages evaluate on their own
                log.exception("evaluating the alert rules failed")

    async def snapshot(self) -> Snapshot:
        view = await self.hub.view() if self.hub is not None else HubView(error="no hub client")
        return self.load(view)

    def load(self, view: HubView) -> Snapshot:
        self.start()  # a no-op once running; starts it where the app was built loop-less
        self.history.sample()
        now = db.utcnow()
        catalog = self.catalog.catalog()
        profiles = {p.slug: p for p in catalog.profiles}
        recent = now - dt.timedelta(days=RECENT_DAYS)
        with self.session_factory() as session:
            jobs = [
                JobRow(id=r.id, name=r.name, owner=r.owner, status=r.status, pool=r.pool,
                       profile=r.profile, gpus=int((r.runtime or {}).get("gpu", 0)),
                       price_per_hour=float((r.runtime or {}).get("price_per_hour", 0.0)),
                       created_at=r.created_at, started_at=r.started_at,
                       finished_at=r.finished_at, reason=r.reason)
                for r in session.execute(
                    select(Job.id, Job.name, Job.owner, Job.status, Job.pool, Job.profile,
                           Job.runtime, Job.created_at, Job.started_at, Job.finished_at,
                           Job.reason)
                    .where((Job.finished_at.is_(None)) | (Job.finished_at >= recent))
                    .order_by(Job.created_at.desc()))
            ]
            finished = [
                FinishedJob(pool, status, max(((end - (start or end)).total_seconds()), 0.0), end)
                for pool, status, start, end in session.execute(
                    select(Job.pool, Job.status, Job.started_at, Job.finished_at)
                    .where(Job.finished_at.is_not(None)))
            ]
            replicas: dict[str, list[ReplicaRow]] = {}
            for r in session.scalars(select(Replica)):
                replicas.setdefault(r.deployment, []).append(ReplicaRow(r.id, r.state, r.started_at))
            deployments = [
                DeploymentRow(
                    name=d.name, owner=d.owner, status="stopped" if d.stopped else d.status,
                    reason=d.reason, profile=d.profile,
                    pool=str((d.runtime or {}).get("pool", "")),
                    gpus=int((d.runtime or {}).get("gpu", 0)),
                    price_per_hour=float((d.runtime or {}).get("price_per_hour", 0.0)),
                    min_replicas=d.min_replicas, max_replicas=d.max_replicas,
                    desired_replicas=d.desired_replicas, target_concurrency=d.target_concurrency,
                    replicas=replicas.get(d.name, []))
                for d in session.scalars(select(Deployment).order_by(Deployment.created_at))
            ]
            assignments = [(a.device, a.holder, a.assigned_at)
                           for a in session.scalars(select(GpuAssignment))]

        devices: dict[str, list[int]] = {}
        since: dict[str, dt.datetime] = {}
        for device, holder, at in assignments:
            devices.setdefault(holder, []).append(device)
            since[holder] = min(since.get(holder, at), at)

        servers: list[ServerRow] = []
        note = None
        if view.servers_readable:
            source = "hub"
            for s in view.servers:
                profile = profiles.get(s.profile or "")
                holder = f"server:{s.user}/{s.name}"
                servers.append(ServerRow(
                    user=s.user, name=s.name, profile=s.profile,
                    pool=profile.pool if profile else None,
                    gpus=profile.gpu if profile else len(devices.get(holder, [])),
                    price_per_hour=profile.price_per_hour if profile else None,
                    started=s.started, last_activity=s.last_activity, url=s.url, source="hub",
                    devices=sorted(devices.get(holder, []))))
        else:
            source = "gpu-assignments"
            note = ("Only dev environments holding GPUs of this machine are listed: the hub does "
                    "not let the control plane read server models (the service 'fermi' needs the "
                    "scope read:servers)" + (f"; {view.error}" if view.error else "") + ".")
            pool, per_gpu = gpu_pool_guess(catalog), price_per_gpu(catalog)
            for holder, held in devices.items():
                kind, user, name = parse_holder(holder)
                if kind != "server":
                    continue
                servers.append(ServerRow(
                    user=user, name=name, profile=None, pool=pool, gpus=len(held),
                    price_per_hour=per_gpu * len(held) if per_gpu is not None else None,
                    started=since[holder], last_activity=None, url=f"/user/{user}/{name}",
                    source="gpu-assignment", devices=sorted(held)))

        holders: list[GpuHolder] = []
        running = {j.id: j for j in jobs if j.status == "running"}
        for j in running.values():
            if j.gpus:
                holders.append(GpuHolder(f"job:{j.id}", "job", j.owner, j.pool, j.gpus,
                                         j.started_at, 0.0, "busy"))
        for d in deployments:
            if d.gpus:
                for r in d.replicas:
                    holders.append(GpuHolder(f"replica:{r.id}", "replica", d.owner, d.pool,
                                             d.gpus, r.started_at, 0.0, "busy"))
        for s in servers:
            if s.gpus:
                seen = s.last_activity or s.started
                holders.append(GpuHolder(
                    f"server:{s.user}/{s.name}", "server", s.user, s.pool or "unknown", s.gpus,
                    s.started, max((now - seen).total_seconds(), 0.0) if seen else None,
                    "hub" if s.last_activity else "held"))
        owners = {j.id: j.owner for j in jobs}
        serving = {f"server:{s.user}/{s.name}" for s in servers}
        for holder, held in devices.items():
            kind, ident, _ = parse_holder(holder)
            # a job that is not running, or (when the hub tells) a server that is not running
            orphan = ((kind == "job" and ident not in running)
                      or (kind == "server" and view.servers_readable and holder not in serving))
            if orphan:
                holders.append(GpuHolder(
                    holder, "orphan", owners.get(ident, "?") if kind == "job" else ident,
                    gpu_pool_guess(catalog) or "unknown", len(held), since[holder],
                    max((now - since[holder]).total_seconds(), 0.0), "held"))

        return Snapshot(now=now, catalog=catalog, jobs=jobs, finished=finished,
                        deployments=deployments, servers=servers, servers_source=source,
                        servers_note=note, holders=holders,
                        traffic=dict(self.deployments.traffic or {}), history=self.history,
                        groups=dict(view.groups), hub=view)
