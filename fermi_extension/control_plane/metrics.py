"""Prometheus metrics of the control plane: jobs and queues, job durations and outcomes, GPU
allocation per pool, dev servers, deployments, their replicas and traffic.

Computed when scraped from one platform snapshot (``monitoring.state``): the database, the
router's counters and the hub's server models, so they are true after a restart. Admins only
(Prometheus scrapes with an admin's or a service's token; see hub_config/prometheus/).
The alert rules in ``hub_config/prometheus/alerts.yml`` and the Grafana dashboard in
``hub_config/grafana/fermi.json`` are written over these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ..errors import Forbidden
from ..monitoring.state import Snapshot
from .base import APIHandler

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# seconds: from a quick notebook to a day-long training run
DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


def histogram_buckets(values: list[float], bounds=DURATION_BUCKETS) -> list[tuple[str, float]]:
    buckets = [(floatToGoString(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    return buckets + [("+Inf", float(len(values)))]


class PlatformCollector:
    """Every family of ``/metrics`` from one snapshot."""

    def __init__(self, snapshot: Snapshot):
        self.s = snapshot

    def collect(self):
        s = self.s
        pools = s.pools
        # -- jobs and queues ----------------------------------------------------------------
        jobs = GaugeMetricFamily("fermi_jobs", "Jobs by status and pool", labels=["status", "pool"])
        counts: dict[tuple[str, str], int] = {}
        for job in s.jobs:
            if job.status in ("queued", "running"):
                counts[(job.status, job.pool)] = counts.get((job.status, job.pool), 0) + 1
        for job in s.finished:
            counts[(job.status, job.pool)] = counts.get((job.status, job.pool), 0) + 1
        for (status, pool), count in sorted(counts.items()):
            jobs.add_metric([status, pool], count)
        yield jobs

        depth = GaugeMetricFamily("fermi_queue_depth", "Queued jobs per pool", labels=["pool"])
        oldest = GaugeMetricFamily("fermi_queue_oldest_wait_seconds",
                                   "How long the oldest queued job of the pool has waited",
                                   labels=["pool"])
        running = GaugeMetricFamily("fermi_pool_running_jobs", "Running jobs per pool",
                                    labels=["pool"])
        capacity = GaugeMetricFamily("fermi_pool_max_running_jobs",
                                     "Jobs of the pool that may run at once", labels=["pool"])
        for slug in sorted(set(pools) | {j.pool for j in s.jobs}):
            queued = [j for j in s.jobs if j.pool == slug and j.status == "queued"]
            depth.add_metric([slug], len(queued))
            oldest.add_metric([slug], max(((s.now - j.created_at).total_seconds() for j in queued),
                                          default=0.0))
            running.add_metric([slug], sum(1 for j in s.jobs
                                           if j.pool == slug and j.status == "running"))
            if slug in pools:
                capacity.add_metric([slug], pools[slug].max_running_jobs)
        yield from (depth, oldest, running, capacity)

        durations = HistogramMetricFamily(
            "fermi_job_duration_seconds",
            "Run time of finished jobs (their last attempt) by pool and outcome",
            labels=["pool", "outcome"])
        by_outcome: dict[tuple[str, str], list[float]] = {}
        for job in s.finished:
            by_outcome.setdefault((job.pool, job.status), []).append(job.seconds)
        for (pool, outcome), values in sorted(by_outcome.items()):
            durations.add_metric([pool, outcome], histogram_buckets(values), sum(values))
        yield durations

        # -- GPUs ------------------------------------------------------------------------------
        gpu_capacity = GaugeMetricFamily("fermi_gpus_capacity", "GPUs in the pool", labels=["pool"])
        allocated = GaugeMetricFamily("fermi_gpus_allocated",
                                      "GPUs held per pool, by holder kind (job, replica, server, "
                                      "orphan: an assignment no running job explains)",
                                      labels=["pool", "kind"])
        for slug, pool in sorted(pools.items()):
            gpu_capacity.add_metric([slug], pool.gpus)
        for slug in sorted(set(pools) | {h.pool for h in s.holders}):
            held = s.gpus_allocated(slug)
            for kind in ("job", "replica", "server", "orphan"):
                if kind in held or (slug in pools and pools[slug].gpus):
                    allocated.add_metric([slug, kind], held.get(kind, 0))
        idle = GaugeMetricFamily(
            "fermi_gpu_holder_idle_seconds",
            "Seconds since a GPU holder (dev server, orphan assignment) last showed activity "
            "(activity=hub: the hub's last_activity; held: only the holding time is known)",
            labels=["pool", "holder", "user", "kind", "activity"])
        for h in s.holders:
            if h.idle_seconds is not None and h.kind in ("server", "orphan"):
                idle.add_metric([h.pool, h.holder, h.user, h.kind, h.activity], h.idle_seconds)
        yield from (gpu_capacity, allocated, idle)

        servers = GaugeMetricFamily("fermi_dev_servers", "Running dev environments by profile",
                                    labels=["profile", "source"])
        by_profile: dict[tuple[str, str], int] = {}
        for server in s.servers:
            key = (server.profile or "unknown", server.source)
            by_profile[key] = by_profile.get(key, 0) + 1
        for (profile, source), count in sorted(by_profile.items()):
            servers.add_metric([profile, source], count)
        yield servers

        # -- deployments -------------------------------------------------------------------
        replicas = GaugeMetricFamily("fermi_deployment_replicas", "Replicas by state",
                                     labels=["deployment", "state"])
        desired = GaugeMetricFamily("fermi_deployment_desired_replicas",
                                    "Replicas the autoscaler wants", labels=["deployment"])
        bounds = GaugeMetricFamily("fermi_deployment_replica_bounds", "minReplicas and maxReplicas",
                                   labels=["deployment", "bound"])
        target = GaugeMetricFamily("fermi_deployment_target_concurrency",
                                   "Requests in flight per replica the autoscaler aims at",
                                   labels=["deployment"])
        status = GaugeMetricFamily("fermi_deployment_status", "1 for the deployment's status",
                                   labels=["deployment", "status"])
        for d in s.deployments:
            states: dict[str, int] = {}
            for r in d.replicas:
                states[r.state] = states.get(r.state, 0) + 1
            for state in ("starting", "ready", "draining"):
                replicas.add_metric([d.name, state], states.get(state, 0))
            desired.add_metric([d.name], d.desired_replicas)
            bounds.add_metric([d.name, "min"], d.min_replicas)
            bounds.add_metric([d.name, "max"], d.max_replicas)
            target.add_metric([d.name], d.target_concurrency)
            status.add_metric([d.name, d.status], 1)
        yield from (replicas, desired, bounds, target, status)

        requests = CounterMetricFamily("fermi_deployment_requests", "Requests answered",
                                       labels=["deployment"])
        errors = CounterMetricFamily("fermi_deployment_errors", "5xx answers and failed attempts",
                                     labels=["deployment"])
        in_flight = GaugeMetricFamily("fermi_deployment_in_flight", "Requests in flight",
                                      labels=["deployment"])
        latency = GaugeMetricFamily("fermi_deployment_latency_ms", "Latency over the last minute",
                                    labels=["deployment", "quantile"])
        replica_requests = CounterMetricFamily("fermi_replica_requests", "Requests per replica",
                                               labels=["deployment", "replica"])
        for name, stats in sorted(s.traffic.items()):
            requests.add_metric([name], stats.get("requests", 0))
            errors.add_metric([name], stats.get("errors", 0))
            in_flight.add_metric([name], stats.get("in_flight", 0))
            for quantile, value in (stats.get("latency_ms") or {}).items():
                if quantile.startswith("p") and value is not None:  # not the sample "count"
                    latency.add_metric([name, str(quantile)], value)
            for replica, counters in (stats.get("replicas") or {}).items():
                replica_requests.add_metric([name, replica], counters.get("requests", 0))
        yield from (requests, errors, in_flight, latency, replica_requests)


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry()
    registry.register(PlatformCollector(snapshot))
    return generate_latest(registry)


class MetricsHandler(APIHandler):
    async def get(self):
        if not self.caller.admin:
            raise Forbidden("Metrics are for admins: scrape with an admin's or a service's token.")
        snapshot = await self.services.monitor.snapshot()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(render(snapshot))
