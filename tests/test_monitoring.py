"""Monitoring, alerts and billing additions on a running platform: /metrics parsed with
Prometheus' own parser, the alerts API and page firing for a scripted failing state (failing jobs
in a pool of their own), the cost preview, totals per group, and the cost analysis — each
refusing bad input with a 4xx that says what to fix, users seeing only their own."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from fermi_extension.monitoring.rules import rule

pytestmark = pytest.mark.hub


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def metrics(admin) -> dict:
    response = admin.http.get("/services/fermi/metrics")
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def test_metrics_cover_queues_durations_gpus_and_deployments(platform, admin, alice, tiny_notebook):
    assert alice.http.get("/services/fermi/metrics").status_code == 403
    job = alice.wait(alice.submit(tiny_notebook())["id"])
    families = metrics(admin)
    for name in ("fermi_jobs", "fermi_queue_depth", "fermi_queue_oldest_wait_seconds",
                 "fermi_pool_running_jobs", "fermi_pool_max_running_jobs",
                 "fermi_job_duration_seconds", "fermi_gpus_capacity", "fermi_gpus_allocated",
                 "fermi_deployment_replicas", "fermi_deployment_requests"):
        assert name in families, name
    durations = families["fermi_job_duration_seconds"]
    assert durations.type == "histogram"
    counts = [s for s in durations.samples if s.name.endswith("_count")
              and s.labels == {"pool": "cpu", "outcome": job["status"]}]
    assert counts and counts[0].value >= 1
    capacity = {s.labels["pool"]: s.value for s in families["fermi_gpus_capacity"].samples}
    assert capacity["gpu-a100"] == 8


def test_alerts_fire_for_failing_jobs(platform, admin, alice, tiny_notebook):
    # a pool and a profile of this test's own, so the platform's other jobs do not dilute it
    pool, profile = unique("alerting"), unique("alerting-cpu")
    assert admin.api("POST", "catalog/pools", json={
        "slug": pool, "name": "Alert test pool", "max_running_jobs": 4}).status_code == 201
    assert admin.api("POST", "catalog/profiles", json={
        "slug": profile, "name": "Alert test", "cpu": 1, "memory": "1Gi", "pool": pool,
        "price_per_hour": 0.01}).status_code == 201
    failing = rule("job-failure-rate")
    try:
        notebook = tiny_notebook("raise RuntimeError('scripted failure')")
        ids = [alice.submit(notebook, profile=profile)["id"] for _ in range(failing.min_count)]
        assert [alice.wait(i)["status"] for i in ids] == ["failed"] * failing.min_count

        assert alice.api("GET", "alerts").status_code == 403
        assert "admins" in alice.api("GET", "alerts").json()["message"]
        report = admin.api("GET", "alerts").json()
        rules = {r["slug"]: r for r in report["rules"]}
        assert set(rules) == {"job-failure-rate", "deployment-error-rate", "gpu-idle",
                              "queue-stuck", "deployment-failing"}
        mine = [i for i in rules["job-failure-rate"]["instances"] if i["labels"] == {"pool": pool}]
        assert mine and mine[0]["state"] == "firing", rules["job-failure-rate"]
        assert mine[0]["value"] == 1.0 and mine[0]["count"] == failing.min_count
        assert rules["job-failure-rate"]["state"] == "firing" and report["firing"] >= 1
        assert rules["job-failure-rate"]["threshold"] == failing.threshold

        page = admin.http.get("/services/fermi/alerts")
        assert page.status_code == 200
        assert '<section id="job-failure-rate" data-state="firing">' in page.text
        assert f"pool={pool}" in page.text and "Monitoring and alerts" in page.text
        assert "监控告警" not in page.text  # one language at a time: English by default
        refused = alice.http.get("/services/fermi/alerts")
        assert refused.status_code == 403 and "admins only" in refused.text
        assert re.search(r"\d+ alerts? firing", admin.http.get("/services/fermi/").text)
    finally:
        admin.api("DELETE", f"catalog/profiles/{profile}", headers={"If-Match": '"1"'})


def test_cost_preview_before_spawning_submitting_or_deploying(platform, alice):
    preview = alice.api("GET", "usage/preview",
                        params={"profile": "gpu-a100-1", "hours": "3", "replicas": "2"})
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["cost"], body["price_per_hour"], body["gpus"], body["gpu_hours"]) == (15.0, 2.5, 1, 6)
    assert alice.api("GET", "usage/preview", params={"profile": "cpu-small"}).json()["cost"] == 0.05
    for params, status, words in (
            ({}, 400, "profile"), ({"profile": "tpu-9"}, 404, "cpu-small"),
            ({"profile": "cpu-small", "hours": "-2"}, 400, "more than 0"),
            ({"profile": "cpu-small", "hours": "soon"}, 400, "a number"),
            ({"profile": "cpu-small", "replicas": "0"}, 400, "replicas"),
            ({"profile": "cpu-small", "replicas": "2.5"}, 400, "whole number")):
        response = alice.api("GET", "usage/preview", params=params)
        assert response.status_code == status, (params, response.text)
        assert words in response.json()["message"], response.json()


def test_totals_per_group_and_month(platform, admin, tiny_notebook):
    group = unique("team")
    member = platform.user(unique("carol"), groups=[group])
    member.wait(member.submit(tiny_notebook())["id"])
    month = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")
    own = member.api("GET", "usage/totals", params={"by": "group"}).json()
    assert {r["key"] for r in own["rows"]} == {group}
    assert own["total_cost"] > 0
    everyone = admin.api("GET", "usage/totals", params={"by": "group", "month": month}).json()
    rows = {r["key"]: r for r in everyone["rows"]}
    assert rows[group]["users"] == 1
    assert rows[group]["cost"] == pytest.approx(own["total_cost"], rel=1e-9)
    per_user = admin.api("GET", "usage/totals", params={"by": "user"}).json()
    assert member.name in {r["key"] for r in per_user["rows"]}
    csv_text = admin.api("GET", "usage/totals", params={"by": "group", "format": "csv"}).text
    assert csv_text.startswith("key,month,users,seconds") and group in csv_text
    for params, words in (({"by": "team"}, "user, group"), ({"month": "May"}, "YYYY-MM"),
                          ({"format": "xml"}, "json or csv")):
        response = admin.api("GET", "usage/totals", params=params)
        assert response.status_code == 400 and words in response.json()["message"], response.text


def test_cost_analysis_points_at_gpus_held_for_hours(platform, admin, alice, bob):
    engine = create_engine(f"sqlite:///{platform.data / 'fermi.sqlite'}")
    holder = f"server:{alice.name}/"
    held_since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=5)
    with engine.begin() as connection:  # as the spawner leaves it for a GPU dev server
        connection.execute(text("INSERT INTO gpu_assignments (device, holder, pid, pid_started, "
                                "assigned_at) VALUES (97, :h, NULL, NULL, :at)"),
                           {"h": holder, "at": held_since})
    try:
        deadline = time.monotonic() + 20  # the hub view is cached for a few seconds
        while True:
            report = alice.api("GET", "usage/waste").json()
            items = [i for i in report["items"] if i["user"] == alice.name]
            if items or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert items, report
        [item] = items
        assert item["kind"] in ("gpu-held", "gpu-orphan") and item["gpus"] == 1
        assert item["cost_per_day"] > 0 and item["cost_at_stake"] > 0 and item["action"]
        assert report["idle_threshold_seconds"] == rule("gpu-idle").threshold
        assert all(i["user"] == bob.name for i in bob.api("GET", "usage/waste").json()["items"])
        assert alice.name in {i["user"] for i in admin.api("GET", "usage/waste").json()["items"]}
        csv_text = alice.api("GET", "usage/waste", params={"format": "csv"}).text
        assert csv_text.startswith("kind,user,target") and alice.name in csv_text
        assert alice.api("GET", "usage/waste", params={"format": "pdf"}).status_code == 400
    finally:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM gpu_assignments WHERE device = 97"))
        engine.dispose()
