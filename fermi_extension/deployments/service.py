"""Deployments: what users declare (``DeploymentService``) and what makes it so
(``DeploymentController``: replicas, readiness, autoscaling, canary, crash replacement).

The declared state is in the database; the controller reconciles the running replicas towards
it every second, so a restarted control plane simply carries on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .. import workload_tokens
from ..caller import Caller, audit, owned, visible
from ..catalog.store import CatalogStore
from ..db import Deployment, DeploymentEvent, Replica, Revision, utcnow
from ..errors import Conflict, InvalidInput, Unprocessable
from ..quotas.service import QuotaService
from ..registry.service import ModelRepository
from ..serving.fetch import model_uri
from ..spec import RuntimeSpec, runtime_spec
from ..tracking.tracker import Tracker
from ..usage.service import usage_record
from .autoscale import Autoscaler
from .backend import ReplicaHandle, ReplicaLaunch, ServingBackend
from .models import (
    CreateDeployment,
    DescribeDeployment,
    EventOut,
    ReplicaCount,
    ReplicaOut,
    RevisionOut,
    TrafficOut,
    UpdateDeployment,
)

log = logging.getLogger("fermi.deployments")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def event(session: Session, deployment: Deployment, kind: str, message: str,
          replicas: int | None = None) -> None:
    session.add(DeploymentEvent(deployment=deployment.name, kind=kind, message=message,
                                replicas=replicas))
    log.info("deployment %s (%s): %s", deployment.name, kind, message)


class DeploymentService:
    def __init__(self, session_factory: sessionmaker, catalog: CatalogStore,
                 registry: ModelRepository, backend: ServingBackend, public_url: str,
                 quotas: QuotaService | None = None):
        self.quotas = quotas or QuotaService(session_factory)
        self.session_factory = session_factory
        self.catalog = catalog
        self.registry = registry
        self.backend = backend
        self.public_url = public_url.rstrip("/")
        self.controller: DeploymentController | None = None
        self.traffic: dict = {}  # the router's latest counters, kept by the controller

    def url(self, name: str) -> str:
        return f"{self.public_url}/{name}"

    def _visible(self, session: Session, caller: Caller, name: str) -> Deployment:
        return owned(session, Deployment, name, caller, "deployment")

    def describe(self, session: Session, d: Deployment, *, events: bool = False,
                 api_key: str | None = None) -> DescribeDeployment:
        revisions = {r.name: r for r in session.scalars(
            select(Revision).where(Revision.deployment == d.name))}
        replicas = session.scalars(
            select(Replica).where(Replica.deployment == d.name).order_by(Replica.started_at)).all()
        traffic = self.traffic.get(d.name, {})
        per_replica = traffic.get("replicas", {})
        ready = {name: sum(1 for r in replicas if r.revision == name and r.state == "ready")
                 for name in revisions}
        split = traffic_split(d, ready)
        revision_out = []
        for name, revision in sorted(revisions.items(), key=lambda kv: int(kv[0][1:])):
            role = ("stable" if name == d.stable_revision
                    else "canary" if name == d.canary_revision else "retired")
            if role == "retired" and not ready.get(name):
                continue
            revision_out.append(RevisionOut(name=name, version=revision.version,
                                            traffic_percent=split.get(name, 0), role=role,
                                            ready_replicas=ready.get(name, 0)))
        out_events = history = None
        if events:
            out_events = [EventOut(at=e.at, kind=e.kind, message=e.message, replicas=e.replicas)
                          for e in session.scalars(select(DeploymentEvent).where(
                              DeploymentEvent.deployment == d.name).order_by(DeploymentEvent.id))]
            history = [ReplicaCount(at=e.at, replicas=e.replicas)
                       for e in out_events if e.replicas is not None]
        return DescribeDeployment(
            name=d.name, owner=d.owner, model=d.model,
            version=revisions[d.stable_revision].version, engine=d.engine, profile=d.profile,
            status="stopped" if d.stopped else d.status, reason=d.reason, url=self.url(d.name),
            min_replicas=d.min_replicas, max_replicas=d.max_replicas,
            target_concurrency=d.target_concurrency,
            scale_down_delay_seconds=d.scale_down_delay_seconds,
            desired_replicas=d.desired_replicas,
            replicas=[ReplicaOut(id=r.id, revision=r.revision, state=r.state,
                                 started_at=r.started_at, ready_at=r.ready_at,
                                 in_flight=per_replica.get(r.id, {}).get("in_flight", 0),
                                 requests=per_replica.get(r.id, {}).get("requests", 0))
                      for r in replicas],
            revisions=revision_out,
            traffic=TrafficOut(requests=traffic.get("requests", 0), errors=traffic.get("errors", 0),
                               in_flight=traffic.get("in_flight", 0),
                               latency_ms=traffic.get("latency_ms", {})),
            events=out_events, replica_history=history, created_at=d.created_at, api_key=api_key,
        )

    # -- reads ------------------------------------------------------------------------------

    def list(self, caller: Caller) -> list[DescribeDeployment]:
        with self.session_factory() as session:
            query = visible(select(Deployment).order_by(Deployment.created_at), Deployment.owner,
                            caller)
            return [self.describe(session, d) for d in session.scalars(query)]

    def get(self, caller: Caller, name: str) -> DescribeDeployment:
        with self.session_factory() as session:
            return self.describe(session, self._visible(session, caller, name), events=True)

    # -- writes -----------------------------------------------------------------------------

    def _runtime(self, caller: Caller, profile_slug: str | None, engine: str) -> RuntimeSpec:
        catalog, image, profile = self.catalog.resolve(None, profile_slug, caller)
        pool = next(p for p in catalog.pools if p.slug == profile.pool)
        available, reason = self.backend.availability(profile, pool, engine)
        if not available:
            raise Unprocessable(reason)
        return runtime_spec(image, profile)

    async def create(self, caller: Caller, request: CreateDeployment) -> DescribeDeployment:
        runtime = self._runtime(caller, request.profile, request.engine)
        self.quotas.admit(caller, deployments=1, gpus=runtime.gpu * request.min_replicas)
        await self.registry.version(caller, request.model, request.version)
        key = "fk-" + secrets.token_urlsafe(24)
        with self.session_factory() as session:
            if session.get(Deployment, request.name) is not None:
                raise Conflict(f"A deployment named {request.name!r} exists; choose another name.")
            deployment = Deployment(
                name=request.name, owner=caller.name, model=request.model, engine=request.engine,
                profile=runtime.profile, runtime=runtime.model_dump(mode="json"),
                min_replicas=request.min_replicas, max_replicas=request.max_replicas,
                target_concurrency=request.target_concurrency,
                scale_down_delay_seconds=request.scale_down_delay_seconds,
                desired_replicas=request.min_replicas, status="pending",
                stable_revision="r1", key_hash=hash_key(key),
            )
            session.add(deployment)
            session.add(Revision(deployment=request.name, name="r1", version=request.version))
            event(session, deployment, "created",
                  f"{request.model} version {request.version} on {runtime.profile}, "
                  f"{request.min_replicas}–{request.max_replicas} replicas",
                  replicas=request.min_replicas)
            audit(session, caller, "deploy", "deployment", request.name,
                  after=request.model_dump(mode="json"))
            session.commit()
            described = self.describe(session, deployment, events=True, api_key=key)
        await self.apply()
        return described

    async def apply(self) -> None:
        """Reconcile now and wait until the router routes by the new declaration, so that the
        answer to a change (rollback, promote, delete) is already true when the user reads it."""
        if self.controller is not None:
            await self.controller.apply_now()

    async def update(self, caller: Caller, name: str, request: UpdateDeployment) -> DescribeDeployment:
        api_key = None
        with self.session_factory() as session:
            d = self._visible(session, caller, name)
            before = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                      "target_concurrency": d.target_concurrency,
                      "canary_revision": d.canary_revision, "canary_percent": d.canary_percent}
            low = request.min_replicas if request.min_replicas is not None else d.min_replicas
            high = request.max_replicas if request.max_replicas is not None else d.max_replicas
            if low > high:
                raise InvalidInput(f"min_replicas ({low}) is more than max_replicas ({high}).")
            changes = []
            if (low, high) != (d.min_replicas, d.max_replicas):
                changes.append(f"bounds {d.min_replicas}–{d.max_replicas} → {low}–{high}")
                d.min_replicas, d.max_replicas = low, high
            if request.target_concurrency is not None:
                changes.append(f"target {d.target_concurrency:g} → {request.target_concurrency:g}")
                d.target_concurrency = request.target_concurrency
            if request.scale_down_delay_seconds is not None:
                d.scale_down_delay_seconds = request.scale_down_delay_seconds
            if request.canary is not None:
                changes.append(await self._canary(session, caller, d, request.canary.version,
                                                  request.canary.traffic_percent))
            if request.action == "promote":
                if not d.canary_revision:
                    raise Conflict(f"Deployment {name!r} has no canary to promote.")
                old = d.stable_revision
                d.stable_revision, d.canary_revision, d.canary_percent = d.canary_revision, None, 0
                changes.append(f"promoted {d.stable_revision}; {old} drains and stops")
            elif request.action == "rollback":
                if not d.canary_revision:
                    raise Conflict(f"Deployment {name!r} has no canary to roll back.")
                changes.append(f"rolled back: all traffic to {d.stable_revision}; "
                               f"{d.canary_revision} drains and stops")
                d.canary_revision, d.canary_percent = None, 0
            elif request.action == "stop":
                d.stopped = True
                changes.append("stopped: replicas drain and stop; the declaration is kept")
            elif request.action == "start":
                d.stopped, d.status = False, "pending"
                changes.append("started")
            elif request.action == "rotate-key":
                api_key = "fk-" + secrets.token_urlsafe(24)
                d.key_hash = hash_key(api_key)
                changes.append("API key rotated; the old key no longer works")
            if not changes:
                raise InvalidInput("Nothing to change: give bounds, target, canary or an action.")
            event(session, d, "updated", "; ".join(changes))
            audit(session, caller, "update", "deployment", name, before=before,
                  after=request.model_dump(mode="json", exclude_none=True))
            session.commit()
        await self.apply()
        with self.session_factory() as session:
            return self.describe(session, session.get(Deployment, name), events=True,
                                 api_key=api_key)

    async def _canary(self, session: Session, caller: Caller, d: Deployment, version: str,
                      percent: int) -> str:
        stable = session.get(Revision, (d.name, d.stable_revision))
        current = session.get(Revision, (d.name, d.canary_revision)) if d.canary_revision else None
        if current is not None and current.version == version:
            d.canary_percent = percent
            return f"canary {current.name} (version {version}) at {percent}%"
        if stable.version == version:
            raise Conflict(f"Version {version} is already the stable revision.")
        await self.registry.version(caller, d.model, version)
        numbers = [int(r.name[1:]) for r in session.scalars(
            select(Revision).where(Revision.deployment == d.name))]
        name = f"r{max(numbers) + 1}"
        session.add(Revision(deployment=d.name, name=name, version=version))
        d.canary_revision, d.canary_percent = name, percent
        return f"canary {name} (version {version}) at {percent}%"

    async def delete(self, caller: Caller, name: str) -> None:
        with self.session_factory() as session:
            d = self._visible(session, caller, name)
            d.stopped = True
            d.status = "deleting"
            event(session, d, "deleting", f"deleted by {caller.name}: replicas drain and stop")
            audit(session, caller, "delete", "deployment", name,
                  before={"model": d.model, "stable_revision": d.stable_revision})
            session.commit()
        await self.apply()


def traffic_split(d: Deployment, ready: dict[str, int]) -> dict[str, int]:
    """Percent of requests per revision. A canary without a ready replica gets nothing yet, so
    no request meets an empty revision."""
    if d.canary_revision and d.canary_percent and ready.get(d.canary_revision):
        if not ready.get(d.stable_revision):
            return {d.canary_revision: 100}
        return {d.stable_revision: 100 - d.canary_percent, d.canary_revision: d.canary_percent}
    return {d.stable_revision: 100}


class DeploymentController:
    """Reconciles replicas with what each deployment declares, once a second."""

    crash_backoff = (2, 5, 10, 30, 60)

    def __init__(self, session_factory: sessionmaker, service: DeploymentService,
                 backend: ServingBackend, tracker: Tracker, interval: float = 1.0,
                 drain_timeout: float = 30.0, quotas: QuotaService | None = None):
        self.quotas = quotas or QuotaService(session_factory)
        self.quota_held: dict[str, str] = {}  # deployment → why it may not grow (said once)
        self.session_factory = session_factory
        self.service = service
        self.backend = backend
        self.tracker = tracker
        self.interval = interval
        self.drain_timeout = drain_timeout
        self.scalers: dict[str, Autoscaler] = {}
        self.failures: dict[tuple[str, str], list[float]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._fetching: dict[tuple[str, str], asyncio.Task] = {}
        self._generation = 0
        self._published: dict | None = None
        self._lock = asyncio.Lock()  # one reconciliation at a time: never two starts of a replica
        # Replicas that passed their health check and are published to the router as ready, but
        # not yet seen ready in the router's own table: they (and their deployment) count as
        # ready only then, so "ready" always means "the router routes to it".
        self._healthy: set[str] = set()
        self._router_view = False  # the router reports its readiness (stats "readiness": true)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.backend.start()
        with self.session_factory() as session:
            for replica in session.scalars(select(Replica)).all():
                if not self.backend.alive(self._handle(replica)):
                    session.delete(replica)
            session.flush()
            self._unready_without_replicas(session)
            session.commit()
        self._task = asyncio.create_task(self._loop())

    async def stop(self, *, stop_all: bool) -> None:
        tasks = [t for t in (self._task, *self._fetching.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()
        if stop_all:  # Ctrl-C: every process stops; the declarations stay for the next start
            with self.session_factory() as session:
                replicas = session.scalars(select(Replica)).all()
                handles = [self._handle(r) for r in replicas]
                for replica in replicas:
                    self._bill(session, replica)
                    session.delete(replica)
                session.flush()
                self._unready_without_replicas(session)
                session.commit()
            await asyncio.gather(*(self.backend.stop_replica(h) for h in handles))
        await self.backend.close(stop_all=stop_all)

    def _unready_without_replicas(self, session: Session) -> None:
        """A deployment whose replicas are gone is not ready, even before the next reconcile."""
        for d in session.scalars(select(Deployment).where(Deployment.status == "ready")):
            if not session.scalars(select(Replica).where(Replica.deployment == d.name,
                                                         Replica.state == "ready")).first():
                d.status = "pending"

    @staticmethod
    def _handle(replica: Replica) -> ReplicaHandle:
        return ReplicaHandle(replica.pid, replica.pid_started, replica.url, replica.handle_name)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
                if self._healthy:
                    # replicas were just published as ready: confirm them as soon as the router
                    # has loaded the table, not a whole interval later
                    await self._wait_routed(1.0)
                    continue
            except Exception:
                log.exception("reconciling deployments failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def apply_now(self, timeout: float = 3.0) -> None:
        await self.reconcile()
        await self._wait_routed(timeout)

    async def _wait_routed(self, timeout: float) -> None:
        """Until the router routes by the latest published table (or ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.backend.stats()).get("generation", -1) >= self._generation:
                return
            await asyncio.sleep(0.02)

    async def reconcile(self) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        routed = await self.backend.stats()
        self._router_view = routed.get("readiness") is True
        stats = routed.get("deployments", {})
        self.service.traffic = stats
        now = time.monotonic()
        with self.session_factory() as session:
            deployments = session.scalars(select(Deployment)).all()
            for d in deployments:
                await self._reconcile_one(session, d, stats.get(d.name, {}), now)
            session.commit()
            self._publish(session)

    async def _reconcile_one(self, session: Session, d: Deployment, traffic: dict, now: float) -> None:
        replicas = session.scalars(select(Replica).where(Replica.deployment == d.name)).all()
        had = len(replicas)
        per_replica = traffic.get("replicas", {})
        # crashed replicas are replaced
        for replica in list(replicas):
            if not self.backend.alive(self._handle(replica)):
                # read once even when it was draining: the backend lets go of an ended replica
                # (its container) when its end has been read
                tail = self.backend.replica_log(replica.id, 5)
                if replica.state != "draining":
                    event(session, d, "replica-crashed",
                          f"replica {replica.id} exited; replacing it. Last log lines:\n{tail}")
                    self.failures.setdefault((d.name, replica.revision), []).append(now)
                self._bill(session, replica)
                session.delete(replica)
                replicas.remove(replica)
                self._healthy.discard(replica.id)
        # readiness of starting replicas: healthy ones are published as ready, and are ready once
        # the router's own table has them so (without a router of ours, the backend's word is it)
        for replica in replicas:
            if replica.state != "starting":
                continue
            if self._router_view:
                if replica.id in self._healthy:
                    if per_replica.get(replica.id, {}).get("state") != "ready":
                        continue
                elif await self.backend.ready(self._handle(replica)):
                    self._healthy.add(replica.id)
                    continue
                else:
                    continue
            elif not await self.backend.ready(self._handle(replica)):
                continue
            self._healthy.discard(replica.id)
            replica.state, replica.ready_at = "ready", utcnow()
            self.failures.pop((d.name, replica.revision), None)
            event(session, d, "replica-ready", f"replica {replica.id} is ready")
        # draining replicas stop once nothing is in flight (or after the drain timeout)
        for replica in list(replicas):
            if replica.state == "draining":
                waited = (utcnow() - replica.draining_since).total_seconds()
                if per_replica.get(replica.id, {}).get("in_flight", 0) == 0 or waited > self.drain_timeout:
                    await self.backend.stop_replica(self._handle(replica))
                    self._bill(session, replica)
                    session.delete(replica)
                    replicas.remove(replica)
        if len(replicas) < had:  # a version may have lost its last replica
            self._retire_fetch_tokens(session, d, replicas)
        if d.status == "deleting":
            if not replicas:
                session.delete(d)
                self.scalers.pop(d.name, None)
            else:
                self._drain(session, d, [r for r in replicas if r.state != "draining"])
            return
        # autoscaling on in-flight requests
        scaler = self.scalers.get(d.name)
        if scaler is None or (scaler.target, scaler.low, scaler.high, scaler.delay) != (
                d.target_concurrency, d.min_replicas, d.max_replicas, d.scale_down_delay_seconds):
            scaler = Autoscaler(d.target_concurrency, d.min_replicas, d.max_replicas,
                                d.scale_down_delay_seconds)
            self.scalers[d.name] = scaler
        scaler.observe(now, float(traffic.get("in_flight", 0)))
        desired, reason = scaler.decide(now, d.desired_replicas)
        if desired != d.desired_replicas:
            d.desired_replicas = desired
            event(session, d, "scaled", reason, replicas=desired)
        # each live revision towards its count; others drain
        wanted = {d.stable_revision: 0 if d.stopped else d.desired_replicas}
        if d.canary_revision and not d.stopped:
            wanted[d.canary_revision] = max(1, math.ceil(d.desired_replicas * d.canary_percent / 100))
        for revision_name, count in wanted.items():
            live = [r for r in replicas if r.revision == revision_name and r.state != "draining"]
            if len(live) < count:
                await self._scale_up(session, d, revision_name, count - len(live), now)
            elif len(live) > count:
                # drain the not-ready ones first, then the newest ready ones
                live.sort(key=lambda r: (r.state == "ready", -r.started_at.timestamp()))
                self._drain(session, d, live[: len(live) - count])
        retired = [r for r in replicas if r.revision not in wanted and r.state != "draining"]
        if retired:
            self._drain(session, d, retired)
        # status
        ready_stable = sum(1 for r in replicas if r.revision == d.stable_revision and r.state == "ready")
        routed = not self._router_view or traffic.get("ready") is True
        if d.stopped:
            d.status = "stopped"
        elif ready_stable and routed:
            d.status, d.reason = "ready", None
        elif len(self.failures.get((d.name, d.stable_revision), [])) >= 3:
            d.status = "failed"
            d.reason = ("Replicas keep exiting before they are ready; the platform keeps retrying. "
                        "See the deployment's events for their log.")
        else:
            d.status = "pending"

    def _drain(self, session: Session, d: Deployment, replicas: list[Replica]) -> None:
        for replica in replicas:
            self._healthy.discard(replica.id)
            replica.state, replica.draining_since = "draining", utcnow()
            event(session, d, "replica-draining",
                  f"replica {replica.id} drains (no new requests) and then stops")

    async def _scale_up(self, session: Session, d: Deployment, revision_name: str, count: int,
                        now: float) -> None:
        failures = self.failures.get((d.name, revision_name), [])
        if len(failures) > 1:  # the first crash is replaced at once; a crash loop backs off
            backoff = self.crash_backoff[min(len(failures) - 1, len(self.crash_backoff)) - 1]
            if now - failures[-1] < backoff:
                return
        revision = session.get(Revision, (d.name, revision_name))
        model_dir = await self._model_files(session, d, revision)
        if model_dir is None:
            return
        runtime = RuntimeSpec.model_validate(d.runtime)
        if runtime.gpu:  # GPU replicas count against the owner's GPU quota, as at creation
            while count and (reason := self.quotas.refusal(session, d.owner,
                                                           gpus=runtime.gpu * count)):
                count -= 1
            if count == 0:
                if self.quota_held.get(d.name) != reason:
                    self.quota_held[d.name] = reason
                    event(session, d, "scale-held", f"not scaling up: {reason}")
                return
            self.quota_held.pop(d.name, None)
        for _ in range(count):
            replica_id = f"{d.name}-{revision_name}-{secrets.token_hex(3)}"
            launch = ReplicaLaunch(replica_id, d.name, d.model, revision.version, model_dir,
                                   d.engine, runtime,
                                   fetch_token=self._fetch_token(session, d, revision.version))
            handle = await self.backend.start_replica(launch)
            session.add(Replica(id=replica_id, deployment=d.name, revision=revision_name,
                                state="starting", url=handle.url, pid=handle.pid,
                                pid_started=handle.started, handle_name=handle.name))
            event(session, d, "replica-starting",
                  f"replica {replica_id} starting ({d.model} version {revision.version})")

    def _fetch_token(self, session: Session, d: Deployment, version: str) -> str | None:
        """Where replicas fetch their model version themselves (``backend.fetches_models``: a
        revision's storage initializer on Kubernetes), a token that reads that version's files
        through the tracking proxy and nothing else; ``_retire_fetch_tokens`` revokes it."""
        if not self.backend.fetches_models:
            return None
        return workload_tokens.issue(session, kind="replica", owner=d.owner, deployment=d.name,
                                     model=model_uri(d.model, version))

    def _retire_fetch_tokens(self, session: Session, d: Deployment,
                             replicas: list[Replica]) -> None:
        """Revoke the fetch tokens of the versions ``d`` no longer runs a replica of."""
        if not self.backend.fetches_models:
            return
        served = {session.get(Revision, (d.name, r.revision)).version for r in replicas}
        for revision in session.scalars(select(Revision).where(Revision.deployment == d.name)):
            if revision.version not in served:
                workload_tokens.revoke(session, deployment=d.name,
                                       model=model_uri(d.model, revision.version))

    async def _model_files(self, session: Session, d: Deployment, revision: Revision) -> Path | None:
        """The model version's files on this machine, fetched once in the background."""
        target = self.backend.model_dir(d.model, revision.version)
        if (target / "MLmodel").exists():
            return target
        key = (d.model, revision.version)
        task = self._fetching.get(key)
        if task is None:
            self._fetching[key] = asyncio.create_task(
                self.tracker.download_model(d.model, revision.version, target))
            return None
        if not task.done():
            return None
        self._fetching.pop(key)
        error = task.exception()
        if error is not None:
            d.status = "failed"
            d.reason = f"Could not fetch {d.model} version {revision.version}: {error}"
            event(session, d, "fetch-failed", d.reason)
            return None
        return target

    def _bill(self, session: Session, replica: Replica) -> None:
        d = session.get(Deployment, replica.deployment)
        if d is None:
            return
        session.add(usage_record(d.owner, "replica", replica.id, d.runtime, replica.started_at,
                                 utcnow()))

    def _publish(self, session: Session) -> None:
        table = {}
        for d in session.scalars(select(Deployment)):
            replicas = session.scalars(select(Replica).where(Replica.deployment == d.name)).all()
            ready = {}
            for r in replicas:
                if r.state == "ready":
                    ready[r.revision] = ready.get(r.revision, 0) + 1
            split = traffic_split(d, ready)
            revisions = []
            for name in sorted({r.revision for r in replicas} | set(split)):
                revisions.append({
                    "name": name, "traffic_percent": split.get(name, 0),
                    "replicas": [{"id": r.id, "url": r.url,
                                  "state": "ready" if r.id in self._healthy else r.state}
                                 for r in replicas if r.revision == name and (
                                     r.state in ("ready", "draining") or r.id in self._healthy)],
                })
            table[d.name] = {"owner": d.owner, "admins_allowed": True, "key_hashes": [d.key_hash],
                             "model": d.model, "revisions": revisions}
        if table != self._published:
            # milliseconds: increases across control-plane restarts, as the router expects
            self._generation = max(self._generation + 1, int(time.time() * 1000))
            self.backend.publish({"generation": self._generation, "deployments": table})
            self._published = table


