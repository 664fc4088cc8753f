"""The alert rules: ONE table of conditions and thresholds.

Each rule is written once here: its PromQL expression over the metrics of ``/metrics`` (for a
real Prometheus), its threshold, window, ``for`` and minimum count, and the same measurement
computed from a platform snapshot (for the embedded default's alerts page, which has no
Prometheus). ``hub_config/prometheus/alerts.yml`` is generated from this table::

    python -m fermi_extension.monitoring.rules > hub_config/prometheus/alerts.yml

and a test fails when the file and the table differ. The cost analysis reads its idle-GPU
threshold from here too, so "idle" means the same everywhere.

The embedded evaluator keeps ``for`` as Prometheus does: in memory, from the first evaluation
that found the condition true (a restart starts the clock again).
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from typing import Callable

import yaml
from pydantic import BaseModel, Field

from ..i18n import N_, translations
from .state import Snapshot

OUTCOMES = ("succeeded", "failed")  # what a failure rate is out of (a cancellation is a choice)


@dataclass(frozen=True)
class Reading:
    labels: dict[str, str]
    value: float
    count: float | None = None  # events behind a ratio (compared with ``min_count``)


@dataclass(frozen=True)
class Rule:
    slug: str
    alert: str  # the Prometheus alert name
    title: str  # a msgid of the one catalogue (fermi_extension/i18n.py)
    expr: str  # PromQL; {threshold}, {window} and {min_count} are filled in from the fields
    threshold: float
    unit: str  # ratio | seconds | flag
    for_seconds: int
    window_seconds: int | None
    min_count: int
    severity: str
    action: str  # a msgid too
    measure: Callable[[Snapshot, "Rule"], list[Reading]]

    @property
    def title_zh(self) -> str:
        return translations("zh_CN").gettext(self.title)

    @property
    def action_zh(self) -> str:
        return translations("zh_CN").gettext(self.action)

    def promql(self) -> str:
        return self.expr.format(threshold=f"{self.threshold:g}", min_count=self.min_count,
                                window=duration(self.window_seconds or 0))

    def active(self, reading: Reading) -> bool:
        if reading.count is not None and reading.count < self.min_count:
            return False
        return reading.value > self.threshold


def duration(seconds: int) -> str:
    """Prometheus' duration form: 3600 → 1h, 300 → 5m, 0 → 0s."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- the measurements (the snapshot side of each expression) ------------------------------------


def job_failure_rate(s: Snapshot, rule: Rule) -> list[Reading]:
    start = s.now - dt.timedelta(seconds=rule.window_seconds)
    per_pool: dict[str, list[int]] = {}
    for job in s.finished:
        if job.status in OUTCOMES and start < job.finished_at <= s.now:
            counts = per_pool.setdefault(job.pool, [0, 0])
            counts[0] += job.status == "failed"
            counts[1] += 1
    return [Reading({"pool": pool}, failed / total, total)
            for pool, (failed, total) in sorted(per_pool.items())]


def deployment_error_rate(s: Snapshot, rule: Rule) -> list[Reading]:
    out = []
    for d in s.deployments:
        w = s.history.window(d.name, rule.window_seconds, s.now)
        if w.requests > 0:
            out.append(Reading({"deployment": d.name}, w.errors / w.requests, w.requests))
    return out


def gpu_idle(s: Snapshot, rule: Rule) -> list[Reading]:
    return [Reading({"pool": h.pool, "holder": h.holder, "user": h.user}, h.idle_seconds)
            for h in s.holders if h.idle_seconds is not None and h.kind in ("server", "orphan")]


def queue_stuck(s: Snapshot, rule: Rule) -> list[Reading]:
    oldest: dict[str, list] = {}
    for job in s.jobs:
        if job.status == "queued":
            wait = (s.now - job.created_at).total_seconds()
            entry = oldest.setdefault(job.pool, [0.0, 0])
            entry[0] = max(entry[0], wait)
            entry[1] += 1
    return [Reading({"pool": pool}, wait, count) for pool, (wait, count) in sorted(oldest.items())]


def deployment_failing(s: Snapshot, rule: Rule) -> list[Reading]:
    return [Reading({"deployment": d.name}, 1.0 if d.status == "failed" else 0.0)
            for d in s.deployments]


RULES: tuple[Rule, ...] = (
    Rule(
        slug="job-failure-rate", alert="FermiJobFailureRateHigh",
        title=N_("Training jobs fail often"),
        expr=('(sum by (pool) (increase(fermi_job_duration_seconds_count{{outcome="failed"}}[{window}]))'
              ' / sum by (pool) (increase(fermi_job_duration_seconds_count{{outcome=~"succeeded|failed"}}[{window}])))'
              ' > {threshold}'
              ' and on (pool) sum by (pool) (increase(fermi_job_duration_seconds_count{{outcome=~"succeeded|failed"}}[{window}]))'
              ' >= {min_count}'),
        threshold=0.25, unit="ratio", for_seconds=0, window_seconds=3600, min_count=4,
        severity="warning",
        action=N_("Open the failed jobs' logs (dashboard → failing jobs); a common cause is a broken "
               "image or a full pool disk."),
        measure=job_failure_rate,
    ),
    Rule(
        slug="deployment-error-rate", alert="FermiDeploymentErrorRateHigh",
        title=N_("An inference service answers errors"),
        expr=('(sum by (deployment) (increase(fermi_deployment_errors_total[{window}]))'
              ' / sum by (deployment) (increase(fermi_deployment_requests_total[{window}])))'
              ' > {threshold}'
              ' and on (deployment) sum by (deployment) (increase(fermi_deployment_requests_total[{window}]))'
              ' >= {min_count}'),
        threshold=0.05, unit="ratio", for_seconds=300, window_seconds=300, min_count=20,
        severity="critical",
        action=N_("Read the deployment's events and replica logs; roll a canary back if it is new."),
        measure=deployment_error_rate,
    ),
    Rule(
        slug="gpu-idle", alert="FermiGpuHeldIdle",
        title=N_("GPUs held but unused"),
        expr="max by (pool, holder, user) (fermi_gpu_holder_idle_seconds) > {threshold}",
        threshold=7200, unit="seconds", for_seconds=600, window_seconds=None, min_count=0,
        severity="warning",
        action=N_("Ask the user to stop the dev environment (or lower the profile's "
               "idle_cull_minutes); see cost analysis for what it costs."),
        measure=gpu_idle,
    ),
    Rule(
        slug="queue-stuck", alert="FermiJobQueueStuck",
        title=N_("Jobs wait in the queue for long"),
        expr="max by (pool) (fermi_queue_oldest_wait_seconds) > {threshold}",
        threshold=1800, unit="seconds", for_seconds=300, window_seconds=None, min_count=0,
        severity="warning",
        action=N_("Check the pool's running jobs and capacity (max_running_jobs, GPUs); raise the "
               "capacity or cancel stuck jobs."),
        measure=queue_stuck,
    ),
    Rule(
        slug="deployment-failing", alert="FermiDeploymentFailing",
        title=N_("An inference service is failing"),
        expr='max by (deployment) (fermi_deployment_status{{status="failed"}}) > {threshold}',
        threshold=0, unit="flag", for_seconds=300, window_seconds=None, min_count=0,
        severity="critical",
        action=N_("Its replicas keep exiting before they are ready: read the deployment's events."),
        measure=deployment_failing,
    ),
)


def rule(slug: str) -> Rule:
    for r in RULES:
        if r.slug == slug:
            return r
    raise KeyError(slug)


# -- the Prometheus rules file ------------------------------------------------------------------

HEADER = """\
# Fermi alert rules for Prometheus. GENERATED from fermi_extension/monitoring/rules.py (the one
# table of thresholds, also evaluated by the control plane's alerts page): do not edit by hand.
#   python -m fermi_extension.monitoring.rules > hub_config/prometheus/alerts.yml
# Check: promtool check rules hub_config/prometheus/alerts.yml
"""


def prometheus_rules() -> dict:
    rules = []
    for r in RULES:
        value = {"ratio": "{{ $value | humanizePercentage }}",
                 "seconds": "{{ $value | humanizeDuration }}", "flag": "{{ $value }}"}[r.unit]
        where = " ".join("{{ $labels.%s }}" % label
                         for label in ("pool", "deployment", "holder") if label in r.expr)
        rules.append({
            "alert": r.alert,
            "expr": r.promql(),
            "for": duration(r.for_seconds),
            "labels": {"severity": r.severity, "fermi_rule": r.slug},
            "annotations": {
                "summary": f"{r.title} / {r.title_zh}: {where} at {value}",
                "description": f"{r.action} {r.action_zh}",
                "threshold": f"{r.threshold:g}",
            },
        })
    return {"groups": [{"name": "fermi", "rules": rules}]}


def rules_yaml() -> str:
    return HEADER + yaml.safe_dump(prometheus_rules(), sort_keys=False, allow_unicode=True,
                                   width=1000)


# -- the embedded evaluator ---------------------------------------------------------------------


class AlertInstance(BaseModel):
    labels: dict[str, str]
    value: float
    count: float | None = None
    state: str = Field(description="ok | pending (true, not yet for `for`) | firing")
    active_since: dt.datetime | None = None


class RuleStatus(BaseModel):
    slug: str
    alert: str
    title: str
    title_zh: str
    severity: str
    state: str = Field(description="firing if an instance fires, else pending, else ok")
    threshold: float
    unit: str
    window_seconds: int | None
    for_seconds: int
    min_count: int
    expr: str
    action: str
    action_zh: str
    instances: list[AlertInstance]


class AlertsReport(BaseModel):
    generated_at: dt.datetime
    firing: int
    pending: int
    rules: list[RuleStatus]


class Evaluator:
    def __init__(self, rules: tuple[Rule, ...] = RULES):
        self.rules = rules
        self.since: dict[tuple, dt.datetime] = {}

    def evaluate(self, snapshot: Snapshot) -> AlertsReport:
        now = snapshot.now
        out = []
        seen = set()
        for r in self.rules:
            instances = []
            for reading in r.measure(snapshot, r):
                key = (r.slug, tuple(sorted(reading.labels.items())))
                state, since = "ok", None
                if r.active(reading):
                    seen.add(key)
                    since = self.since.setdefault(key, now)
                    state = ("firing" if (now - since).total_seconds() >= r.for_seconds
                             else "pending")
                instances.append(AlertInstance(labels=reading.labels, value=reading.value,
                                               count=reading.count, state=state,
                                               active_since=since))
            order = {"firing": 0, "pending": 1, "ok": 2}
            instances.sort(key=lambda i: (order[i.state], -i.value))
            worst = instances[0].state if instances else "ok"
            out.append(RuleStatus(
                slug=r.slug, alert=r.alert, title=r.title, title_zh=r.title_zh,
                severity=r.severity, state=worst, threshold=r.threshold, unit=r.unit,
                window_seconds=r.window_seconds, for_seconds=r.for_seconds,
                min_count=r.min_count, expr=r.promql(), action=r.action, action_zh=r.action_zh,
                instances=instances))
        for key in set(self.since) - seen:  # resolved: the next activation starts again
            del self.since[key]
        states = [i.state for rs in out for i in rs.instances]
        return AlertsReport(generated_at=now, firing=states.count("firing"),
                            pending=states.count("pending"), rules=out)


if __name__ == "__main__":
    sys.stdout.write(rules_yaml())
