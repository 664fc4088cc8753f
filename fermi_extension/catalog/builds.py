"""Custom images: built from a Dockerfile by a real builder, or pulled from a registry.

In container mode (``containers/engine.py``) the engine itself builds (``docker`` client's
``api.build``), its log written to ``build.log`` in the build's folder as it comes (the page
follows it; it is kept), and the result, once it has what dev servers and jobs need
(``containers/registry.check``), is pinned by digest as a version of the build's catalogue
image, so a job runs from it at once. Pulls (``pull``) go through the same engine and the same
check. Without an engine, a builder installed here builds (buildah, podman, or docker with a
running engine) and nothing is pinned, since processes do not run in images; where none exists
the API says so and records nothing. On Kubernetes the build is a Kaniko Job
(``backends/kubernetes/objects.make_kaniko_build``). A build never pretends to have happened:
its status and log are the builder's own.

The admin's package settings (``PackageSettings``) reach a Dockerfile as build arguments, which
it uses by declaring them, one ``ARG`` a line::

    ARG PIP_INDEX_URL
    ARG PIP_EXTRA_INDEX_URL
    ARG PIP_TRUSTED_HOST
    ARG PIP_CERT
    COPY fermi-ca.pem /fermi-ca.pem
    RUN pip install -r requirements.txt

pip reads the ``PIP_*`` variables itself. ``fermi-ca.pem`` (the CA bundle, copied into every
build context when one is set) is what ``PIP_CERT=/fermi-ca.pem`` names once copied. Build
arguments are visible in the image's history: keep credentials out of the index URLs.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import workload_files
from ..caller import Caller, audit
from ..db import ImageBuild, utcnow
from ..errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable, Unprocessable
from .schema import SLUG, check_reference, check_tag

CA_FILE = "fermi-ca.pem"  # the CA bundle's name in a build context, and at the image's root


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


class PullImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(description="the tag of the image's reference to pull, e.g. 2025-06-30")

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        return check_tag(value)


class PulledImage(BaseModel):
    slug: str
    reference: str = Field(description="repository@digest: what dev servers and jobs now run")
    tag: str
    digest: str = Field(description="the registry's manifest digest, now pinned")
    size: int = Field(description="bytes")
    architecture: str
    labels: dict[str, str]


class DescribeBuild(BaseModel):
    id: str
    slug: str
    reference: str
    builder: str
    status: str
    reason: str | None
    log: str = ""


@functools.lru_cache(maxsize=1)
def pip_config() -> dict[str, str]:
    """This machine's pip settings as ``pip config list`` has them (the environment's PIP_*
    first, then the [install] section, then [global]), e.g. {"index-url": "https://…"}."""
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                                capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rank = {":env:": 3, "install": 2, "global": 1}
    best: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in rank and (key not in best or best[key][0] < rank[section]):
            best[key] = (rank[section], value.strip().strip("'\""))
    return {key: value for key, (_rank, value) in best.items()}


@dataclass(frozen=True)
class PackageSettings:
    """Where a build's ``pip install`` gets packages from (``FermiService.package_*``)."""

    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    ca_bundle: str = ""  # a file on this machine

    def build_args(self) -> dict[str, str]:
        args = {"PIP_INDEX_URL": self.index_url,
                "PIP_EXTRA_INDEX_URL": " ".join(self.extra_index_urls),
                "PIP_TRUSTED_HOST": " ".join(self.trusted_hosts),
                "PIP_CERT": f"/{CA_FILE}" if self.ca_bundle else ""}
        return {k: v for k, v in args.items() if v}

    def prepare(self, context: Path) -> None:
        """Copy the CA bundle into the build context, where a Dockerfile can COPY it."""
        if self.ca_bundle:
            try:
                shutil.copyfile(self.ca_bundle, context / CA_FILE)
            except OSError as error:
                raise Unprocessable(f"The CA bundle {self.ca_bundle} (FermiService."
                                    f"package_ca_bundle) cannot be read: {error}.") from None


def split_reference(reference: str) -> tuple[str, str]:
    """``registry/team/img:1`` → (``registry/team/img``, ``1``); no tag: ``latest``."""
    name, colon, tag = reference.rpartition(":")
    if colon and "/" not in tag:
        return name, tag
    return reference, "latest"


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
    ``async build(build_id, dockerfile, reference, log_path) -> (status, reason)``); else, with
    ``engine_url`` (container mode), the engine, which also pulls; otherwise a builder
    installed on this machine. ``platform`` labels the check containers as this platform's."""

    def __init__(self, session_factory, builds_dir: Path, cluster_builder=None,
                 command: list[str] | None = None, engine_url: str = "", platform: str = "",
                 packages: PackageSettings | None = None, isolation_reason: str = ""):
        self.session_factory = session_factory
        self.builds_dir = Path(builds_dir)
        self.cluster_builder = cluster_builder
        self.engine_url = engine_url
        self.platform = platform
        self.packages = packages or PackageSettings()
        self.isolation_reason = isolation_reason
        # ``command``: the builder to run (``detect_builder``'s shape); else looked up on first
        # use, since `docker info` is slow
        self._builder: list[str] | None | bool = command if command is not None else False
        self._running: set[asyncio.Task] = set()

    @property
    def builder(self) -> list[str] | None:
        if self.cluster_builder is not None:
            return ["kaniko"]
        if self.engine_url:
            return ["engine"]
        if self._builder is False:
            self._builder = detect_builder()
        return self._builder

    def _store(self):
        from .store import CatalogStore

        return CatalogStore(self.session_factory)

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
        if self.engine_url:  # the result is pinned: it must name a version of the image
            self._check_target(request)
        with self.session_factory() as session:
            build = ImageBuild(slug=request.slug, requested_by=caller.name,
                               reference=request.reference, builder=Path(self.builder[0]).name)
            session.add(build)
            session.flush()
            context = self.context(build.id)
            context.mkdir(parents=True)
            (context / "Dockerfile").write_text(request.dockerfile)
            if self.engine_url:
                self.packages.prepare(context)
            audit(session, caller, "build", "image", request.slug,
                  after={"reference": request.reference, "build": build.id})
            session.commit()
            described = self._describe(build)
        task = asyncio.get_running_loop().create_task(self._run(described.id, request.reference))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return described

    def context(self, build_id: str) -> Path:
        """The build context: a folder of its own, so that the log is not part of it."""
        return self.builds_dir / build_id / "context"

    def _check_target(self, request: CreateBuild) -> None:
        if "@" in request.reference:
            raise InvalidInput("reference: a build is tagged, not pinned: give "
                               "registry/team/image:TAG without a digest.")
        repository, tag = split_reference(request.reference)
        try:
            image = self._store().get("images", request.slug)
        except NotFound:
            raise NotFound(f"No image {request.slug!r} in the catalogue to add the build to: add "
                           f"it first (POST catalog/images with reference {repository!r}).") \
                from None
        if image.reference != repository:
            raise Conflict(f"reference: image {request.slug!r} has reference "
                           f"{image.reference!r}, so its versions are tags of it; build into "
                           f"{image.reference}:{tag}, or change the image's reference first.")

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
        context = self.context(build_id)
        log_path = self.builds_dir / build_id / "build.log"
        self._set(build_id, "running")
        if self.cluster_builder is not None:
            status, reason = await self.cluster_builder.build(
                build_id, (context / "Dockerfile").read_text(), reference, log_path)
            self._set(build_id, status, reason)
            return
        if self.engine_url:
            cancelled = threading.Event()
            try:
                status, reason = await in_thread(self._engine_build, build_id, reference,
                                                 cancelled)
            except asyncio.CancelledError:
                cancelled.set()  # the thread stops at the builder's next line
                raise
            except Exception as error:  # noqa: BLE001 - the engine broke: never left "running"
                status, reason = "failed", f"the engine failed after the build: {error}"
            self._set(build_id, status, reason)
            return
        with open(log_path, "wb") as log:
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

    def _engine_build(self, build_id: str, reference: str,
                      cancelled: threading.Event) -> tuple[str, str | None]:
        """Build with the engine, the log written line by line; check and pin the result."""
        from ..containers import registry
        from ..containers.engine import connect
        from ..containers.images import BuildFailed, digest_of, stream
        from ..containers.runtime import Runtime

        args = self.packages.build_args()
        with open(self.builds_dir / build_id / "build.log", "w", buffering=1) as log:
            def write(line: str) -> None:
                if cancelled.is_set():
                    raise BuildFailed("the control plane stopped during the build")
                log.write(line + "\n")

            # names only: an index URL may carry a token
            write(f"Building {reference} with the engine; build arguments: "
                  f"{', '.join(sorted(args)) or 'none'}")
            client = connect(self.engine_url, timeout=3600)
            try:
                try:
                    stream(client.api.build(path=str(self.context(build_id)), tag=reference,
                                            buildargs=args, rm=True, forcerm=True, decode=True),
                           write)
                except BuildFailed as error:
                    write(f"Failed: {error}")
                    return "failed", f"the builder failed: {error}"
                except Exception as error:  # noqa: BLE001 - the engine's API refused or broke
                    write(f"Failed: {error}")
                    return "failed", f"the engine could not build: {error}"
                digest = digest_of(client, reference)
                if digest is None:
                    return "failed", f"the engine built, but has no image {reference}"
                repository, tag = split_reference(reference)
                pinned = f"{repository}@{digest}"
                write(f"Built {pinned}; checking what dev servers and jobs need …")
                runtime = Runtime(self.engine_url, self.platform)
                try:
                    found = registry.check(runtime, pinned)
                finally:
                    runtime.close()
                try:
                    registry.refuse_unless_complete(pinned, found)
                except Unprocessable as error:
                    write(error.message)
                    return "failed", error.message
                pulled = registry.inspect(client, repository, tag, digest)
            finally:
                client.close()
            with self.session_factory() as session:
                build = session.get(ImageBuild, build_id)
                slug, requested_by = build.slug, build.requested_by
            try:  # as the admin who asked for the build, audited under their name
                registry.pin(self._store(), Caller(requested_by, admin=True), slug, repository,
                             tag, digest, registry.version_labels(pulled, found))
            except Exception as error:  # noqa: BLE001 - e.g. the image was removed meanwhile
                message = getattr(error, "message", str(error))
                write(f"Not pinned: {message}")
                return "failed", f"built {pinned}, but it could not be pinned: {message}"
            write(f"Pinned {pinned} as version {tag}.")
            return "succeeded", None

    # -- pulls (container mode) --------------------------------------------------------------

    async def pull(self, caller: Caller, slug: str, request: PullImage) -> PulledImage:
        """Pull ``reference:tag`` of the catalogue image ``slug``, check it, pin it; nothing
        is written when anything is missing."""
        from ..catalog.service import CatalogEditor

        CatalogEditor(self._store(), caller)  # admins only, before anything is pulled
        if not self.engine_url:
            raise Conflict(
                "Containers are off on this platform "
                f"({self.isolation_reason or 'no container engine'}), so images are not pulled: "
                "workloads run as processes in the platform's Python environment. Install "
                "podman (or run Docker) and restart `fermi up`.")
        image = self._store().get("images", slug)
        return await in_thread(self._pull, caller, image.slug, image.reference, request.tag)

    def _pull(self, caller: Caller, slug: str, repository: str, tag: str) -> PulledImage:
        from ..containers import registry
        from ..containers.engine import connect
        from ..containers.runtime import Runtime

        import docker.errors

        try:
            client = connect(self.engine_url, timeout=1800)
            try:
                pulled = registry.pull(client, repository, tag)
            finally:
                client.close()
            runtime = Runtime(self.engine_url, self.platform)
            try:
                found = registry.check(runtime, pulled.reference)
            finally:
                runtime.close()
        except docker.errors.DockerException as error:  # the engine itself, not the registry
            raise Unavailable(f"The container engine failed while pulling {repository}:{tag}: "
                              f"{error}. Check that it runs (see the platform's engine log) "
                              "and try again.") from None
        registry.refuse_unless_complete(f"{repository}:{tag}", found)
        labels = registry.version_labels(pulled, found)
        registry.pin(self._store(), caller, slug, repository, tag, pulled.digest, labels)
        return PulledImage(slug=slug, reference=pulled.reference, tag=tag, digest=pulled.digest,
                           size=pulled.size, architecture=pulled.architecture, labels=labels)

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


async def in_thread(function, *args):
    """``function(*args)`` in a daemon thread: a build or pull that the engine keeps busy must
    not hold up the control plane's exit (``asyncio.to_thread``'s executor is joined then)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(setter, value):
        if not future.done():
            setter(value)

    def run():
        try:
            result = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome = (future.set_exception, error)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop ended meanwhile
            pass

    threading.Thread(target=run, daemon=True, name="fermi-image").start()
    return await future
