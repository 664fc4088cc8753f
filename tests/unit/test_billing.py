"""Billing arithmetic, exact to the cent, on a scripted timeline driven through the platform's
clock seam (``fermi_extension.db.utcnow``) and the code that really writes usage records:

- a dev server (the spawner's ``mark_running`` / ``clear_state``) across a month boundary,
- a GPU job whose first attempt is lost and retried (``JobRunner._start`` / ``_finish``),
- an inference service scaled up and down, then stopped (``DeploymentController.reconcile``).

Prices come from the seed catalogue: cpu-small 0.05/h, cpu-large 0.20/h, gpu-a100-1 2.50/h.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from fermi_extension import db
from fermi_extension.caller import Caller
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.db import Deployment, Job, Revision, UsageRecord, make_session_factory
from fermi_extension.deployments import service as deployments_service
from fermi_extension.deployments.backend import ReplicaHandle, ServingBackend
from fermi_extension.jobs import service as jobs_service
from fermi_extension.jobs.backend import Outcome
from fermi_extension.jobs.models import CreateJob
from fermi_extension.paths import shipped
from fermi_extension.spec import runtime_spec
from fermi_extension.usage.service import UsageService, cents
from fermi_spawner import base as spawner_base  # noqa: F401 — its `utcnow` is patched too
from tests.mocking import FakeBackend, InstantTracker
from tests.unit.test_job_service import make_notebook


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def at(self, text: str) -> None:
        self.now = dt.datetime.fromisoformat(text)


@pytest.fixture
def clock(monkeypatch):
    """The platform clock, scripted. Modules that imported the seam by name (``from ..db import
    utcnow``) hold their own reference, so each of them is patched as well."""
    fake = Clock(dt.datetime(2026, 3, 31, 21, 0))
    original = db.utcnow
    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "utcnow", None) is original:
            monkeypatch.setattr(module, "utcnow", fake)
    assert db.utcnow is fake and jobs_service.utcnow is fake and deployments_service.utcnow is fake
    return fake


@pytest.fixture
def platform_db(tmp_path):
    path = tmp_path / "fermi.sqlite"
    factory = make_session_factory(f"sqlite:///{path}")
    CatalogStore(factory).seed_if_empty(load_catalog_file(shipped("hub_config") / "catalog.yaml"))
    return path, factory




class HeldBackend(FakeBackend):
    """Attempts run until the test ends them (``wait`` never returns by itself)."""

    async def wait(self, handle, files, timeout):
        await asyncio.Event().wait()


class Serving(ServingBackend):
    """Replicas that start, are ready and stop at once; the controller's bookkeeping is real."""

    def __init__(self, root: Path, **kwargs):
        super().__init__(**kwargs)
        self.root = root

    def availability(self, profile, pool, engine):
        return True, None

    async def start_replica(self, launch):
        return ReplicaHandle(None, None, f"http://replica/{launch.replica_id}", launch.replica_id)

    def alive(self, handle):
        return True

    async def ready(self, handle):
        return True

    async def stop_replica(self, handle):
        pass

    def model_dir(self, model, version):
        return self.root / model / version

    def publish(self, routes):
        pass

    async def stats(self):
        return {"deployments": {}}


def run_dev_server(path: Path, user: str, profile: str, clock: Clock, start: str, stop: str):
    from jupyterhub.objects import Hub

    from fermi_spawner.local import FermiLocalSpawner

    spawner = FermiLocalSpawner(
        user=SimpleNamespace(name=user, groups=[], admin=False, url=f"/user/{user}/"), hub=Hub(),
        platform_db_url=f"sqlite:///{path}", gpu_inventory=[])
    spawner.user_options = {"profile": profile}
    asyncio.run(spawner.load_user_options())
    clock.at(start)
    spawner.mark_running([])
    clock.at(stop)
    spawner.clear_state()  # the hub clears the state when the server stops: the run is billed


def run_job(factory, clock: Clock, tmp_path: Path):
    catalog = CatalogStore(factory)
    backend = HeldBackend(has_gpu=True)
    jobs = jobs_service.JobService(factory, catalog, backend, tmp_path / "jobs")
    runner = jobs_service.JobRunner(factory, catalog, backend, InstantTracker(), tmp_path / "jobs",
                                    tracking_uri="x")
    clock.at("2026-04-01T08:55")
    job = jobs.submit(Caller("ann"), CreateJob(notebook=make_notebook(), notebook_name="t.ipynb",
                                               profile="gpu-a100-1"))

    async def attempts():
        clock.at("2026-04-01T09:00")
        assert await runner._start(job.id)
        clock.at("2026-04-01T10:30")  # the attempt's process vanished: retried
        await runner._finish(job.id, Outcome("failed", "node lost", lost=True))
        clock.at("2026-04-01T10:45")
        assert await runner._start(job.id)
        clock.at("2026-04-01T11:15")
        await runner._finish(job.id, Outcome("succeeded"))
        for task in list(runner._watches.values()):
            task.cancel()

    asyncio.run(attempts())
    with factory() as session:
        done = session.get(Job, job.id)
        assert (done.status, done.attempt) == ("succeeded", 2)


def wine_controller(factory, tmp_path: Path, max_replicas: int = 3):
    """ann's deployment "wine" on cpu-large, declared, and a controller with real bookkeeping."""
    (tmp_path / "models" / "wine" / "1").mkdir(parents=True)
    (tmp_path / "models" / "wine" / "1" / "MLmodel").write_text("flavors: {}\n")
    catalog = CatalogStore(factory)
    c, image, profile = catalog.resolve(None, "cpu-large")
    with factory() as session:
        session.add(Deployment(
            name="wine", owner="ann", model="wine", engine="sklearn", profile="cpu-large",
            runtime=runtime_spec(image, profile).model_dump(mode="json"), min_replicas=1,
            max_replicas=max_replicas, target_concurrency=5, scale_down_delay_seconds=0,
            desired_replicas=1, stable_revision="r1", key_hash="x"))
        session.add(Revision(deployment="wine", name="r1", version="1"))
        session.commit()
    service = SimpleNamespace(traffic={})
    return deployments_service.DeploymentController(
        factory, service, Serving(tmp_path / "models"), tracker=None)


def run_deployment(factory, clock: Clock, tmp_path: Path):
    controller = wine_controller(factory, tmp_path)

    def bounds(low: int) -> None:
        with factory() as session:
            session.get(Deployment, "wine").min_replicas = low
            session.commit()

    async def timeline():
        clock.at("2026-04-01T12:00")
        await controller.reconcile()  # replica A starts
        await controller.reconcile()  # … and is ready
        clock.at("2026-04-01T13:00")
        bounds(2)
        await controller.reconcile()  # replica B starts
        await controller.reconcile()
        clock.at("2026-04-01T15:00")
        bounds(1)
        await controller.reconcile()  # B drains (the newest goes first) …
        await controller.reconcile()  # … and stops: billed 13:00–15:00
        clock.at("2026-04-01T17:00")
        with factory() as session:
            session.get(Deployment, "wine").stopped = True
            session.commit()
        await controller.reconcile()  # A drains …
        await controller.reconcile()  # … and stops: billed 12:00–17:00

    asyncio.run(timeline())


def test_a_scripted_month_is_billed_to_the_cent(clock, platform_db, tmp_path):
    path, factory = platform_db
    # ann: a cpu-large dev server from 21:00 on 31 March to 02:30 on 1 April (5.5 h × 0.20)
    run_dev_server(path, "ann", "cpu-large", clock, "2026-03-31T21:00", "2026-04-01T02:30")
    # bob: 20 minutes on cpu-small (0.05/h): 0.01666… → 0.02 on the bill
    run_dev_server(path, "bob", "cpu-small", clock, "2026-04-01T08:00", "2026-04-01T08:20")
    # ann: a GPU job, 1.5 h lost attempt + 0.5 h successful attempt on gpu-a100-1 (2.50/h)
    run_job(factory, clock, tmp_path)
    # ann: a cpu-large service: replica A 12:00–17:00, replica B 13:00–15:00 (0.20/h)
    run_deployment(factory, clock, tmp_path)

    with factory() as session:
        records = session.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()
    got = sorted((r.user, r.kind, r.started_at.strftime("%H:%M"), r.ended_at.strftime("%H:%M"),
                  r.gpus) for r in records)
    assert got == sorted([
        ("ann", "server", "21:00", "02:30", 0), ("bob", "server", "08:00", "08:20", 0),
        ("ann", "job", "09:00", "10:30", 1), ("ann", "job", "10:45", "11:15", 1),
        ("ann", "replica", "13:00", "15:00", 0), ("ann", "replica", "12:00", "17:00", 0),
    ])

    usage = UsageService(factory)
    admin = Caller("root", admin=True)
    april = usage.report(admin, month="2026-04")
    lines = {(r.user, r.kind): (cents(r.cost), r.seconds, r.gpu_seconds) for r in april.rows}
    assert lines == {
        ("ann", "server"): (0.50, 2.5 * 3600, 0),  # only April's 2.5 h of the 5.5 h run
        ("ann", "job"): (5.00, 2 * 3600, 2 * 3600),
        ("ann", "replica"): (1.40, 7 * 3600, 0),
        ("bob", "server"): (0.02, 20 * 60, 0),
    }
    march = usage.report(admin, month="2026-03")
    assert [(r.user, r.kind, cents(r.cost)) for r in march.rows] == [("ann", "server", 0.60)]

    by_user = {(r.key, r.month): r.cost_rounded for r in usage.totals(admin, by="user").rows}
    assert by_user == {("ann", "2026-03"): 0.60, ("ann", "2026-04"): 6.90,
                       ("bob", "2026-04"): 0.02}
    # the whole bill: 1.10 + 5.00 + 1.40 + 0.01666… = 7.51666… → 7.52
    everything = usage.totals(admin, by="month")
    assert everything.total_cost_rounded == 7.52
    assert Decimal(repr(everything.total_cost)).quantize(Decimal("0.00001")) == Decimal("7.51667")
    # ann sees her bill, not bob's
    assert {r.key for r in usage.totals(Caller("ann"), by="user").rows} == {"ann"}
