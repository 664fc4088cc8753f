"""The usage record (``usage.service.usage_record``): one builder for the billing row of every
run that ends — a job attempt, an inference replica, a dev server. The exact bills of a scripted
month are in ``test_billing.py``; here, the rule itself, and the three writers applying it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from fermi_extension.caller import Caller
from fermi_extension.catalog.store import CatalogStore
from fermi_extension.db import Deployment, UsageRecord
from fermi_extension.jobs import service as jobs_service
from fermi_extension.jobs.backend import Outcome
from fermi_extension.jobs.models import CreateJob
from fermi_extension.usage.service import usage_record
from tests.mocking import InstantTracker
from tests.platform import make_notebook
from tests.unit.test_billing import (  # noqa: F401 — clock and platform_db are fixtures
    HeldBackend,
    clock,
    platform_db,
    run_dev_server,
    wine_controller,
)

START = dt.datetime(2026, 4, 1, 9, 0)
RUNTIME = {"profile": "gpu-a100-1", "gpu": 1, "price_per_hour": 2.5, "cpu": 8}


def test_a_record_bills_the_runtime_at_its_price_when_it_started():
    record = usage_record("ann", "job", "j1", RUNTIME, START, START + dt.timedelta(minutes=90))
    assert (record.user, record.kind, record.ref, record.profile, record.gpus) == (
        "ann", "job", "j1", "gpu-a100-1", 1)
    assert (record.started_at, record.ended_at) == (START, START + dt.timedelta(minutes=90))
    assert record.seconds == 5400 and record.price_per_hour == 2.5
    assert record.cost == pytest.approx(3.75)


def test_a_free_or_gpu_less_runtime_costs_nothing_and_counts_no_gpu():
    record = usage_record("ann", "server", "ann/", {"profile": "cpu-small"}, START,
                          START + dt.timedelta(hours=2))
    assert (record.gpus, record.price_per_hour, record.cost, record.seconds) == (0, 0.0, 0.0, 7200)


def test_a_clock_stepped_back_bills_nothing_rather_than_a_credit():
    record = usage_record("ann", "replica", "r", RUNTIME, START, START - dt.timedelta(minutes=5))
    assert (record.seconds, record.cost) == (0.0, 0.0)


def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="not one of job, replica, server"):
        usage_record("ann", "notebook", "x", RUNTIME, START, START)


def test_every_writer_bills_through_the_one_builder(clock, platform_db, tmp_path):
    """A job attempt, a replica and a dev server, each ended with the clock stepped back by an
    hour (an NTP correction): every one is billed 0 s, as the builder rules — before it, only
    the dev server's writer guarded against it, and the others billed a negative cost."""
    path, factory = platform_db
    catalog = CatalogStore(factory)

    backend = HeldBackend(has_gpu=True)
    jobs = jobs_service.JobService(factory, catalog, backend, tmp_path / "jobs")
    runner = jobs_service.JobRunner(factory, catalog, backend, InstantTracker(), tmp_path / "jobs",
                                    tracking_uri="x")
    controller = wine_controller(factory, tmp_path, max_replicas=1)

    async def runs():
        clock.at("2026-04-01T10:00")
        job = jobs.submit(Caller("ann"), CreateJob(notebook=make_notebook(), profile="gpu-a100-1"))
        assert await runner._start(job.id)
        await controller.reconcile()  # the replica starts …
        await controller.reconcile()  # … and is ready
        clock.at("2026-04-01T09:00")
        await runner._finish(job.id, Outcome("succeeded"))
        for task in list(runner._watches.values()):
            task.cancel()
        with factory() as session:
            session.get(Deployment, "wine").stopped = True
            session.commit()
        await controller.reconcile()  # the replica drains …
        await controller.reconcile()  # … and stops

    asyncio.run(runs())
    run_dev_server(path, "ann", "cpu-small", clock, "2026-04-01T10:00", "2026-04-01T09:00")
    with factory() as session:
        records = session.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()
    assert sorted((r.kind, r.profile) for r in records) == [
        ("job", "gpu-a100-1"), ("replica", "cpu-large"), ("server", "cpu-small")]
    for record in records:
        assert (record.seconds, record.cost) == (0.0, 0.0), record.kind
        assert record.price_per_hour > 0, record.kind  # the price it ran at is kept
