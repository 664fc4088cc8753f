"""Schedules: a notebook submitted as a job again at each time of a cron expression.

A schedule keeps the job request it was created with (the notebook snapshot included), checked
then exactly as a submission is; each run is an ordinary job of the owner, so the queue, quotas
of the pools and the job's own history apply unchanged. Times are UTC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from croniter import croniter
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..caller import Caller, audit, owned, visible
from ..db import Schedule, utcnow
from ..errors import FermiError
from .models import CreateJob
from .service import JobService

log = logging.getLogger("fermi.schedules")


def next_time(cron: str, after: dt.datetime) -> dt.datetime:
    return croniter(cron, after).get_next(dt.datetime)


class CreateSchedule(CreateJob):
    cron: str = Field(description="when to run, a 5-field cron expression in UTC, e.g. `0 3 * * *`")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value.split(" ")) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a cron expression: use 5 fields, minute hour day month "
                "weekday, e.g. `0 3 * * *` for every day at 03:00 UTC"
            )
        return value


class DescribeSchedule(BaseModel):
    id: str
    name: str
    owner: str
    cron: str
    image: str | None
    profile: str | None
    parameters: dict
    next_run_at: dt.datetime
    last_job_id: str | None
    last_error: str | None
    runs: int
    created_at: dt.datetime


class ListSchedules(BaseModel):
    schedules: list[DescribeSchedule]


def describe(row: Schedule) -> DescribeSchedule:
    request = row.request
    return DescribeSchedule(
        id=row.id, name=row.name, owner=row.owner, cron=row.cron, image=request.get("image"),
        profile=request.get("profile"), parameters=request.get("parameters") or {},
        next_run_at=row.next_run_at, last_job_id=row.last_job_id, last_error=row.last_error,
        runs=row.runs, created_at=row.created_at,
    )


class ScheduleService:
    def __init__(self, session_factory: sessionmaker, jobs: JobService):
        self.session_factory = session_factory
        self.jobs = jobs
        self.changed = asyncio.Event()

    def create(self, caller: Caller, request: CreateSchedule) -> DescribeSchedule:
        job_request = CreateJob.model_validate(request.model_dump(exclude={"cron"}))
        ready = self.jobs.prepare(caller, job_request)  # refuses what a submission would refuse
        stored = job_request.model_dump(mode="json")
        stored.update(notebook=ready.notebook, parameters=ready.parameters, name=ready.name,
                      notebook_name=ready.notebook_name)
        with self.session_factory() as session:
            row = Schedule(owner=caller.name, owner_groups=list(caller.groups), name=ready.name,
                           cron=request.cron, request=stored,
                           next_run_at=next_time(request.cron, utcnow()))
            session.add(row)
            session.flush()
            audit(session, caller, "create", "schedule", row.id,
                  after={"name": row.name, "cron": row.cron, "profile": stored.get("profile"),
                         "parameters": ready.parameters})
            session.commit()
            result = describe(row)
        self.changed.set()
        return result

    def _visible(self, session, caller: Caller, schedule_id: str) -> Schedule:
        return owned(session, Schedule, schedule_id, caller, "schedule")

    def list(self, caller: Caller) -> ListSchedules:
        query = visible(select(Schedule).order_by(Schedule.created_at.desc()), Schedule.owner, caller)
        with self.session_factory() as session:
            return ListSchedules(schedules=[describe(r) for r in session.scalars(query)])

    def get(self, caller: Caller, schedule_id: str) -> DescribeSchedule:
        with self.session_factory() as session:
            return describe(self._visible(session, caller, schedule_id))

    def delete(self, caller: Caller, schedule_id: str) -> None:
        with self.session_factory() as session:
            row = self._visible(session, caller, schedule_id)
            audit(session, caller, "delete", "schedule", row.id,
                  before={"name": row.name, "cron": row.cron})
            session.delete(row)
            session.commit()

    def run_due(self, now: dt.datetime | None = None) -> list[str]:
        """Submit one job for each schedule that is due (a schedule missed while the platform
        was down runs once, not once per missed time); returns the ids of the jobs."""
        now = now or utcnow()
        started = []
        with self.session_factory() as session:
            due = session.scalars(select(Schedule).where(Schedule.next_run_at <= now)).all()
            for row in due:
                owner = Caller(row.owner, False, tuple(row.owner_groups or ()))
                try:
                    job = self.jobs.submit(owner, CreateJob.model_validate(row.request),
                                           origin=f"by schedule {row.id} ({row.cron})")
                    row.last_job_id, row.last_error = job.id, None
                    started.append(job.id)
                except FermiError as error:  # e.g. the profile was removed since: say why
                    row.last_error = error.message
                    log.info("schedule %s could not submit: %s", row.id, error.message)
                row.runs += 1
                row.next_run_at = next_time(row.cron, now)
            session.commit()
        return started

    def next_due(self) -> dt.datetime | None:
        with self.session_factory() as session:
            return session.scalar(select(Schedule.next_run_at).order_by(Schedule.next_run_at).limit(1))

    async def run(self, max_sleep: float = 60) -> None:
        """Submit due schedules until cancelled."""
        while True:
            try:
                self.run_due()
                upcoming = self.next_due()
            except Exception:
                log.exception("running schedules failed")
                upcoming = None
            delay = max_sleep if upcoming is None else min(
                max_sleep, max(0.5, (upcoming - utcnow()).total_seconds()))
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), delay)
            except asyncio.TimeoutError:
                pass
