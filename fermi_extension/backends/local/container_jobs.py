"""Training jobs in containers on this machine: the job entry point every backend shares
(``jobs/entry.py``), run from the catalogue's pinned image, within its profile's limits.

A job's container sees its own job folder (``/job``), the dataset versions it asked for
(read-only, at ``/datasets/NAME``) and nothing else of the machine: no data dir, no other user's
files, no platform process (a PID namespace of its own), no platform secret (its environment is
the job's alone, with a token scoped to its own run). It is on the engine's bridge network, from
which the host's loopback services (the tracking server's direct port, the proxy's API, the
database) cannot be reached.

A container is named after its job and attempt and labelled with both, so a restarted control
plane re-adopts it (``alive``/``wait`` by name) and removes what no running job owns
(``start``). CPU jobs without datasets start in a warm container when one waits: one started ahead of demand
from the same image within the same profile, its kernel already up (``container_slot.py``); the
job's folder is renamed onto the slot's folder, which the container has at ``/job``, and the job
is handed over in a file there. Like a warm kernel on the host, it serves one job and goes.

A container is not removed when it exits: its state tells an out-of-memory kill
apart (``containers/runtime.exit_of``); the job's outcome is read, then it is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from traitlets import Int

from ...catalog.access import out_of_memory
from ...caller import Caller
from ...containers.settings import EngineSettings
from ...containers.runtime import (
    KIND,
    LABEL,
    ContainerRequest,
    Mount,
    gpu_devices,
    limits_of,
)
from ...jobs.backend import Handle, JobLaunch, Outcome
from ...jobs.entry import DatasetRef, JobSpec, entry_command
from ...jobs.files import JobFiles, read_json
from .container_slot import REQUEST
from .gpus import job_holder
from .jobs import LocalJobBackend
from .kernels import warm_key

JOB_FOLDER = "/job"
DATASETS = "/datasets"
PYTHON = "/opt/fermi/bin/python"  # the official images' interpreter (images/python/Dockerfile)
RESULT_POLL_SECONDS = 0.02  # how often a running attempt's folder is looked at for its result
WARM_FOLDER = ".warm-"  # a warm container's folder in the jobs dir, until a job takes it


class ContainerJobBackend(EngineSettings, LocalJobBackend):
    """Jobs as containers of the machine's engine (``containers/engine.py``). GPU assignment,
    availability and dataset rules are the local backend's; what differs is where the
    attempt runs."""

    pids_limit = Int(
        1024, help="""Processes (and threads) one job container may run; a fork bomb in a
        notebook stops there. Default: 1024.""",
    ).tag(config=True)

    warm_kernels = Int(0, help="Unused for containers: see warm_containers.")

    warm_containers = Int(
        1, help="""Containers kept started ahead of demand for each kind of CPU job (image,
        kernel, profile) that has run here or was warmed at start, each with its kernel ready;
        each serves one job and is replaced. They hold the profile's limits but use only what
        an idle kernel and papermill use (~130 MB PSS each, measured by M1c). 0 turns the
        pool off (every job starts its own container and kernel, ~3 s). GPU jobs and jobs with datasets always start their own:
        devices and mounts are fixed when a container is made.""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._slots: dict[str, list[Slot]] = {}  # idle warm containers by warm key
        self._tasks: set[asyncio.Task] = set()  # refills and removals under way

    # -- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """Remove job and warm containers no running job owns (a crash left them)."""
        await asyncio.to_thread(self._remove_orphans)

    def _remove_orphans(self) -> None:
        from sqlalchemy import select

        from ...db import Job

        if self.session_factory is None:
            return
        with self.session_factory() as session:
            running = set(session.scalars(select(Job.handle_name).where(
                Job.status.in_(("starting", "running")), Job.handle_name.is_not(None))))
        for container in [*self.runtime.find(kind="job"), *self.runtime.find(kind="warm")]:
            if container.name in running:
                continue
            if container.labels.get(KIND) == "warm" or container.status != "running":
                self.runtime.remove(container.id)
            else:
                self.log.warning("Stopping job container %s: no running job owns it",
                                 container.name)
                self.runtime.stop(container.id, self.kill_grace_seconds)
                self.runtime.remove(container.id)
        for folder in self.jobs_dir.glob(f"{WARM_FOLDER}*"):
            shutil.rmtree(folder, ignore_errors=True)  # the idle slots' folders removed above

    async def close(self) -> None:
        """Remove the idle warm containers (jobs keep running)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        idle = [slot for slots in self._slots.values() for slot in slots]
        self._slots.clear()
        await asyncio.gather(*(asyncio.to_thread(self._discard, slot) for slot in idle))
        self.close_runtime()

    # -- the warm pool ---------------------------------------------------------------------------

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir) / "jobs"

    def _warm_key(self, runtime) -> str | None:
        """The pool a job of ``runtime`` can take a container from (None: none for it)."""
        if runtime.gpu or runtime.datasets or self.warm_containers <= 0 or \
                "@" not in runtime.image_reference:
            return None
        return warm_key(runtime.image_reference, runtime.kernel, runtime.profile,
                        {**runtime.env, "cpu": str(runtime.cpu), "memory": runtime.memory})

    async def prewarm(self, runtime) -> None:
        key = self._warm_key(runtime)
        if key is not None:
            await self._fill(key, runtime)

    def _refill(self, key: str, runtime) -> None:
        self._background(self._fill(key, runtime))

    async def _fill(self, key: str, runtime) -> None:
        slots = self._slots.setdefault(key, [])
        while len(slots) < self.warm_containers:
            try:
                slot = await asyncio.to_thread(self._start_slot, key, runtime)
            except Exception as error:  # noqa: BLE001 - jobs then start cold, as without a pool
                self.log.warning("No warm container for %s: %s", runtime.image, error)
                return
            slots.append(slot)

    def _start_slot(self, key: str, runtime) -> Slot:
        """A container of ``runtime``'s image and profile with a kernel started, waiting for
        a job (``container_slot.py``); its environment is the image × profile's alone."""
        token = uuid.uuid4().hex[:12]
        folder = self.jobs_dir / f"{WARM_FOLDER}{token}"
        folder.mkdir(parents=True)
        name = f"fermi-warm-{token}"
        env = {**runtime.env, "HOME": f"{JOB_FOLDER}/work", "PYTHONUNBUFFERED": "1"}
        self.runtime.run(ContainerRequest(
            name=name, image=runtime.image_reference,
            command=[PYTHON, "-m", "fermi_extension.backends.local.container_slot", JOB_FOLDER,
                     runtime.kernel],
            env=env, limits=limits_of(runtime.cpu, runtime.memory, self.pids_limit),
            labels={KIND: "warm", f"{LABEL}.profile": runtime.profile},
            mounts=[Mount(str(folder), JOB_FOLDER)], workdir=JOB_FOLDER))
        return Slot(name, folder)

    def _take(self, key: str) -> Slot | None:
        slots = self._slots.get(key) or []
        while slots:
            slot = slots.pop(0)
            if self.runtime.running(slot.name):
                return slot
            self._discard(slot)
        return None

    def _discard(self, slot: Slot) -> None:
        self.runtime.remove(slot.name)
        shutil.rmtree(slot.folder, ignore_errors=True)

    def _hand_over(self, slot: Slot, launch: JobLaunch) -> None:
        """Make the slot's folder the job's folder, then give it the job. The container's
        bind mount follows the folder through the rename, so ``/job`` inside is now the job's
        folder, at its usual place on the host for the control plane and the API."""
        files = launch.files
        for entry in os.listdir(files.root):
            os.rename(files.root / entry, slot.folder / entry)
        os.rmdir(files.root)
        os.rename(slot.folder, files.root)
        request = {"job_id": launch.job_id, "job_dir": JOB_FOLDER,
                   "spec": self._spec(launch).to_json(), "env": self._env(launch)}
        files.write(files.root / REQUEST, json.dumps(request).encode())

    # -- one attempt -----------------------------------------------------------------------------

    def request(self, launch: JobLaunch, devices: list[int]) -> ContainerRequest:
        """What the attempt's container is made of (pure: tests read it without an engine)."""
        runtime = launch.runtime
        if "@" not in runtime.image_reference:
            raise LookupError(
                f"image {runtime.image!r} has no pinned digest ({runtime.image_reference}); an "
                "admin builds it (`fermi images build`) or pulls it on the images page first")
        mounts = [Mount(str(launch.files.root), JOB_FOLDER)]
        mounts += [Mount(ref.location, f"{DATASETS}/{ref.name}", read_only=True)
                   for ref in runtime.datasets if ref.kind == "path"]
        log = f"{JOB_FOLDER}/{launch.files.log.name}"
        # the job's output reaches its log file as the process writes it, as on the host
        command = ["sh", "-c", f'exec "$@" >>{log} 2>&1', "job",
                   *entry_command(JOB_FOLDER, self._spec(launch), python=PYTHON)]
        return ContainerRequest(
            name=container_name(launch.job_id, launch.attempt),
            image=runtime.image_reference,
            command=command,
            env=self._env(launch),
            limits=limits_of(runtime.cpu, runtime.memory, self.pids_limit,
                             gpu_devices(devices, self.uses_cdi())),
            labels={KIND: "job", f"{LABEL}.job": launch.job_id, f"{LABEL}.owner": launch.owner,
                    f"{LABEL}.attempt": str(launch.attempt), f"{LABEL}.profile": runtime.profile},
            mounts=mounts,
            workdir=f"{JOB_FOLDER}/work",
        )

    @staticmethod
    def _spec(launch: JobLaunch) -> JobSpec:
        """The attempt's spec as the container sees it: path datasets at /datasets/NAME."""
        spec = JobSpec.of(launch.job_id, launch.runtime, launch.parameters, launch.attempt)
        datasets = tuple(DatasetRef(d.name, d.version, f"{DATASETS}/{d.name}", d.kind, d.env)
                         if d.kind == "path" else d for d in spec.datasets)
        return JobSpec(job_id=spec.job_id, kernel=spec.kernel, parameters=spec.parameters,
                       datasets=datasets, attempt=spec.attempt)

    @staticmethod
    def _env(launch: JobLaunch) -> dict[str, str]:
        env = {**launch.runtime.env, **launch.env, "HOME": f"{JOB_FOLDER}/work",
               "PYTHONUNBUFFERED": "1"}
        if launch.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = launch.tracking_uri
        return env

    async def launch(self, launch: JobLaunch) -> Handle:
        files = launch.files
        files.reset_attempt()
        files.workdir.mkdir(parents=True, exist_ok=True)
        key = self._warm_key(launch.runtime)
        if key is not None:
            slot = await asyncio.to_thread(self._take, key)
            self._refill(key, launch.runtime)
            if slot is not None:
                await asyncio.to_thread(self._hand_over, slot, launch)
                return Handle(pid=None, started=None, name=slot.name)
        holder = job_holder(launch.job_id)
        devices = self.gpus.allocate(holder, launch.runtime.gpu, self.gpu_devices)
        try:
            request = self.request(launch, devices)
            container = await asyncio.to_thread(self.runtime.run, request)
        except BaseException:
            self.gpus.release(holder)
            raise
        return Handle(pid=None, started=None, name=container.name)

    def alive(self, handle: Handle) -> bool:
        return bool(handle.name) and self.runtime.running(handle.name)

    async def wait(self, handle: Handle, files: JobFiles, timeout: float | None) -> Outcome:
        """The attempt has ended when its entry point wrote its result (the last thing it does)
        or when its container ended, whichever comes first: the engine learns of an exit a
        few hundred milliseconds late here, and a result needs no exit state to be read."""
        holder = job_holder(files.root.name)
        ended_task = asyncio.get_running_loop().create_task(self.runtime.wait(handle.name))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while not ended_task.done() and not files.has(files.result):
                if deadline is not None and loop.time() > deadline:
                    await self.kill(handle)
                    self.gpus.release(holder)
                    await asyncio.to_thread(self.runtime.remove, handle.name)
                    return Outcome("failed", f"Timed out after {timeout:.0f} s and was stopped.")
                await asyncio.wait({ended_task}, timeout=RESULT_POLL_SECONDS)
        except BaseException:
            ended_task.cancel()
            raise
        self.gpus.release(holder)
        ended = ended_task.result() if ended_task.done() else None
        outcome = await asyncio.to_thread(self._outcome, files, ended, handle.name)
        # removed once it has exited (it is shutting its kernel down), the job not waiting for
        # that; a restart's orphan sweep removes it if this process goes first
        self._background(self._remove_when_ended(handle.name, ended_task))
        return outcome

    async def _remove_when_ended(self, name: str, ended_task: asyncio.Task) -> None:
        try:
            await asyncio.wait_for(ended_task, self.kill_grace_seconds + 10)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - removed with force anyway
            pass
        await asyncio.to_thread(self.runtime.remove, name)

    def _background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def outcome(self, files: JobFiles) -> Outcome:
        """The outcome of an attempt that ended while no control plane watched it: its
        container (named in the job's row; a warm one carries no job label) tells how."""
        name = self._recorded(files.root.name)[0]
        container = self.runtime.get(name) if name else None
        ended = self.runtime.exit(container) if container is not None else None
        outcome = self._outcome(files, ended, name)
        if container is not None:
            self.runtime.remove(container.id)
        return outcome

    def _recorded(self, job_id: str) -> tuple[str | None, str]:
        """The job's container name and owner, as the platform database has them."""
        from ...db import Job

        if self.session_factory is None:
            return None, ""
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            return (job.handle_name, job.owner) if job is not None else (None, "")

    def _outcome(self, files: JobFiles, ended, name: str | None) -> Outcome:
        reported = read_json(files.result) or {}
        if (ended is not None and ended.oom) or reported.get("out_of_memory"):
            return Outcome("failed", self._oom_message(name, files.root.name))
        outcome = super().outcome(files)
        if outcome.lost and ended is not None and not ended.stopped:
            return Outcome("failed", f"The job's container exited with code {ended.code} without "
                                     "reporting a result; see the job's log.", lost=False)
        return outcome

    def _oom_message(self, name: str | None, job_id: str) -> str:
        container = self.runtime.get(name) if name else None
        labels = container.labels if container is not None else {}
        profile = labels.get(f"{LABEL}.profile", "?")
        owner = self._recorded(job_id)[1]
        try:
            from ...catalog.store import CatalogStore

            catalog = CatalogStore(self.session_factory).catalog()
            return out_of_memory(catalog, Caller(owner), profile)
        except Exception:  # noqa: BLE001 - the message without a suggestion
            return (f"The job exceeded the memory of profile {profile} and was stopped (out of "
                    "memory); pick a profile with more memory.")

    async def kill(self, handle: Handle) -> None:
        if handle.name:
            await asyncio.to_thread(self.runtime.stop, handle.name, self.kill_grace_seconds)


@dataclass(frozen=True)
class Slot:
    name: str  # the warm container
    folder: Path  # its /job until a job takes it


def container_name(job_id: str, attempt: int) -> str:
    return f"fermi-job-{job_id}-{attempt}"
