"""Fixtures shared by the unit tests: a job service over an in-memory database with the shipped
catalogue and a backend that launches nothing (``tests/mocking.FakeBackend``)."""

from __future__ import annotations

import pytest

from fermi_extension import db
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.db import make_session_factory
from fermi_extension.jobs.service import JobService
from fermi_extension.paths import shipped
from tests.mocking import T0, Clock, FakeBackend


class Wakes:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


@pytest.fixture
def session_factory():
    return make_session_factory("sqlite://")


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def wakes():
    return Wakes()


@pytest.fixture
def jobs_dir(tmp_path):
    return tmp_path / "jobs"


@pytest.fixture
def service(session_factory, backend, jobs_dir, wakes) -> JobService:
    catalog = CatalogStore(session_factory)
    catalog.seed_if_empty(load_catalog_file(shipped("hub_config") / "catalog.yaml"))
    return JobService(session_factory, catalog, backend, jobs_dir, wake=wakes)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(T0)
    monkeypatch.setattr(db, "utcnow", fake)
    return fake
