"""Monitoring and alerts: the rules table is the one source of the Prometheus rules file (checked
by promtool) and of the embedded evaluator, and both fire on the same scripted states; the
metrics endpoint parses with Prometheus' own parser and has every metric the rules and the
Grafana dashboard use.

``promtool`` comes from Debian's ``prometheus`` package (``apt-get install -y prometheus``);
the tests that run it are skipped, saying so, only where it is missing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fermi_extension import db
from fermi_extension.catalog.store import CatalogStore, load_catalog_file
from fermi_extension.db import Deployment, GpuAssignment, Job, Replica, make_session_factory
from fermi_extension.monitoring.grafana import dashboard_json
from fermi_extension.monitoring.hub_view import HubServer, HubView, view_from_users
from fermi_extension.monitoring.rules import RULES, Evaluator, rule, rules_yaml
from fermi_extension.monitoring.state import Monitor
from fermi_extension.monitoring.traffic import Sample, increase
from fermi_extension.paths import shipped
from fermi_extension.control_plane.alerts import render as render_alerts
from fermi_extension.control_plane.metrics import render as render_metrics
from tests.mocking import T0

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "hub_config" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: `apt-get install -y prometheus` (Debian) to "
                             "check the alert rules with Prometheus' own validator")


class Platform:
    """A database, a catalogue and the traffic counters the router would report."""

    def __init__(self):
        self.db = make_session_factory("sqlite://")
        self.catalog = CatalogStore(self.db)
        self.catalog.seed_if_empty(load_catalog_file(shipped("hub_config") / "catalog.yaml"))
        self.deployments = SimpleNamespace(traffic={})
        self.monitor = Monitor(self.db, self.catalog, self.deployments)
        self.hub = HubView()

    def job(self, status: str, *, pool="cpu", owner="ann", created=None, started=None,
            finished=None, gpu=0, profile="cpu-small"):
        with self.db() as session:
            job = Job(name="train", owner=owner, status=status, image="python-local",
                      profile=profile, pool=pool,
                      runtime={"gpu": gpu, "price_per_hour": 0.05, "pool": pool},
                      notebook_name="t.ipynb", created_at=created or db.utcnow(),
                      started_at=started, finished_at=finished)
            session.add(job)
            session.commit()
            return job.id

    def deployment(self, name="wine", status="ready", replicas=1, target=5.0, owner="ann"):
        with self.db() as session:
            session.add(Deployment(
                name=name, owner=owner, model="wine", engine="sklearn", profile="cpu-large",
                runtime={"gpu": 0, "pool": "cpu", "price_per_hour": 0.2}, min_replicas=replicas,
                max_replicas=4, target_concurrency=target, desired_replicas=replicas,
                status=status, stable_revision="r1", key_hash="x",
                reason="replicas keep exiting" if status == "failed" else None))
            for i in range(replicas):
                session.add(Replica(id=f"{name}-r1-{i}", deployment=name, revision="r1",
                                    state="ready", started_at=db.utcnow()))
            session.commit()

    def snapshot(self):
        return self.monitor.load(self.hub)


@pytest.fixture
def platform(clock):
    return Platform()


def states(report) -> dict[str, str]:
    return {r.slug: r.state for r in report.rules}


# -- one table, one file --------------------------------------------------------------------------


def test_the_rules_file_is_generated_from_the_rules_table():
    assert ALERTS.read_text() == rules_yaml(), (
        "hub_config/prometheus/alerts.yml differs from fermi_extension/monitoring/rules.py: "
        "python -m fermi_extension.monitoring.rules > hub_config/prometheus/alerts.yml")
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    by_alert = {r["alert"]: r for r in groups[0]["rules"]}
    for r in RULES:  # thresholds in the file are the table's
        assert by_alert[r.alert]["annotations"]["threshold"] == f"{r.threshold:g}"
        assert f"{r.threshold:g}" in by_alert[r.alert]["expr"]
        assert by_alert[r.alert]["labels"]["fermi_rule"] == r.slug
    grafana = ROOT / "hub_config" / "grafana" / "fermi.json"
    assert grafana.read_text() == dashboard_json(), (
        "python -m fermi_extension.monitoring.grafana > hub_config/grafana/fermi.json")


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path):
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in checked.stdout
    config = yaml.safe_load((ALERTS.parent / "prometheus.yml").read_text())
    (tmp_path / "token").write_text("secret\n")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(tmp_path / "token")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- Prometheus and the embedded evaluator fire on the same states ----------------------------------


def promtool_fires(tmp_path, series: dict[str, str], alert: str, at_minutes: int) -> list[dict]:
    """The labels of the instances of ``alert`` that Prometheus' rule engine fires at
    ``at_minutes`` given ``series`` (one sample a minute), through ``promtool test rules``."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    test = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": f"{at_minutes}m", "alertname": alert, "exp_alerts": []}],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "test.yml")],
                            capture_output=True, text=True)
    if result.returncode == 0:
        return []
    output = result.stdout + result.stderr
    assert "got:" in output, output
    got = output.split("got:", 1)[1]
    return [dict(re.findall(r'(\w+)="([^"]*)"', labels))
            for labels in re.findall(r"Labels:\{([^}]*)\}", got)]


@needs_promtool
def test_job_failure_rate_fires_in_both(tmp_path, platform, clock):
    minute = dt.timedelta(minutes=1)
    for i in range(3):
        platform.job("failed", created=T0 - 50 * minute, started=T0 - 50 * minute,
                     finished=T0 - (40 - i) * minute)
    platform.job("succeeded", created=T0 - 50 * minute, started=T0 - 50 * minute,
                 finished=T0 - 30 * minute)
    platform.job("cancelled", finished=T0 - 30 * minute)  # a choice, not a failure
    platform.job("succeeded", pool="gpu-a100", finished=T0 - 5 * minute)
    report = platform.monitor.evaluator.evaluate(platform.snapshot())
    failing = next(r for r in report.rules if r.slug == "job-failure-rate")
    assert failing.state == "firing"
    assert [(i.labels, i.value, i.count, i.state) for i in failing.instances] == [
        ({"pool": "cpu"}, 0.75, 4, "firing"), ({"pool": "gpu-a100"}, 0.0, 1, "ok")]
    # the same counts as Prometheus sees them: counters of finished jobs per outcome
    fired = promtool_fires(tmp_path, {
        'fermi_job_duration_seconds_count{pool="cpu",outcome="failed"}': "0x10 3x50",
        'fermi_job_duration_seconds_count{pool="cpu",outcome="succeeded"}': "0x20 1x40",
        'fermi_job_duration_seconds_count{pool="gpu-a100",outcome="succeeded"}': "0x55 1x5",
    }, "FermiJobFailureRateHigh", 60)
    assert [f["pool"] for f in fired] == ["cpu"]

    # 1 failure out of 4 is exactly the threshold: neither fires
    quiet = Platform()
    for status in ("failed", "succeeded", "succeeded", "succeeded"):
        quiet.job(status, started=T0 - 20 * minute, finished=T0 - 10 * minute)
    assert states(quiet.monitor.evaluator.evaluate(quiet.snapshot()))["job-failure-rate"] == "ok"
    assert promtool_fires(tmp_path, {
        'fermi_job_duration_seconds_count{pool="cpu",outcome="failed"}': "0x10 1x50",
        'fermi_job_duration_seconds_count{pool="cpu",outcome="succeeded"}': "0x10 3x50",
    }, "FermiJobFailureRateHigh", 60) == []


@needs_promtool
def test_a_stuck_queue_is_pending_then_fires_in_both(tmp_path, platform, clock):
    stuck = rule("queue-stuck")
    platform.job("queued", created=T0 - dt.timedelta(seconds=stuck.threshold + 60))
    platform.job("queued", created=T0 - dt.timedelta(minutes=1))
    evaluator = Evaluator()
    first = evaluator.evaluate(platform.snapshot())
    assert states(first)["queue-stuck"] == "pending"  # true, not yet for `for`
    clock.advance(seconds=stuck.for_seconds)
    later = evaluator.evaluate(platform.snapshot())
    queue = next(r for r in later.rules if r.slug == "queue-stuck")
    assert queue.state == "firing" and queue.instances[0].count == 2
    assert queue.instances[0].active_since == T0
    # Prometheus: the oldest wait grows a minute a minute; over 1800 s from minute 31
    series = {'fermi_queue_oldest_wait_seconds{pool="cpu"}': "0+60x60"}
    assert promtool_fires(tmp_path, series, "FermiJobQueueStuck", 33) == []  # pending
    assert [f["pool"] for f in promtool_fires(tmp_path, series, "FermiJobQueueStuck", 37)] == ["cpu"]
    # the queue moves: resolved, and a new stall starts the `for` clock again
    with platform.db() as session:
        for job in session.query(Job):
            job.status = "running"
        session.commit()
    assert states(evaluator.evaluate(platform.snapshot()))["queue-stuck"] == "ok"
    assert evaluator.since == {}


@needs_promtool
def test_gpus_held_idle_fire_in_both(tmp_path, platform, clock):
    idle = rule("gpu-idle")
    platform.hub = view_from_users([{
        "name": "ann", "groups": ["ml"],
        "servers": {"": {"name": "", "started": "2026-05-04T06:00:00Z",
                         "last_activity": "2026-05-04T09:00:00.000Z", "ready": True,
                         "url": "/user/ann/", "user_options": {"profile": "gpu-a100-1"}},
                    "small": {"name": "small", "started": "2026-05-04T11:00:00Z",
                              "last_activity": "2026-05-04T11:59:00Z",
                              "user_options": {"profile": "cpu-small"}}}},
    ])
    evaluator = Evaluator()
    evaluator.evaluate(platform.snapshot())
    clock.advance(seconds=idle.for_seconds)
    gpu = next(r for r in evaluator.evaluate(platform.snapshot()).rules if r.slug == "gpu-idle")
    assert gpu.state == "firing"
    [instance] = gpu.instances  # the CPU server holds no GPU
    assert instance.labels == {"pool": "gpu-a100", "holder": "server:ann/", "user": "ann"}
    assert instance.value == 3 * 3600 + 600
    series = {'fermi_gpu_holder_idle_seconds{pool="gpu-a100",holder="server:ann/",user="ann",'
              'kind="server",activity="hub"}': "10800+60x30"}
    fired = promtool_fires(tmp_path, series, "FermiGpuHeldIdle", 15)
    assert [(f["holder"], f["user"]) for f in fired] == [("server:ann/", "ann")]


@needs_promtool
def test_deployment_error_rate_fires_in_both(tmp_path, platform, clock):
    errors = rule("deployment-error-rate")
    platform.deployment("wine")
    platform.deployment("quiet", owner="bob")
    evaluator = Evaluator()
    report = None
    for minute in range(0, 11):  # 10 requests and 1 error a minute; "quiet" gets 1 request
        platform.deployments.traffic = {
            "wine": {"requests": 10 * minute, "errors": minute, "in_flight": 1, "replicas": {}},
            "quiet": {"requests": minute, "errors": minute, "in_flight": 0, "replicas": {}}}
        report = evaluator.evaluate(platform.snapshot())
        if minute == 5:
            assert states(report)["deployment-error-rate"] == "pending"
        clock.advance(minutes=1)
    rate = next(r for r in report.rules if r.slug == "deployment-error-rate")
    assert rate.state == "firing"
    by_name = {i.labels["deployment"]: i for i in rate.instances}
    assert by_name["wine"].value == pytest.approx(0.1) and by_name["wine"].state == "firing"
    assert by_name["quiet"].state == "ok"  # 100% errors, but fewer than min_count requests
    assert by_name["quiet"].count < errors.min_count
    fired = promtool_fires(tmp_path, {
        'fermi_deployment_requests_total{deployment="wine"}': "0+10x20",
        'fermi_deployment_errors_total{deployment="wine"}': "0+1x20",
        'fermi_deployment_requests_total{deployment="quiet"}': "0+1x20",
        'fermi_deployment_errors_total{deployment="quiet"}': "0+1x20",
    }, "FermiDeploymentErrorRateHigh", 12)
    assert [f["deployment"] for f in fired] == ["wine"]


def test_a_scripted_failing_state_shows_on_the_alerts_page(platform, clock):
    platform.deployment("wine", status="failed", replicas=0)
    for _ in range(4):
        platform.job("failed", started=T0 - dt.timedelta(minutes=3),
                     finished=T0 - dt.timedelta(minutes=1))
    evaluator = platform.monitor.evaluator
    evaluator.evaluate(platform.snapshot())
    clock.advance(minutes=5)
    report = evaluator.evaluate(platform.snapshot())
    assert states(report) == {"job-failure-rate": "firing", "deployment-error-rate": "ok",
                              "gpu-idle": "ok", "queue-stuck": "ok",
                              "deployment-failing": "firing"}
    assert report.firing == 2
    page = render_alerts(report, "/services/fermi/")
    assert '<section id="job-failure-rate" data-state="firing">' in page
    assert '<section id="deployment-failing" data-state="firing">' in page
    assert '<section id="queue-stuck" data-state="ok">' in page
    assert "100.0%" in page and "Training jobs fail often" in page
    assert "训练任务失败率高" not in page  # one language at a time
    chinese = render_alerts(report, "/services/fermi/", "zh_CN")
    assert "训练任务失败率高" in chinese and "Training jobs fail often" not in chinese


# -- the metrics endpoint -------------------------------------------------------------------------


def test_metrics_parse_and_cover_what_rules_and_dashboard_use(platform, clock):
    minute = dt.timedelta(minutes=1)
    platform.job("queued", created=T0 - 10 * minute)
    platform.job("running", pool="gpu-a100", gpu=1, profile="gpu-a100-1", started=T0 - minute)
    platform.job("succeeded", started=T0 - 20 * minute, finished=T0 - 18 * minute)
    platform.job("failed", started=T0 - 20 * minute, finished=T0 - 19 * minute)
    platform.deployment("wine", replicas=2)
    with platform.db() as session:  # a GPU no running job explains
        session.add(GpuAssignment(device=3, holder="job:gone", assigned_at=T0 - 180 * minute))
        session.commit()
    platform.deployments.traffic = {"wine": {
        "requests": 120, "errors": 3, "in_flight": 2, "latency_ms": {"p50": 4.5, "p99": 20.0,
                                                                     "count": 7},
        "replicas": {"wine-r1-0": {"requests": 60, "state": "ready"}}}}
    platform.hub = view_from_users([{"name": "bo", "servers": {"": {
        "started": "2026-05-04T11:00:00Z", "user_options": {"profile": "cpu-small"}}}}])
    text = render_metrics(platform.snapshot()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name, sample=None, **labels):
        return next(s.value for s in families[name].samples
                    if s.name == (sample or name) and all(s.labels.get(k) == v
                                                          for k, v in labels.items()))

    assert value("fermi_queue_depth", pool="cpu") == 1
    assert value("fermi_queue_oldest_wait_seconds", pool="cpu") == 600
    assert value("fermi_pool_max_running_jobs", pool="gpu-a100") == 8
    assert value("fermi_gpus_capacity", pool="gpu-a100") == 8
    assert value("fermi_gpus_allocated", pool="gpu-a100", kind="job") == 1
    assert value("fermi_gpus_allocated", pool="gpu-a100", kind="orphan") == 1
    assert value("fermi_gpu_holder_idle_seconds", holder="job:gone") == 3 * 3600
    assert families["fermi_job_duration_seconds"].type == "histogram"
    assert value("fermi_job_duration_seconds", "fermi_job_duration_seconds_count", pool="cpu",
                 outcome="succeeded") == 1
    assert value("fermi_job_duration_seconds", "fermi_job_duration_seconds_sum", pool="cpu",
                 outcome="succeeded") == 120
    assert value("fermi_job_duration_seconds", "fermi_job_duration_seconds_bucket", pool="cpu",
                 outcome="failed", le="60.0") == 1
    assert value("fermi_dev_servers", profile="cpu-small", source="hub") == 1
    assert value("fermi_deployment_replicas", deployment="wine", state="ready") == 2
    assert value("fermi_deployment_status", deployment="wine", status="ready") == 1
    assert value("fermi_deployment_requests", "fermi_deployment_requests_total",
                 deployment="wine") == 120
    assert value("fermi_deployment_errors", "fermi_deployment_errors_total", deployment="wine") == 3
    assert value("fermi_deployment_latency_ms", deployment="wine", quantile="p99") == 20
    assert not [s for s in families["fermi_deployment_latency_ms"].samples
                if s.labels["quantile"] == "count"]

    exposed = {s.name for f in families.values() for s in f.samples}
    grafana = json.loads(dashboard_json())
    queries = [r.promql() for r in RULES] + [
        t["expr"] for p in grafana["panels"] for t in p.get("targets", [])]
    used = {name for q in queries for name in re.findall(r"\b(fermi_[a-z_]+)\b(?!\s*[!=~])", q)}
    assert used and used <= exposed, sorted(used - exposed)


def test_the_hub_view_reads_servers_only_with_read_servers():
    with_servers = view_from_users([
        {"name": "ann", "groups": ["ml"], "servers": {
            "": {"started": "2026-05-04T10:00:00.123456Z", "last_activity": None, "ready": True,
                 "user_options": {"profile": "gpu-a100-1"}, "url": "/user/ann/"},
            "old": {"stopped": True}}},
        {"name": "bo", "groups": []},
    ])
    assert with_servers.servers_readable and with_servers.groups == {"ann": ["ml"], "bo": []}
    assert with_servers.servers == [HubServer("ann", "", "gpu-a100-1",
                                              dt.datetime(2026, 5, 4, 10, 0, 0, 123456), None,
                                              "/user/ann/", True)]
    names_only = view_from_users([{"name": "ann", "groups": ["ml"]}])
    assert not names_only.servers_readable and names_only.groups == {"ann": ["ml"]}


def test_without_the_hub_gpu_assignments_stand_for_dev_servers(platform, clock):
    with platform.db() as session:
        session.add(GpuAssignment(device=0, holder="server:ann/", assigned_at=T0 - dt.timedelta(hours=1)))
        session.add(GpuAssignment(device=1, holder="server:ann/", assigned_at=T0 - dt.timedelta(hours=1)))
        session.commit()
    snapshot = platform.snapshot()
    assert snapshot.servers_source == "gpu-assignments" and "read:servers" in snapshot.servers_note
    [server] = snapshot.servers
    assert (server.user, server.name, server.gpus, server.pool) == ("ann", "", 2, "gpu-a100")
    assert server.price_per_hour == 5.0  # 2 GPUs at the cheapest GPU price (an estimate)
    assert snapshot.gpus_allocated("gpu-a100") == {"server": 2}


def test_traffic_increase_handles_counter_restarts():
    assert increase([0, 5, 9, 2, 4]) == 9 + 4
    assert increase([3]) == 0
    sample = Sample(T0, 1, 0, 0, 1)
    assert sample.ready_replicas == 1
