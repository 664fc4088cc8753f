"""Prometheus metrics of the control plane: jobs, queues, deployments and their traffic.

Computed when scraped, from the database and the router's counters, so they are true after a
restart. Admins only (Prometheus scrapes with an admin or service token).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from ..db import Deployment, Job, Replica
from ..errors import Forbidden
from .base import APIHandler


class PlatformCollector:
    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        session_factory = self.settings["jobs"].session_factory
        jobs = GaugeMetricFamily("fermi_jobs", "Jobs by status and pool", labels=["status", "pool"])
        replicas = GaugeMetricFamily("fermi_deployment_replicas", "Replicas by state",
                                     labels=["deployment", "state"])
        desired = GaugeMetricFamily("fermi_deployment_desired_replicas",
                                    "Replicas the autoscaler wants", labels=["deployment"])
        with session_factory() as session:
            for status, pool, count in session.execute(
                    select(Job.status, Job.pool, func.count()).group_by(Job.status, Job.pool)):
                jobs.add_metric([status, pool], count)
            for name, state, count in session.execute(
                    select(Replica.deployment, Replica.state, func.count())
                    .group_by(Replica.deployment, Replica.state)):
                replicas.add_metric([name, state], count)
            for d in session.scalars(select(Deployment)):
                desired.add_metric([d.name], d.desired_replicas)
        yield jobs
        yield replicas
        yield desired
        traffic = self.settings["deployments"].traffic
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
        for name, stats in traffic.items():
            requests.add_metric([name], stats.get("requests", 0))
            errors.add_metric([name], stats.get("errors", 0))
            in_flight.add_metric([name], stats.get("in_flight", 0))
            for quantile, value in (stats.get("latency_ms") or {}).items():
                latency.add_metric([name, quantile], value)
            for replica, counters in (stats.get("replicas") or {}).items():
                replica_requests.add_metric([name, replica], counters.get("requests", 0))
        yield from (requests, errors, in_flight, latency, replica_requests)


class MetricsHandler(APIHandler):
    def get(self):
        if not self.caller.admin:
            raise Forbidden("Metrics are for admins: scrape with an admin's or a service's token.")
        registry = CollectorRegistry()
        registry.register(PlatformCollector(self.settings))
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(generate_latest(registry))
