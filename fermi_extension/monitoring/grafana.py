"""The Grafana dashboard over Fermi's metrics (``hub_config/grafana/fermi.json``), generated so
that its queries and the alert rules' thresholds come from the same place::

    python -m fermi_extension.monitoring.grafana > hub_config/grafana/fermi.json

Import it in Grafana (Dashboards → Import) and pick the Prometheus that scrapes
``/services/fermi/metrics``.
"""

from __future__ import annotations

import json
import sys

from .rules import rule

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def panel(title: str, targets: list[tuple[str, str]], *, x: int, y: int, w: int = 12, h: int = 8,
          kind: str = "timeseries", unit: str | None = None, threshold: float | None = None,
          description: str = "") -> dict:
    defaults: dict = {}
    if unit:
        defaults["unit"] = unit
    if threshold is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": threshold}]}
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "refId": chr(ord("A") + i)} for i, (expr, legend) in enumerate(targets)],
    }


def row(title: str, y: int) -> dict:
    return {"type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def dashboard() -> dict:
    failure, errors = rule("job-failure-rate"), rule("deployment-error-rate")
    idle, stuck = rule("gpu-idle"), rule("queue-stuck")
    fw, ew = failure.promql().split("[")[1].split("]")[0], errors.promql().split("[")[1].split("]")[0]
    panels = [
        row("Alerts / 告警", 0),
        panel("Firing alerts / 触发中的告警", [('sum by (alertname) (ALERTS{alertstate="firing", '
                                              'fermi_rule!=""})', "{{alertname}}")],
              x=0, y=1, w=24, h=5, kind="stat"),
        row("Training jobs and queues / 训练任务与队列", 6),
        panel("Queue depth per pool / 排队任务数", [("fermi_queue_depth", "{{pool}}")], x=0, y=7),
        panel("Oldest queued job's wait / 最久排队时长",
              [("fermi_queue_oldest_wait_seconds", "{{pool}}")], x=12, y=7, unit="s",
              threshold=stuck.threshold, description=stuck.action),
        panel("Running jobs vs capacity / 运行任务与容量",
              [("fermi_pool_running_jobs", "{{pool}} running"),
               ("fermi_pool_max_running_jobs", "{{pool}} max")], x=0, y=15),
        panel(f"Job failure rate ({fw}) / 任务失败率",
              [(f'sum by (pool) (increase(fermi_job_duration_seconds_count{{outcome="failed"}}[{fw}]))'
                f' / sum by (pool) (increase(fermi_job_duration_seconds_count{{outcome=~"succeeded|failed"}}[{fw}]))',
                "{{pool}}")], x=12, y=15, unit="percentunit", threshold=failure.threshold,
              description=failure.action),
        panel("Job outcomes per hour / 每小时任务结果",
              [("sum by (outcome) (increase(fermi_job_duration_seconds_count[1h]))", "{{outcome}}")],
              x=0, y=23),
        panel("Job duration p50 / p95 / 任务时长",
              [("histogram_quantile(0.5, sum by (le, pool) (rate(fermi_job_duration_seconds_bucket[6h])))",
                "{{pool}} p50"),
               ("histogram_quantile(0.95, sum by (le, pool) (rate(fermi_job_duration_seconds_bucket[6h])))",
                "{{pool}} p95")], x=12, y=23, unit="s"),
        row("GPUs / GPU 资源池", 31),
        panel("GPUs allocated vs capacity / GPU 分配与容量",
              [("sum by (pool) (fermi_gpus_allocated)", "{{pool}} allocated"),
               ("fermi_gpus_capacity > 0", "{{pool}} capacity")], x=0, y=32),
        panel("GPUs by holder kind / 按用途", [("sum by (kind) (fermi_gpus_allocated)", "{{kind}}")],
              x=12, y=32),
        panel("GPU holders idle / 闲置的 GPU",
              [("fermi_gpu_holder_idle_seconds", "{{holder}} ({{user}}, {{activity}})")],
              x=0, y=40, unit="s", threshold=idle.threshold, description=idle.action),
        panel("Dev environments by profile / 开发环境", [("sum by (profile) (fermi_dev_servers)",
                                                       "{{profile}}")], x=12, y=40),
        row("Inference services / 推理服务", 48),
        panel("Requests per second / 请求速率",
              [("sum by (deployment) (rate(fermi_deployment_requests_total[5m]))", "{{deployment}}")],
              x=0, y=49, unit="reqps"),
        panel(f"Error rate ({ew}) / 错误率",
              [(f"sum by (deployment) (increase(fermi_deployment_errors_total[{ew}]))"
                f" / sum by (deployment) (increase(fermi_deployment_requests_total[{ew}]))",
                "{{deployment}}")], x=12, y=49, unit="percentunit", threshold=errors.threshold,
              description=errors.action),
        panel("Latency / 延迟", [("fermi_deployment_latency_ms", "{{deployment}} {{quantile}}")],
              x=0, y=57, unit="ms"),
        panel("In flight vs target × ready replicas / 并发与目标",
              [("fermi_deployment_in_flight", "{{deployment}} in flight"),
               ('fermi_deployment_target_concurrency * on (deployment) '
                'fermi_deployment_replicas{state="ready"}', "{{deployment}} capacity")],
              x=12, y=57),
        panel("Replicas ready vs desired / 副本",
              [('fermi_deployment_replicas{state="ready"}', "{{deployment}} ready"),
               ("fermi_deployment_desired_replicas", "{{deployment}} desired")], x=0, y=65, w=24),
    ]
    for i, p in enumerate(panels, 1):
        p["id"] = i
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "Fermi 费米集群 — platform", "uid": "fermi-platform", "tags": ["fermi"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "editable": True,
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dashboard_json())
