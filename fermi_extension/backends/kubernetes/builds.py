"""Image builds on Kubernetes: the Dockerfile in a ConfigMap, a Kaniko Job that builds it and
pushes to the configured registry (``objects.make_kaniko_build``), watched like training jobs;
the build's log is the Kaniko pod's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from traitlets import Unicode

from .kube_client import KubeClient, KubeError, gather_quietly
from .jobs import JOB_NAME_LABELS, ended_condition, trim_job, trim_pod
from .objects import MANAGED_BY, make_kaniko_build
from .settings import KubernetesSettings
from .watch import Informer

BUILD_LABELS = {**MANAGED_BY, "app.kubernetes.io/component": "image-build"}


class KubeImageBuilder(KubernetesSettings):
    """Builds with Kaniko in ``namespace``; push credentials come from ``push_secret``."""

    push_secret = Unicode(
        "fermi-registry-push",
        help="Secret (type kubernetes.io/dockerconfigjson) with the registry's push credentials.",
    ).tag(config=True)

    kaniko_image = Unicode("gcr.io/kaniko-project/executor:v1.23.2",
                           help="The Kaniko executor image.").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client: KubeClient | None = None
        self.jobs: Informer | None = None
        self.pods: Informer | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = await self.connect()
            self.jobs = Informer(self.client, "Job", self.namespace, BUILD_LABELS, trim=trim_job)
            self.pods = Informer(self.client, "Pod", self.namespace, BUILD_LABELS, trim=trim_pod)
            await asyncio.gather(self.jobs.start(), self.pods.start())

    async def close(self) -> None:
        await self.disconnect(self.jobs, self.pods)

    async def build(self, build_id: str, dockerfile: str, reference: str, log_path: Path,
                    timeout: float | None = 3600) -> tuple[str, str | None]:
        """Build and push; returns ``(status, reason)`` with status succeeded | failed."""
        await self.start()
        objects = make_kaniko_build(build_id, dockerfile, reference,
                                    self.cluster(use_kueue=False), push_secret=self.push_secret,
                                    executor=self.kaniko_image)
        name = objects[1]["metadata"]["name"]
        for obj in objects:
            created = await self.client.apply(obj)
            if obj["kind"] == "Job":
                self.jobs.remember(created or obj)
        ended = await self.jobs.wait_for(
            name, lambda o: o is None or ended_condition(o) is not None, timeout)
        job = self.jobs.get(name)
        condition = ended_condition(job) if job else None
        pod = next((p for p in self.pods.objects.values()
                    if any(p["metadata"].get("labels", {}).get(k) == name
                           for k in JOB_NAME_LABELS)), None)
        if pod is not None:
            try:
                log_path.write_text(await self.client.logs(self.namespace,
                                                           pod["metadata"]["name"]))
            except KubeError:
                pass
        await gather_quietly(self.client.delete("Job", self.namespace, name),
                             self.client.delete("ConfigMap", self.namespace, name))
        if not ended:
            return "failed", f"The build took longer than {timeout:.0f} s and was stopped."
        if condition and condition.get("type") == "Complete":
            return "succeeded", None
        if job is None:
            return "failed", "The build's Job was deleted before it ended."
        return "failed", (f"Kaniko failed ({condition.get('reason')}: {condition.get('message')}); "
                          "see the log.")
