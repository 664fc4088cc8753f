"""Custom images from a Dockerfile, built by a real builder.

On one machine the build runs with a builder installed there (buildah, podman, or docker with a
running engine); where none exists the API says so and records nothing. On Kubernetes the build
is a Kaniko Job (``backends/kubernetes/objects.make_kaniko_build``). A build never pretends to
have happened: its status and log are the builder's own; once it succeeded, an admin adds the
reference it produced to the catalogue as a version of the image.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import workload_files
from ..caller import Caller, audit
from ..db import ImageBuild, utcnow
from ..errors import Forbidden, NotFound, Unprocessable
from .schema import SLUG, check_reference


class CreateBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG, description="the catalogue image this build adds a version to")
    dockerfile: str = Field(min_length=1, max_length=256 * 1024)
    reference: str = Field(description="where to tag/push the result, e.g. registry.local/team/img:1")

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str) -> str:
        check_reference(value)
        return value


class DescribeBuild(BaseModel):
    id: str
    slug: str
    reference: str
    builder: str
    status: str
    reason: str | None
    log: str = ""


def detect_builder() -> list[str] | None:
    """The command that builds an image from a context folder here, or None."""
    for name in ("buildah", "podman"):
        if shutil.which(name):
            return [name, "build"] if name == "podman" else [name, "bud"]
    docker = shutil.which("docker")
    if docker:
        try:
            engine = subprocess.run([docker, "info"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            engine = None
        if engine is not None and engine.returncode == 0:
            return [docker, "build"]
    return None


class BuildService:
    """``cluster_builder``: on Kubernetes, the backend's builder (Kaniko Jobs: an object with
    ``async build(build_id, dockerfile, reference, log_path) -> (status, reason)``); otherwise
    a builder installed on this machine."""

    def __init__(self, session_factory, builds_dir: Path, cluster_builder=None,
                 command: list[str] | None = None):
        self.session_factory = session_factory
        self.builds_dir = Path(builds_dir)
        self.cluster_builder = cluster_builder
        # ``command``: the builder to run (``detect_builder``'s shape); else looked up on first
        # use, since `docker info` is slow
        self._builder: list[str] | None | bool = command if command is not None else False
        self._running: set[asyncio.Task] = set()

    @property
    def builder(self) -> list[str] | None:
        if self.cluster_builder is not None:
            return ["kaniko"]
        if self._builder is False:
            self._builder = detect_builder()
        return self._builder

    def start(self, caller: Caller, request: CreateBuild) -> DescribeBuild:
        if not caller.admin:
            raise Forbidden("Only admins build images into the catalogue.")
        if self.builder is None:
            raise Unprocessable(
                "No image builder is installed on this machine (looked for buildah, podman, and "
                "docker with a running engine), so nothing was built. Install one, push the image "
                "to a registry yourself and add it by reference (POST catalog/images), or use the "
                "Kubernetes backend, which builds with Kaniko."
            )
        with self.session_factory() as session:
            build = ImageBuild(slug=request.slug, requested_by=caller.name,
                               reference=request.reference, builder=Path(self.builder[0]).name)
            session.add(build)
            session.flush()
            context = self.builds_dir / build.id
            context.mkdir(parents=True)
            (context / "Dockerfile").write_text(request.dockerfile)
            audit(session, caller, "build", "image", request.slug,
                  after={"reference": request.reference, "build": build.id})
            session.commit()
            described = self._describe(build)
        task = asyncio.get_running_loop().create_task(self._run(described.id, request.reference))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return described

    async def stop(self) -> None:
        """Stop the builds still running (the control plane's shutdown): each is killed and
        recorded as failed, so that none is left half-built and marked running."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, build_id: str, reference: str) -> None:
        try:
            await self._build(build_id, reference)
        except asyncio.CancelledError:
            self._set(build_id, "failed", "the control plane stopped during the build; start "
                                          "it again")
            raise

    async def _build(self, build_id: str, reference: str) -> None:
        context = self.builds_dir / build_id
        self._set(build_id, "running")
        if self.cluster_builder is not None:
            status, reason = await self.cluster_builder.build(
                build_id, (context / "Dockerfile").read_text(), reference, context / "build.log")
            self._set(build_id, status, reason)
            return
        with open(context / "build.log", "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *self.builder, "-t", reference, str(context), stdout=log, stderr=log)
            try:
                code = await process.wait()
            except asyncio.CancelledError:  # the builder's process ends with its build
                process.kill()
                await process.wait()
                raise
        self._set(build_id, "succeeded" if code == 0 else "failed",
                  None if code == 0 else f"the builder exited with status {code}; see the log")

    def _set(self, build_id: str, status: str, reason: str | None = None) -> None:
        with self.session_factory() as session:
            build = session.get(ImageBuild, build_id)
            build.status, build.reason = status, reason
            if status in ("succeeded", "failed"):
                build.finished_at = utcnow()
            session.commit()

    def get(self, caller: Caller, build_id: str) -> DescribeBuild:
        with self.session_factory() as session:
            build = session.get(ImageBuild, build_id)
            if build is None or (build.requested_by != caller.name and not caller.admin):
                raise NotFound(f"No image build {build_id!r}.")
            return self._describe(build)

    def _describe(self, build: ImageBuild) -> DescribeBuild:
        try:  # the build's own folder, which a Dockerfile's steps may write to: no links followed
            log = workload_files.read_bytes(self.builds_dir / build.id, "build.log")[-64_000:] \
                .decode("utf-8", errors="replace")
        except (FileNotFoundError, workload_files.UnsafeFile):
            log = ""
        return DescribeBuild(id=build.id, slug=build.slug, reference=build.reference,
                             builder=build.builder, status=build.status, reason=build.reason,
                             log=log)
