"""What the job runner needs from a backend (local processes, Kubernetes Jobs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from traitlets.config import LoggingConfigurable

from ..catalog.schema import Pool, Profile
from ..spec import DatasetMount, RuntimeSpec
from .files import JobFiles


@dataclass
class JobLaunch:
    job_id: str
    owner: str
    files: JobFiles
    runtime: RuntimeSpec
    parameters: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    # the tracking server as the control plane reaches it; a backend whose workloads reach it
    # elsewhere (a cluster's in-cluster address) gives them that one instead
    tracking_uri: str = ""
    attempt: int = 1


@dataclass
class Handle:
    """Names the running attempt of a job so that it can be found again after a restart:
    a process (pid + start time) on this machine, or an object ``name`` on a cluster."""

    pid: int | None
    started: float | None
    name: str | None = None


@dataclass
class Outcome:
    status: str  # succeeded | failed
    reason: str | None = None
    lost: bool = False  # the attempt vanished without reporting: an infrastructure failure


class JobBackend(LoggingConfigurable):
    """A place jobs run (configurable: its traits are the backend's settings).
    Implementations never touch the API; the local one keeps its GPU assignments in the
    platform database (shared with the hub's spawner)."""

    async def reserve(self, job_id: str, runtime: RuntimeSpec) -> None:
        """Claim what the attempt holds on the machine (GPUs) before it starts; raise
        ``errors.Unavailable`` with the reason while none is free (the job stays queued)."""

    async def launch(self, launch: JobLaunch) -> Handle:
        """Start the attempt and return as soon as it runs."""
        raise NotImplementedError

    async def wait(self, handle: Handle, files: JobFiles, timeout: float | None) -> Outcome:
        """Wait for the attempt to end (also one started by an earlier control plane)."""
        raise NotImplementedError

    def alive(self, handle: Handle) -> bool:
        """Whether the attempt is still running."""
        raise NotImplementedError

    async def kill(self, handle: Handle) -> None:
        """Stop the attempt and everything it started."""
        raise NotImplementedError

    # set by the job runner: called with (handle name, reason) when the backend's own queue
    # starts holding a launched attempt, or says a new reason (the job's "waiting" event)
    on_held: Callable[[str, str], None] | None = None

    def waiting(self, handle: Handle) -> str | None:
        """Why a launched attempt has not begun to run, where the backend's own queue holds it
        (a cluster's Kueue); None while it runs. The job then shows as queued, with this as its
        reason, as a job the control plane's queue holds does."""
        return None

    def outcome(self, files: JobFiles) -> Outcome:
        """The outcome of an attempt that has ended."""
        raise NotImplementedError

    def availability(self, profile: Profile, pool: Pool) -> tuple[bool, str | None]:
        """Whether jobs and servers of ``profile`` can run here, and why not."""
        raise NotImplementedError

    max_nodes: int = 1  # distributed training: how many nodes one job may span here

    def dataset_refusal(self, mount: DatasetMount) -> str | None:
        """Why this backend cannot attach the dataset to a job (None: it can)."""
        return None

    async def start(self) -> None:
        """Prepare to launch (e.g. warm up); called once when the control plane starts."""

    async def prewarm(self, runtime: RuntimeSpec) -> None:
        """Get ready for jobs of ``runtime`` ahead of demand (a warm kernel); optional."""

    async def close(self) -> None:
        """Release what the backend holds (attempts keep running)."""
