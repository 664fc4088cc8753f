"""Schedules: checked like a submission, run as the owner's ordinary jobs at each cron time."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from fermi_extension.db import AuditEvent, Job, JobEvent, Schedule
from fermi_extension.errors import InvalidInput, NotFound
from fermi_extension.jobs.schedules import CreateSchedule, ScheduleService
from tests.unit.test_job_service import ALICE, ADMIN, BOB, count, make_notebook


def schedule_request(**fields) -> CreateSchedule:
    fields.setdefault("notebook", make_notebook())
    fields.setdefault("notebook_name", "train.ipynb")
    fields.setdefault("cron", "0 3 * * *")
    return CreateSchedule(**fields)


@pytest.fixture
def schedules(session_factory, service) -> ScheduleService:
    return ScheduleService(session_factory, service)


def test_a_schedule_runs_the_owners_job_at_each_cron_time(schedules, session_factory):
    made = schedules.create(ALICE, schedule_request(parameters={"epochs": 3}, cron="0 3 * * *"))
    assert made.next_run_at.hour == 3 and made.next_run_at.minute == 0
    assert count(session_factory, Job) == 0  # nothing runs before its time

    assert schedules.run_due(made.next_run_at - dt.timedelta(seconds=1)) == []
    started = schedules.run_due(made.next_run_at)
    assert len(started) == 1
    with session_factory() as session:
        job = session.get(Job, started[0])
        assert (job.owner, job.parameters["epochs"]) == ("alice", 3)
        events = [e.message for e in session.query(JobEvent).filter_by(job_id=job.id)]
        assert any(f"schedule {made.id}" in m for m in events)
        row = session.get(Schedule, made.id)
        assert row.next_run_at == made.next_run_at + dt.timedelta(days=1)
        assert (row.last_job_id, row.runs) == (job.id, 1)


def test_missed_times_run_once_not_once_each(schedules, session_factory):
    made = schedules.create(ALICE, schedule_request(cron="*/5 * * * *"))
    later = made.next_run_at + dt.timedelta(hours=2)  # the platform was down for 24 slots
    assert len(schedules.run_due(later)) == 1
    assert schedules.run_due(later) == []


@pytest.mark.parametrize("cron", ["every day", "0 3 * *", "61 * * * *", ""])
def test_a_bad_cron_expression_is_refused_with_a_sentence(cron):
    with pytest.raises(ValidationError, match="cron expression"):
        schedule_request(cron=cron)


def test_a_schedule_is_checked_like_a_submission_and_writes_nothing(schedules, session_factory):
    with pytest.raises(InvalidInput, match="epochs"):
        schedules.create(ALICE, schedule_request(parameters={"epochs": "many"}))
    assert count(session_factory, Schedule) == 0
    assert count(session_factory, AuditEvent) == 0


def test_schedules_belong_to_their_owner(schedules):
    made = schedules.create(ALICE, schedule_request())
    assert [s.id for s in schedules.list(BOB).schedules] == []
    with pytest.raises(NotFound):
        schedules.get(BOB, made.id)
    with pytest.raises(NotFound):
        schedules.delete(BOB, made.id)
    assert [s.id for s in schedules.list(ADMIN).schedules] == [made.id]
    schedules.delete(ALICE, made.id)
    assert schedules.list(ALICE).schedules == []


def test_a_run_that_can_no_longer_submit_says_why(schedules, session_factory):
    made = schedules.create(ALICE, schedule_request())
    with session_factory() as session:
        row = session.get(Schedule, made.id)
        row.request = {**row.request, "profile": "removed-profile"}
        session.commit()
    assert schedules.run_due(made.next_run_at) == []
    described = schedules.get(ALICE, made.id)
    assert "removed-profile" in described.last_error and described.runs == 1
