"""Billing arithmetic on a scripted timeline, scoping, and the audit log's filters."""

import datetime as dt

import pytest

from fermi_extension.caller import Caller, audit
from fermi_extension.db import UsageRecord, make_session_factory
from fermi_extension.errors import InvalidInput
from fermi_extension.usage.service import UsageService, to_csv

T0 = dt.datetime(2026, 11, 30, 22, 0)


@pytest.fixture
def service():
    session_factory = make_session_factory("sqlite://")
    with session_factory() as session:
        for user, kind, start, hours, gpus, price in (
            ("alice", "job", T0, 1.5, 0, 0.05),
            ("alice", "job", T0 + dt.timedelta(hours=3), 0.5, 0, 0.05),  # December
            ("alice", "replica", T0, 2, 1, 2.5),
            ("bob", "server", T0, 10, 0, 0.2),
        ):
            seconds = hours * 3600
            session.add(UsageRecord(user=user, kind=kind, ref="x", profile=f"p{gpus}", gpus=gpus,
                                    started_at=start, ended_at=start + dt.timedelta(hours=hours),
                                    seconds=seconds, price_per_hour=price, cost=hours * price))
        audit(session, Caller("alice"), "submit", "job", "j1")
        audit(session, Caller("bob"), "deploy", "deployment", "d1")
        session.commit()
    return UsageService(session_factory)


def test_costs_add_up_per_user_kind_and_month(service):
    report = service.report(Caller("admin", admin=True))
    by_key = {(r.user, r.kind, r.month): r for r in report.rows}
    assert by_key[("alice", "job", "2026-11")].cost == pytest.approx(0.075)
    assert by_key[("alice", "job", "2026-12")].cost == pytest.approx(0.025)
    assert by_key[("alice", "replica", "2026-11")].gpu_seconds == 7200
    assert by_key[("alice", "replica", "2026-11")].cost == pytest.approx(5.0)
    assert report.total_cost == pytest.approx(0.075 + 0.025 + 5.0 + 2.0)
    november = service.report(Caller("admin", admin=True), month="2026-11", user="alice")
    assert {r.kind for r in november.rows} == {"job", "replica"}


def test_users_see_only_their_own_usage_and_actions(service):
    assert {r.user for r in service.report(Caller("bob")).rows} == {"bob"}
    assert {r.user for r in service.report(Caller("bob"), user="alice").rows} == {"bob"}
    assert [e.actor for e in service.audit(Caller("alice")).events] == ["alice"]
    everyone = service.audit(Caller("admin", admin=True))
    assert {e.actor for e in everyone.events} == {"alice", "bob"}
    assert [e.target_id for e in service.audit(Caller("admin", admin=True), actor="bob").events] == ["d1"]


def test_bad_filters_say_what_to_fix(service):
    with pytest.raises(InvalidInput, match="YYYY-MM"):
        service.report(Caller("alice"), month="November")
    with pytest.raises(InvalidInput, match="job, replica, server"):
        service.report(Caller("alice"), kind="gpu")


def test_csv_export_has_a_header_and_a_line_per_row(service):
    text = to_csv(service.report(Caller("admin", admin=True)).rows)
    lines = text.strip().splitlines()
    assert lines[0].startswith("user,kind,month,profile,seconds")
    assert len(lines) == 1 + 4
