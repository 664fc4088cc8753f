"""On Kubernetes the builds API hands the Dockerfile to the cluster's builder (Kaniko Jobs,
exercised against the API stand-in in tests/kube) and reports its outcome."""

from __future__ import annotations

import asyncio

from fermi_extension.caller import Caller
from fermi_extension.catalog.builds import BuildService, CreateBuild
from fermi_extension.db import make_session_factory


class RecordingBuilder:
    """Stands in for KubeImageBuilder's interface: what a cluster would be asked to build."""

    def __init__(self, outcome):
        self.asked, self.outcome = [], outcome

    async def build(self, build_id, dockerfile, reference, log_path):
        self.asked.append((dockerfile, reference))
        log_path.write_text("kaniko: pushed\n")
        return self.outcome


async def test_a_build_on_the_cluster_runs_there_and_reports_its_outcome(tmp_path):
    sessions = make_session_factory("sqlite://")
    for outcome in (("succeeded", None), ("failed", "the Kaniko pod ran out of memory")):
        cluster = RecordingBuilder(outcome)
        service = BuildService(sessions, tmp_path, cluster_builder=cluster)
        request = CreateBuild(slug="trainer", dockerfile="FROM python:3.11-slim\n",
                              reference="registry.example.com/team/trainer:v1")
        started = service.start(Caller("root", admin=True), request)
        assert started.builder == "kaniko"
        for _ in range(100):
            described = service.get(Caller("root", admin=True), started.id)
            if described.status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.01)
        assert (described.status, described.reason) == outcome
        assert cluster.asked == [(request.dockerfile, request.reference)]
