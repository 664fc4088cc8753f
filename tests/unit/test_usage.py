"""Usage reports: arithmetic per user, kind and month (a record across a month boundary is split
between the months), totals per user, group and month, the cost preview, scoping, CSV, and the
audit log's filters."""

import datetime as dt

import pytest

from fermi_extension.caller import Caller, audit
from fermi_extension.db import UsageRecord, make_session_factory
from fermi_extension.catalog.store import load_catalog_file
from fermi_extension.errors import InvalidInput, NotFound, http_status
from fermi_extension.paths import shipped
from fermi_extension.monitoring.hub_view import view_from_users
from fermi_extension.monitoring.overview import build
from fermi_extension.monitoring.traffic import Sample
from fermi_extension.usage.service import UsageService, cents, month_slices, preview, to_csv
from fermi_extension.usage.waste import DEPLOYMENT_WINDOW_SECONDS, analyse
from tests.mocking import T0 as NOW
from tests.unit.test_alerts import Platform

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
    # bob's 10 h server from 22:00 on 30 November: 2 h in November, 8 h in December
    assert by_key[("bob", "server", "2026-11")].cost == pytest.approx(0.4)
    assert by_key[("bob", "server", "2026-12")].seconds == 8 * 3600
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
    assert len(lines) == 1 + 5  # bob's server is on two lines, one per month


def test_month_slices_add_up_and_split_at_midnight_on_the_first():
    start = dt.datetime(2026, 12, 31, 23, 0)
    assert month_slices(start, start + dt.timedelta(hours=4)) == [("2026-12", 0.25), ("2027-01", 0.75)]
    assert month_slices(start, start) == [("2026-12", 1.0)]
    long = month_slices(dt.datetime(2026, 1, 15), dt.datetime(2026, 4, 15))
    assert [m for m, _ in long] == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert sum(share for _, share in long) == pytest.approx(1.0)


def test_totals_per_user_group_and_month(service):
    admin = Caller("admin", admin=True)
    groups = {"alice": ["ml", "vision"], "bob": ["ml"]}
    by_group = {(r.key, r.month): r for r in service.totals(admin, by="group", groups=groups).rows}
    assert by_group[("ml", "2026-11")].users == 2
    assert by_group[("ml", "2026-11")].cost == pytest.approx(0.075 + 5.0 + 0.4)
    assert by_group[("vision", "2026-11")].cost == pytest.approx(0.075 + 5.0)
    assert by_group[("ml", "2026-12")].cost_rounded == cents(0.025 + 1.6)
    # a user in two groups counts in both; the report's total counts each record once
    report = service.totals(admin, by="group", groups=groups)
    assert report.total_cost == pytest.approx(7.1)
    by_month = {r.key: r.cost_rounded for r in service.totals(admin, by="month").rows}
    assert by_month == {"2026-11": 5.48, "2026-12": 1.63}
    assert {r.key for r in service.totals(admin, by="user", month="2026-12").rows} == {"alice", "bob"}
    # users: their own usage, under their own groups, whatever they pass
    mine = service.totals(Caller("bob", groups=("ml",)), by="group", groups={"bob": ["other"]})
    assert {r.key for r in mine.rows} == {"ml"} and mine.total_cost == pytest.approx(2.0)
    alone = service.totals(Caller("alice"), by="group")
    assert {r.key for r in alone.rows} == {"(no group)"}
    with pytest.raises(InvalidInput, match="user, group, month"):
        service.totals(admin, by="team")
    assert to_csv(report.rows).startswith("key,month,users,seconds")


def test_cost_preview_is_price_times_hours_times_replicas():
    catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
    alice = Caller("alice")
    gpu = preview(catalog, alice, "gpu-a100-1", "3", "2")
    assert (gpu.price_per_hour, gpu.gpus, gpu.cost, gpu.gpu_hours) == (2.5, 1, 15.0, 6.0)
    assert gpu.formula == "2.5/h × 3 h × 2 replicas = 15.00"
    assert preview(catalog, alice, "cpu-small", None, None).cost == 0.05
    assert preview(catalog, alice, "cpu-small", "0.1", "1").cost == 0.01  # 0.005 rounds half up
    for hours, replicas, words in (("-1", "1", "more than 0"), ("abc", "1", "a number"),
                                   ("nan", "1", "more than 0"), ("1e9", "1", "at most"),
                                   ("1", "1.5", "whole number"), ("1", "0", "more than 0")):
        with pytest.raises(InvalidInput, match=words):
            preview(catalog, alice, "cpu-small", hours, replicas)
    with pytest.raises(InvalidInput, match="cpu-small"):
        preview(catalog, alice, None, "1", "1")
    with pytest.raises(NotFound, match="choose one of") as missing:
        preview(catalog, alice, "tpu", "1", "1")
    assert http_status(missing.value) == 404


# -- cost analysis (waste) and the dashboard's cost figures -----------------------------------------

def hub_with_servers():
    return view_from_users([
        {"name": "ann", "groups": ["ml"], "servers": {
            "": {"started": "2026-05-04T06:00:00Z", "last_activity": "2026-05-04T09:00:00Z",
                 "url": "/user/ann/", "user_options": {"profile": "gpu-a100-1"}},
            "busy": {"started": "2026-05-04T06:00:00Z", "last_activity": "2026-05-04T11:55:00Z",
                     "url": "/user/ann/busy/", "user_options": {"profile": "gpu-a100-1"}}}},
        {"name": "bo", "groups": [], "servers": {
            "": {"started": "2026-05-04T07:00:00Z", "last_activity": "2026-05-04T07:30:00Z",
                 "url": "/user/bo/", "user_options": {"profile": "gpu-a100-1"}}}},
    ])


def test_idle_gpu_dev_environments_are_waste_with_their_cost(clock):
    platform = Platform()
    platform.hub = hub_with_servers()
    snapshot = platform.snapshot()
    mine = analyse(snapshot, Caller("ann"))
    [item] = mine.items  # the busy server is not waste, bo's is not ann's
    assert (item.kind, item.target, item.gpus, item.idle_seconds) == (
        "idle-dev-environment", "ann/", 1, 3 * 3600)
    assert item.cost_at_stake == pytest.approx(3 * 2.5) and item.cost_per_day == 60.0
    assert "Stop" in item.action and item.action_zh
    everyone = analyse(snapshot, Caller("root", admin=True))
    assert sorted(i.user for i in everyone.items) == ["ann", "bo"]
    assert everyone.total_cost_per_day == 120.0
    assert analyse(snapshot, Caller("cy")).items == []


def test_a_deployment_far_below_its_target_is_waste(clock):
    platform = Platform()
    platform.deployment("wine", replicas=3, target=5)  # min 3 replicas, 0.20/h each
    platform.deployment("busy", replicas=1, target=5)
    history = platform.monitor.history
    for minute in range(0, 61, 5):  # an hour of samples: wine ~0.3 in flight, busy ~4
        at = NOW - dt.timedelta(minutes=60 - minute)
        history.record("wine", Sample(at, 10 * minute, 0, 0.3, 3))
        history.record("busy", Sample(at, 100 * minute, 0, 4.0, 1))
    report = analyse(platform.snapshot(), Caller("ann"))
    [item] = report.items
    assert item.kind == "over-provisioned-deployment" and item.target == "wine"
    assert item.utilisation == pytest.approx(0.3 / 15)
    assert item.needed_replicas == 1 and item.replicas == 3
    assert item.cost_per_day == pytest.approx(24 * 0.2 * 2)  # two replicas too many
    assert item.cost_at_stake == pytest.approx(3 * 0.2 * (1 - 0.02))  # the hour, unused share
    assert "--min 1" in item.action
    assert report.deployment_window_seconds == DEPLOYMENT_WINDOW_SECONDS
    # a service younger than half the window is not judged yet, and says so
    young = Platform()
    young.deployment("new", replicas=2)
    young.monitor.history.record("new", Sample(NOW - dt.timedelta(minutes=5), 0, 0, 0, 2))
    fresh = analyse(young.snapshot(), Caller("ann"))
    assert fresh.items == [] and "new" in fresh.notes[0]


def test_the_dashboard_cost_is_billed_plus_running_this_month(clock):
    platform = Platform()
    platform.hub = hub_with_servers()
    with platform.db() as session:
        for user, start, hours, price in (("ann", dt.datetime(2026, 4, 30, 23), 2, 1.0),
                                          ("ann", dt.datetime(2026, 5, 2, 9), 1, 0.2),
                                          ("bo", dt.datetime(2026, 5, 2, 9), 1, 0.2)):
            session.add(UsageRecord(user=user, kind="job", ref="j", profile="cpu-small", gpus=0,
                                    started_at=start, ended_at=start + dt.timedelta(hours=hours),
                                    seconds=hours * 3600, price_per_hour=price, cost=hours * price))
        session.commit()
    platform.job("running", started=NOW - dt.timedelta(hours=2))  # 0.05/h
    usage = UsageService(platform.db)
    board = build(platform.snapshot(), Caller("ann"), usage, "/services/fermi/")
    assert board.cost.month == "2026-05"
    assert board.cost.billed == pytest.approx(1.0 + 0.2)  # May's hour of the run across midnight
    # running: the job (2 h × 0.05) and two GPU servers since 06:00 (6 h × 2.50 each)
    assert board.cost.accruing == pytest.approx(0.1 + 2 * 15.0)
    assert board.cost.total_rounded == 31.30
    assert [e.name for e in board.environments.items] == ["", "busy"]
    assert board.environments.source == "hub" and board.admin_view is None
    assert board.jobs.counts["running"] == 1
    gpu_pool = next(p for p in board.pools if p.slug == "gpu-a100")
    assert (gpu_pool.gpus, gpu_pool.gpus_allocated, gpu_pool.gpus_mine) == (8, 3, 2)
    admin = build(platform.snapshot(), Caller("root", admin=True), usage, "/services/fermi/")
    lines = {(u.user, u.kind): u for u in admin.admin_view.usage}
    assert lines[("bo", "server")].gpu_hours == pytest.approx(5.0)
    assert lines[("bo", "server")].audit == "/services/fermi/api/audit?actor=bo"
    assert admin.admin_view.usage_total == pytest.approx(1.2 + 0.2 + 0.1 + 30 + 12.5)


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    """OWASP's CSV-injection advice, for every CSV the platform writes (issue 12, hole 5)."""
    from pydantic import BaseModel

    class Row(BaseModel):
        who: str
        change: dict
        cost: float

    rows = [Row(who=w, change={"a": 1}, cost=-1.5)
            for w in ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "alice")]
    lines = to_csv(rows).splitlines()[1:]
    assert [line.split(",")[0] for line in lines[:4]] == ["'=1+2", "'+1", "'-1", "'@SUM(A1)"]
    assert lines[-1].startswith('alice,"{""a"": 1}",-1.5')
