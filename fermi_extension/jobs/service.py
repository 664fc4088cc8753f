"""Jobs: what users ask for (``JobService``) and what runs them (``JobRunner``).

Both belong to the control plane, never to a user's dev server, so stopping or culling a dev
server never touches a job. The runner is the only writer of ``running`` and it re-attaches to
attempts that outlived an earlier control plane, so no job runs twice at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ..catalog.access import choose_image, choose_profile
from ..catalog.schema import Catalog, Image, Profile
from ..catalog.store import CatalogStore
from .. import workload_files, workload_tokens
from ..caller import Caller, audit, owned, visible
from ..db import Job, JobEvent, utcnow
from ..datasets.service import DatasetService
from ..quotas.service import QuotaService
from ..registry.service import version_refusal
from ..errors import Conflict, InvalidInput, Unavailable, Unprocessable
from ..spec import DatasetMount, RuntimeSpec, runtime_spec
from ..tracking.tracker import Tracker, TrackingError
from ..usage.service import usage_record
from .backend import Handle, JobBackend, JobLaunch, Outcome
from .files import JobFiles, read_json
from .models import STATUSES, CreateJob, DescribeJob, JobLogs, check_job_name
from .notebook import load_notebook
from .parameters import check_parameters, detect_parameters
from .queue import PoolUse, Waiting, plan_starts

log = logging.getLogger("fermi.jobs")

ENDED = ("succeeded", "failed", "cancelled")
# a job's tracking token outlives the job's timeout by this much (ending the run, uploading the
# executed notebook), then expires even if the platform never saw the attempt end
TOKEN_GRACE_SECONDS = 3600


def describe_handle(handle: Handle) -> str:
    return handle.name or f"pid {handle.pid}"


def default_job_name(notebook_name: str | None) -> str:
    stem = Path(notebook_name or "notebook").stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "notebook"
    return name[:63]


def describe(job: Job, *, events: list[JobEvent] | None = None, position: int | None = None,
             with_spec: bool = False, files: JobFiles | None = None,
             held: str | None = None) -> DescribeJob:
    """``held``: why the backend's own queue holds the launched attempt (``JobBackend.waiting``):
    the job shows as queued with that reason, as one the control plane's queue holds."""
    status, reason, started_at = job.status, job.reason, job.started_at
    if held and job.status == "running":
        status, reason, started_at = "queued", held, None
    duration = None
    if started_at:
        duration = ((job.finished_at or utcnow()) - started_at).total_seconds()
    progress = dict(job.progress or {})
    if job.status == "running" and files is not None:
        progress = read_json(files.progress) or progress
    spec = None
    if with_spec and files is not None and files.has(files.snapshot):
        spec = detect_parameters(json.loads(files.read(files.snapshot)))
    return DescribeJob(
        id=job.id, name=job.name, owner=job.owner, status=status, reason=reason,
        priority=job.priority, image=job.image, profile=job.profile,
        notebook_name=job.notebook_name, parameters=job.parameters or {},
        timeout_seconds=job.timeout_seconds, attempt=job.attempt, max_retries=job.max_retries,
        retry_of=job.retry_of, created_at=job.created_at, started_at=started_at,
        finished_at=job.finished_at, duration_seconds=duration, progress=progress,
        metrics=job.metrics or {}, models=job.models or [], tracking_run_id=job.tracking_run_id,
        queue_position=position,
        events=None if events is None else [
            {"at": e.at, "kind": e.kind, "message": e.message} for e in events
        ],
        parameter_spec=spec,
    )


@dataclass
class Prepared:
    """A checked submission: what ``JobService.submit`` writes (and a dry run returns)."""

    notebook: dict
    parameters: dict
    image: Image
    profile: Profile
    name: str
    notebook_name: str
    datasets: list[DatasetMount]
    image_version: str | None = None
    spec: RuntimeSpec | None = None  # the runtime the job carries, datasets and ranks included


def check_submission(catalog: Catalog, caller: Caller, request: CreateJob) -> Prepared:
    """The checks of a submission that need only the catalogue: the notebook and its
    parameters, the image, version and profile ``caller`` may use (``catalog/access.py``), the
    name. ``JobService.prepare`` adds what this platform can run; the offline Kubernetes render
    (``fermi jobs submit --dry-run``) stops here."""
    notebook = load_notebook(request.notebook)
    parameters = check_parameters(detect_parameters(notebook), request.parameters)
    image = choose_image(catalog, request.image)
    profile = choose_profile(catalog, caller, request.profile)
    notebook_name = request.notebook_name or "notebook.ipynb"
    name = request.name or default_job_name(notebook_name)
    try:
        check_job_name(name)
    except ValueError as error:
        raise InvalidInput(f"{str(error)[0].upper()}{str(error)[1:]}.") from None
    if "/" in notebook_name or "\\" in notebook_name or notebook_name.startswith("."):
        notebook_name = Path(notebook_name.replace("\\", "/")).name or "notebook.ipynb"
    tags = [v.tag for v in image.versions]
    if request.image_version is not None and request.image_version not in tags:
        raise InvalidInput(f"Image {image.slug!r} has no version {request.image_version!r}; "
                           f"choose one of: {', '.join(tags) or '(none)'}.")
    spec = runtime_spec(image, profile, request.image_version)
    spec.nodes = request.nodes
    return Prepared(notebook, parameters, image, profile, name, notebook_name, [],
                    request.image_version, spec)


class JobService:
    """The jobs API's logic; the HTTP layer and the dev-server extension stay thin."""

    def __init__(self, session_factory: sessionmaker, catalog: CatalogStore, backend: JobBackend,
                 jobs_dir: Path, wake: Callable[[], None] = lambda: None,
                 quotas: QuotaService | None = None, datasets: DatasetService | None = None):
        self.quotas = quotas or QuotaService(session_factory)
        self.datasets = datasets or DatasetService(session_factory)
        self.session_factory = session_factory
        self.catalog = catalog
        self.backend = backend
        self.jobs_dir = Path(jobs_dir)
        self.wake = wake

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.jobs_dir / job_id)

    # -- reads ------------------------------------------------------------------------------

    def _visible(self, session: Session, caller: Caller, job_id: str) -> Job:
        return owned(session, Job, job_id, caller, "job")

    def get(self, caller: Caller, job_id: str) -> DescribeJob:
        with self.session_factory() as session:
            job = self._visible(session, caller, job_id)
            events = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
            ).all()
            position = None
            if job.status == "queued":
                position = 1 + session.scalar(
                    select(func.count()).select_from(Job).where(
                        Job.status == "queued", Job.pool == job.pool,
                        (Job.priority > job.priority)
                        | ((Job.priority == job.priority) & (Job.created_at < job.created_at)),
                    )
                )
            return describe(job, events=list(events), position=position, with_spec=True,
                            files=self.files(job.id), held=self.held(job))

    def list(self, caller: Caller, *, status: str | None = None, owner: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[DescribeJob], int]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        if not 1 <= limit <= 500:
            raise InvalidInput("`limit` must be between 1 and 500.")
        if offset < 0:
            raise InvalidInput("`offset` must be 0 or more.")
        query = visible(select(Job), Job.owner, caller, owner)
        order = (Job.created_at.desc(), Job.id)
        with self.session_factory() as session:
            if status in ("queued", "running"):
                # a launched attempt that the backend's queue (Kueue) holds is stored as running
                # and shown as queued (``describe``): filter on what is shown, not on what is
                # stored; the backend answers from its watch cache, no call per job
                candidates = session.scalars(query.where(
                    Job.status.in_(("queued", "running"))).order_by(*order)).all()
                jobs = [j for j in candidates
                        if ("queued" if j.status == "running" and self.held(j) else j.status)
                        == status]
                total, jobs = len(jobs), jobs[offset:offset + limit]
            else:
                if status:
                    query = query.where(Job.status == status)
                total = session.scalar(select(func.count()).select_from(query.subquery()))
                jobs = session.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
            return [describe(j, files=self.files(j.id), held=self.held(j)) for j in jobs], total

    def held(self, job: Job) -> str | None:
        """Why the backend's queue (Kueue) holds the job's launched attempt, if it does."""
        if job.status != "running" or not (job.pid or job.handle_name):
            return None
        return self.backend.waiting(Handle(job.pid, job.pid_started, job.handle_name))

    def logs(self, caller: Caller, job_id: str, offset: int = 0, limit: int = 1 << 20) -> JobLogs:
        with self.session_factory() as session:
            job = self._visible(session, caller, job_id)
            complete = job.status in ENDED
        files = self.files(job_id)
        text, next_offset = "", offset
        try:
            with workload_files.open_for_reading(files.root, files.log.name) as f:
                f.seek(max(offset, 0))
                chunk = f.read(limit)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            pass
        else:
            text = chunk.decode("utf-8", errors="replace")
            next_offset = offset + len(chunk)
            complete = complete and next_offset >= size
        return JobLogs(text=text, offset=offset, next_offset=next_offset, complete=complete)

    def output(self, caller: Caller, job_id: str) -> bytes:
        with self.session_factory() as session:
            job = self._visible(session, caller, job_id)
            status = job.status
        files = self.files(job_id)
        try:
            return files.read(files.output)
        except FileNotFoundError:
            raise Conflict(
                f"Job {job_id} has no executed notebook yet (status: {status}); "
                "it is written when the job starts running."
            ) from None

    # -- writes -----------------------------------------------------------------------------

    def prepare(self, caller: Caller, request: CreateJob) -> "Prepared":
        """Every check of a submission, writing nothing: the submission itself (``submit``), a
        dry run (``submit(dry_run=True)``), a schedule and a workflow step all pass here."""
        catalog = self.catalog.catalog()
        ready = check_submission(catalog, caller, request)
        profile = ready.profile
        pool = next(p for p in catalog.pools if p.slug == profile.pool)
        available, reason = self.backend.availability(profile, pool)
        if not available:
            raise Unprocessable(reason)
        if profile.gpu > pool.gpus and profile.gpu > 0:
            raise Unprocessable(
                f"Profile {profile.slug!r} asks for {profile.gpu} GPUs but its pool {pool.slug!r} "
                f"has {pool.gpus}: the job could never start. Ask an admin to fix the profile."
            )
        if request.nodes > self.backend.max_nodes:
            raise Unprocessable(
                f"This platform runs a job on at most {self.backend.max_nodes} node(s), and "
                f"{request.nodes} were asked: distributed training needs the Kubernetes backend.")
        ready.spec.datasets = ready.datasets = self.datasets.resolve(caller, request.datasets)
        for mount in ready.datasets:
            refusal = self.backend.dataset_refusal(mount)
            if refusal:
                raise Unprocessable(refusal)
        return ready

    def submit(self, caller: Caller, request: CreateJob, *, retry_of: Job | None = None,
               origin: str | None = None, dry_run: bool = False) -> DescribeJob | Prepared:
        """Queue a job. ``dry_run``: the same path, stopped before anything is written; returns
        what would have been queued (``Prepared``), or the refusal the submission would get."""
        ready = self.prepare(caller, request)
        self.quotas.admit(caller)  # a spent monthly quota refuses; other limits queue the job
        if dry_run:
            return ready
        notebook, parameters, image, profile = ready.notebook, ready.parameters, ready.image, ready.profile
        name, notebook_name, spec = ready.name, ready.notebook_name, ready.spec
        with self.session_factory() as session:
            job = Job(
                name=name, owner=caller.name, status="queued", priority=request.priority,
                image=image.slug, profile=profile.slug, pool=profile.pool,
                runtime=spec.model_dump(mode="json"), notebook_name=notebook_name,
                parameters=parameters, timeout_seconds=request.timeout_seconds,
                max_retries=request.max_retries, retry_of=retry_of.id if retry_of else None,
            )
            session.add(job)
            session.flush()
            files = self.files(job.id)
            files.root.mkdir(parents=True, exist_ok=True)
            files.write(files.snapshot, json.dumps(notebook).encode())
            message = f"queued by {caller.name} on {profile.slug} ({image.slug})"
            if retry_of:
                message += f", a retry of {retry_of.id}"
            if origin:
                message += f", {origin}"
            session.add(JobEvent(job_id=job.id, kind="queued", message=message))
            audit(session, caller, "retry" if retry_of else "submit", "job", job.id,
                  after={"name": name, "image": image.slug, "profile": profile.slug,
                         "parameters": parameters})
            try:
                session.commit()
            except Exception:
                shutil.rmtree(files.root, ignore_errors=True)
                raise
            result = describe(job, files=files)
        self.wake()
        return result

    def retry(self, caller: Caller, job_id: str) -> DescribeJob:
        with self.session_factory() as session:
            old = self._visible(session, caller, job_id)
            if old.status not in ENDED:
                raise Conflict(f"Job {job_id} is {old.status}; retry it once it has ended.")
            session.expunge(old)
        files = self.files(job_id)
        snapshot = json.loads(files.read(files.snapshot))
        request = CreateJob(
            notebook=snapshot, name=old.name, notebook_name=old.notebook_name,
            parameters=old.parameters, image=old.image, profile=old.profile,
            image_version=(old.runtime or {}).get("image_version"),
            priority=old.priority, timeout_seconds=old.timeout_seconds,
            max_retries=old.max_retries, nodes=(old.runtime or {}).get("nodes", 1),
            datasets=[f"{d['name']}:{d['version']}" for d in (old.runtime or {}).get("datasets", [])],
        )
        owner = Caller(old.owner, caller.admin, caller.groups, caller.remote_addr)
        described = self.submit(owner, request, retry_of=old)
        if owner.name != caller.name:
            with self.session_factory() as session:
                audit(session, caller, "retry", "job", described.id)
                session.commit()
        return described

    async def cancel(self, caller: Caller, job_id: str) -> DescribeJob:
        """Cancel the job and stop its running attempt (all its processes) before answering."""
        described, handle = self.record_cancel(caller, job_id)
        if handle is not None and (handle.pid or handle.name):
            await self.backend.kill(handle)
        return described

    def record_cancel(self, caller: Caller, job_id: str) -> tuple[DescribeJob, Handle | None]:
        """Mark the job cancelled; returns the attempt to stop, if one runs."""
        with self.session_factory() as session:
            job = self._visible(session, caller, job_id)
            if job.status in ENDED:
                raise Conflict(f"Job {job_id} has already ended ({job.status}); nothing to cancel.")
            before = job.status
            handle = (Handle(job.pid, job.pid_started, job.handle_name)
                      if job.status == "running" else None)
            job.status = "cancelled"
            job.reason = f"Cancelled by {caller.name}."
            job.finished_at = utcnow()
            session.add(JobEvent(job_id=job.id, kind="cancelled", message=job.reason))
            audit(session, caller, "cancel", "job", job.id, before={"status": before},
                  after={"status": "cancelled"})
            session.commit()
            result = describe(job, files=self.files(job.id))
        self.wake()
        return result, handle


class JobRunner:
    """Starts queued jobs as capacity allows, watches them, and records how they ended."""

    def __init__(self, session_factory: sessionmaker, catalog: CatalogStore, backend: JobBackend,
                 tracker: Tracker, jobs_dir: Path, *, tracking_uri: str,
                 retry_interval: float = 2.0, quotas: QuotaService | None = None):
        self.quotas = quotas or QuotaService(session_factory)
        self.session_factory = session_factory
        self.catalog = catalog
        self.backend = backend
        self.tracker = tracker
        self.jobs_dir = Path(jobs_dir)
        self.tracking_uri = tracking_uri
        self.retry_interval = retry_interval
        self._wake = asyncio.Event()
        self._watches: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None
        self._warm: asyncio.Task | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.jobs_dir / job_id)

    def event(self, session: Session, job: Job, kind: str, message: str) -> None:
        session.add(JobEvent(job_id=job.id, kind=kind, message=message))
        log.info("job %s (%s): %s", job.id, kind, message)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.backend.on_held = self._held_by_backend
        self._warm = asyncio.create_task(self.tracker.warm_up())
        await self.reconcile()
        await self._prewarm()
        self._task = asyncio.create_task(self._loop())

    async def _prewarm(self) -> None:
        """The first job of the catalogue's default image × profile need not wait for a kernel
        (later kinds are warmed by the backend as they run)."""
        catalog = self.catalog.catalog()
        try:
            await self.backend.prewarm(runtime_spec(catalog.default_image(),
                                                    catalog.default_profile()))
        except Exception as error:  # a cold first job, not a control plane that cannot start
            log.warning("could not warm a kernel for the default profile: %s", error)

    async def stop(self, *, stop_jobs: bool) -> None:
        """``stop_jobs``: the platform is shutting down on purpose (Ctrl-C): running attempts are
        stopped and their jobs queued again, to run on the next start."""
        self._stopping = True
        # every task this runner started ends before the backend closes under it
        tasks = [t for t in (self._task, self._warm, *self._watches.values())
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stop_jobs:
            with self.session_factory() as session:
                running = session.scalars(select(Job).where(Job.status == "running")).all()
                handles = [Handle(j.pid, j.pid_started, j.handle_name) for j in running]
                for job in running:
                    job.status, job.pid, job.pid_started = "queued", None, None
                    job.handle_name = None
                    job.attempt = max(job.attempt - 1, 0)
                    job.reason = "Interrupted by a platform shutdown; it runs again on the next start."
                    self.event(session, job, "requeued", job.reason)
                    if job.tracking_run_id:
                        await self._end_run(job.tracking_run_id, "KILLED")
                session.commit()
            await asyncio.gather(*(self.backend.kill(h) for h in handles))
        await self.backend.close()

    async def reconcile(self) -> None:
        """Account for attempts that were running when the previous control plane stopped."""
        with self.session_factory() as session:
            running = session.scalars(select(Job).where(Job.status == "running")).all()
            for job in running:
                files = self.files(job.id)
                handle = Handle(job.pid, job.pid_started, job.handle_name)
                if handle.pid is None and handle.name is None:
                    # died between marking it running and launching it
                    recorded = read_json(files.process) or {}
                    handle = Handle(recorded.get("pid"), recorded.get("started"),
                                    recorded.get("name"))
                if self.backend.alive(handle):
                    job.pid, job.pid_started = handle.pid, handle.started
                    job.handle_name = handle.name
                    self.event(session, job, "reattached",
                               f"still running ({describe_handle(handle)}) after a "
                               "control-plane restart")
                    self._watch(job.id, handle)
                else:
                    session.commit()
                    await self._finish(job.id, self.backend.outcome(files))
            session.commit()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before dispatching: a wake-up during dispatch is not lost
            try:
                delay = await self.dispatch()
            except Exception:
                log.exception("dispatch failed")
                delay = self.retry_interval
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def dispatch(self) -> float | None:
        """Start what fits; returns when to look again (None: when woken)."""
        catalog = self.catalog.catalog()
        pools = {p.slug: p for p in catalog.pools}
        with self.session_factory() as session:
            queued = session.execute(
                select(Job.id, Job.pool, Job.runtime, Job.owner).where(Job.status == "queued")
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
            ).all()
            if not queued:
                return None
            running: dict[str, PoolUse] = {}
            for pool, runtime in session.execute(
                select(Job.pool, Job.runtime).where(Job.status == "running")
            ):
                use = running.setdefault(pool, PoolUse())
                use.jobs += 1
                use.gpus += int(runtime.get("gpu", 0))
        waiting = [Waiting(i, pool, int(rt.get("gpu", 0)) * int(rt.get("nodes", 1)), owner)
                   for i, pool, rt, owner in queued]
        held: dict[str, str] = {}
        planned: dict[str, list[int]] = {}  # owner → [jobs, GPUs] starting in this round
        with self.session_factory() as session:
            def held_back(job: Waiting) -> bool:
                jobs, gpus = planned.setdefault(job.owner, [0, 0])
                reason = self.quotas.refusal(session, job.owner, running_jobs=jobs + 1,
                                             gpus=gpus + job.gpus if job.gpus else 0)
                if reason:
                    held[job.job_id] = reason
                else:
                    planned[job.owner] = [jobs + 1, gpus + job.gpus]
                return reason is not None

            starts = plan_starts(waiting, running, pools, held_back)
        self._say_why_waiting(held)
        later = self.retry_interval if held else None  # quotas free up without a wake-up
        for job_id in starts:
            if not await self._start(job_id):
                later = self.retry_interval
        return later

    def _say_why_waiting(self, held: dict[str, str]) -> None:
        with self.session_factory() as session:
            for job_id, reason in held.items():
                job = session.get(Job, job_id)
                message = f"Waiting: {reason}"
                if job is not None and job.status == "queued" and job.reason != message:
                    job.reason = message
                    self.event(session, job, "waiting", message)
            session.commit()

    def _held_by_backend(self, handle_name: str, reason: str) -> None:
        """The backend's queue (Kueue) holds a launched attempt: said in the job's events, as
        the control plane's own queue says why it holds one (the job shows it as queued)."""
        with self.session_factory() as session:
            job = session.scalar(select(Job).where(Job.handle_name == handle_name,
                                                   Job.status == "running"))
            if job is None:
                return
            last = session.scalar(select(JobEvent).where(JobEvent.job_id == job.id)
                                  .order_by(JobEvent.id.desc()).limit(1))
            if last is None or (last.kind, last.message) != ("waiting", reason):
                self.event(session, job, "waiting", reason)
                session.commit()

    async def _start(self, job_id: str) -> bool:
        """Start one attempt; False when it must wait (the tracking server is not answering)."""
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            if job is None or job.status != "queued":
                return True
            job.status, job.started_at, job.finished_at = "running", utcnow(), None
            job.attempt += 1
            job.reason = None
            job.progress, job.metrics = {}, {}
            session.commit()
            owner, name, runtime = job.owner, job.name, RuntimeSpec.model_validate(job.runtime)
            parameters, attempt = dict(job.parameters or {}), job.attempt
            runtime_timeout = job.timeout_seconds
        files = self.files(job_id)
        # what the attempt holds on the machine (local GPUs) is claimed before its tracking run is
        # made; while none is free the job stays queued and says why
        try:
            await self.backend.reserve(job_id, runtime)
        except Unavailable as error:
            with self.session_factory() as session:
                job = session.get(Job, job_id)
                if job.status == "running":
                    job.status, job.started_at, job.attempt = "queued", None, job.attempt - 1
                    job.reason = error.message
                    session.commit()
            return False
        try:
            experiment = await self.tracker.experiment_id(f"fermi/{owner}")
            run = await self.tracker.create_run(
                experiment, f"{name}-{job_id}",
                tags={"fermi.job_id": job_id, "fermi.user": owner, "fermi.image": runtime.image,
                      "fermi.profile": runtime.profile, "fermi.notebook": files.snapshot.name,
                      "fermi.attempt": str(attempt), "mlflow.user": owner,
                      "mlflow.source.name": name, "mlflow.source.type": "JOB"},
                params=parameters,
            )
        except TrackingError as error:
            with self.session_factory() as session:
                job = session.get(Job, job_id)
                if job.status == "running":
                    job.status, job.started_at, job.attempt = "queued", None, job.attempt - 1
                    job.reason = f"Waiting for the tracking server: {error.message}"
                    session.commit()
            return False
        # a fresh token per attempt, scoped to this run: what the job shows the tracking proxy
        # (revoked in _finish); an earlier attempt's, if one survived a crash, goes first
        workload_tokens.revoke(self.session_factory, job_id=job_id)
        token = workload_tokens.issue(
            self.session_factory, kind="job", owner=owner, job_id=job_id, run_id=run["run_id"],
            ttl=runtime_timeout + TOKEN_GRACE_SECONDS if runtime_timeout else None)
        env = {  # the tracking URI is the backend's to give (JobLaunch.tracking_uri)
            "MLFLOW_TRACKING_TOKEN": token,
            "MLFLOW_RUN_ID": run["run_id"],
            "MLFLOW_EXPERIMENT_ID": experiment,
            "FERMI_JOB_ID": job_id,
            "FERMI_JOB_USER": owner,
        }
        with self.session_factory() as session:  # before the notebook runs: the tracking
            job = session.get(Job, job_id)       # server's gate knows runs by their job
            job.tracking_run_id, job.tracking_experiment_id = run["run_id"], experiment
            session.commit()
        launch = JobLaunch(job_id, owner, files, runtime, parameters, env,
                           tracking_uri=self.tracking_uri, attempt=attempt)
        try:
            handle = await self.backend.launch(launch)
        except Exception as error:  # the backend could not start it: say why, do not hang
            log.exception("launch of job %s failed", job_id)
            with self.session_factory() as session:
                job = session.get(Job, job_id)
                job.tracking_run_id, job.tracking_experiment_id = run["run_id"], experiment
                session.commit()
            await self._finish(job_id, Outcome("failed", f"Could not start: {error}", lost=True))
            return True
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            job.pid, job.pid_started = handle.pid, handle.started
            job.handle_name = handle.name
            job.tracking_run_id, job.tracking_experiment_id = run["run_id"], experiment
            cancelled = job.status == "cancelled"
            if not cancelled:
                self.event(session, job, "started",
                           f"attempt {attempt} started ({describe_handle(handle)}, run {run['run_id']})")
            session.commit()
        if cancelled:  # cancelled while it was being started
            await self.backend.kill(handle)
        self._watch(job_id, handle)
        return True

    def _watch(self, job_id: str, handle: Handle) -> None:
        self._watches[job_id] = asyncio.create_task(self._await_end(job_id, handle))

    async def _await_end(self, job_id: str, handle: Handle) -> None:
        try:
            with self.session_factory() as session:
                job = session.get(Job, job_id)
                remaining = None
                if job.timeout_seconds and job.started_at:
                    elapsed = (utcnow() - job.started_at).total_seconds()
                    remaining = max(job.timeout_seconds - elapsed, 0.01)
            outcome = await self.backend.wait(handle, self.files(job_id), remaining)
            if not self._stopping:
                await self._finish(job_id, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching job %s failed", job_id)
        finally:
            self._watches.pop(job_id, None)

    async def kill(self, handle: Handle | None) -> None:
        if handle is not None and (handle.pid or handle.name):
            await self.backend.kill(handle)

    async def _end_run(self, run_id: str, status: str) -> None:
        try:
            await self.tracker.end_run(run_id, status)
        except TrackingError as error:
            log.warning("could not end tracking run %s: %s", run_id, error.message)

    async def _keep_allowed_versions(self, job_id: str, versions: list[dict]
                                     ) -> tuple[list[dict], str | None]:
        """The registered versions of the job's run that landed in models its owner may write;
        any other is taken out of the registry again (the tracking server's gate refuses them
        as they are made; this holds where a version got past it)."""
        kept, refusal = [], None
        with self.session_factory() as session:
            owner = session.get(Job, job_id).owner
            for version in versions:
                why = version_refusal(session, version["name"], owner)
                if why is None:
                    kept.append(version)
                    continue
                refusal = why
                log.warning("job %s: %s; removing version %s from the registry", job_id, why,
                            version["version"])
                try:
                    await self.tracker.delete_model_version(version["name"], version["version"])
                except TrackingError as error:
                    log.error("could not remove version %s of %s: %s", version["version"],
                              version["name"], error.message)
            session.commit()
        return kept, refusal

    async def _finish(self, job_id: str, outcome: Outcome) -> None:
        """Record how an attempt ended: status, metrics, executed notebook, usage."""
        files = self.files(job_id)
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            run_id = job.tracking_run_id
        metrics: dict[str, float] = {}
        models: list[dict] = []
        if run_id:
            try:
                run = await self.tracker.get_run(run_id)
                metrics = {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}
                models = await self.tracker.registered_versions(run_id)
                try:
                    output = files.read(files.output)
                except (FileNotFoundError, workload_files.UnsafeFile) as error:
                    output = None
                    if isinstance(error, workload_files.UnsafeFile):
                        log.warning("job %s: %s", job_id, error.message)
                if output is not None:
                    await self.tracker.upload_artifact(run["info"], output, "output.ipynb")
            except TrackingError as error:
                log.warning("tracking for job %s: %s", job_id, error.message)
            models, refusal = await self._keep_allowed_versions(job_id, models)
            if refusal and outcome.status == "succeeded":
                outcome = Outcome("failed", f"Nothing was registered: {refusal}.")
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            ended = utcnow()
            started = job.started_at or ended
            if job.status == "running":
                retry = outcome.lost and job.attempt <= job.max_retries
                if retry:
                    job.status = "queued"
                    job.reason = f"{outcome.reason} Retrying (attempt {job.attempt + 1})."
                    self.event(session, job, "retrying", job.reason)
                else:
                    job.status, job.reason, job.finished_at = outcome.status, outcome.reason, ended
                    self.event(session, job, outcome.status, outcome.reason or "finished")
            run_status = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(job.status, "FAILED")
            job.metrics, job.models = metrics, models
            job.progress = read_json(files.progress) or job.progress or {}
            job.pid = job.pid_started = None
            job.handle_name = None
            session.add(usage_record(job.owner, "job", job.id, job.runtime, started, ended))
            session.commit()
        # the attempt has ended: its token opens nothing any more
        workload_tokens.revoke(self.session_factory, job_id=job_id)
        if run_id:
            await self._end_run(run_id, run_status)
        self.wake()

