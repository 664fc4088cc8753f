"""The GPUs of this machine and who holds them.

``detect_gpus`` reads the inventory from the NVIDIA driver (``nvidia-smi``); config may give it
instead (``gpu_inventory`` of the local spawner and of the local job backend), for tests and
machines without a driver. ``GpuAllocator`` hands out device indices to dev servers (the hub's
spawner) and job attempts (the control plane's job backend), never one GPU to two holders; the
holder sees its devices through ``CUDA_VISIBLE_DEVICES``.

The assignments live in the platform database (``db.GpuAssignment``), shared by the hub and the
control plane, so they survive a restart of either. An assignment names its holder's process
(pid and start time); one whose process died while nobody watched (a crash, a ``kill -9``, an
ending missed during a restart) is reclaimed by the next allocation.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from ...catalog.schema import Profile, gpus as gpu_words
from ...db import GpuAssignment, utcnow
from ...errors import Unavailable
from ...processes import identity, is_alive


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str = ""


def detect_gpus() -> list[Gpu]:
    """The machine's NVIDIA GPUs; empty where there is no driver or no GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        output = subprocess.run(
            [smi, "--query-gpu=index,name,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.strip().splitlines():
        index, name, uuid = (part.strip() for part in line.split(",", 2))
        gpus.append(Gpu(int(index), name, uuid))
    return gpus


def gpu_inventory(configured: Sequence[str] | None) -> list[Gpu]:
    """The GPUs to hand out: the configured names by device index, or what the driver reports."""
    if configured is None:
        return detect_gpus()
    return [Gpu(index, name) for index, name in enumerate(configured)]


def gpu_availability(profile: Profile, have: int) -> tuple[bool, str | None]:
    """Whether a profile's GPUs exist on this machine at all (not whether they are free now)."""
    if profile.gpu == 0:
        return True, None
    if have == 0:
        return False, (
            f"This machine has no GPU, and profile {profile.slug!r} needs {profile.gpu}: "
            "use a CPU profile here, or run Fermi on a GPU machine or on Kubernetes."
        )
    if profile.gpu > have:
        return False, f"Profile {profile.slug!r} needs {profile.gpu} GPUs; this machine has {have}."
    return True, None


def visible_devices(devices: Sequence[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a holder; empty (no GPU visible) for a CPU-only holder, so
    that it cannot use GPUs handed to someone else."""
    return ",".join(str(d) for d in devices)


class NoGpuFree(Unavailable):
    """Every GPU the request could use is held by someone else right now."""

    def __init__(self, message: str, holders: dict[int, str]):
        super().__init__(message)
        self.holders = holders


def server_holder(user: str, server: str) -> str:
    return f"server:{user}/{server}"


def job_holder(job_id: str) -> str:
    return f"job:{job_id}"


class GpuAllocator:
    """Device indices for holders, one holder per GPU, in the platform database.

    ``claim_seconds``: an assignment whose holder has not named its process within this time
    (it crashed between allocation and start) is reclaimed. ``alive`` and ``clock`` are seams
    for tests.
    """

    def __init__(self, session_factory: sessionmaker, *, claim_seconds: float = 300,
                 alive: Callable[[int | None, float | None], bool] = is_alive,
                 clock: Callable[[], dt.datetime] = utcnow):
        self.session_factory = session_factory
        self.claim_seconds = claim_seconds
        self.alive = alive
        self.clock = clock

    def _stale(self, row: GpuAssignment) -> bool:
        if row.pid is not None:
            return not self.alive(row.pid, row.pid_started)
        return (self.clock() - row.assigned_at).total_seconds() > self.claim_seconds

    def holders(self) -> dict[int, str]:
        """Device → holder, for the assignments still in force."""
        with self.session_factory() as session:
            rows = session.scalars(select(GpuAssignment)).all()
        return {row.device: row.holder for row in rows if not self._stale(row)}

    def held_by(self, holder: str) -> list[int]:
        with self.session_factory() as session:
            return sorted(session.scalars(
                select(GpuAssignment.device).where(GpuAssignment.holder == holder)).all())

    def allocate(self, holder: str, count: int, devices: Sequence[int]) -> list[int]:
        """``count`` of ``devices`` for ``holder`` (the lowest free indices). Asking again for
        the same holder returns what it already holds (a retried start keeps its GPUs).
        Raises ``NoGpuFree`` when too few are free."""
        if count <= 0:
            return []
        for _attempt in range(8):
            with self.session_factory() as session:
                rows = session.scalars(select(GpuAssignment)).all()
                mine = sorted(r.device for r in rows if r.holder == holder)
                if len(mine) == count:
                    return mine
                stale = [r for r in rows if r.holder != holder and self._stale(r)]
                for row in stale + [r for r in rows if r.holder == holder]:
                    session.delete(row)  # a holder asking for another count starts over
                taken = {r.device: r.holder for r in rows
                         if r.holder != holder and r not in stale}
                free = [d for d in devices if d not in taken]
                if len(free) < count:
                    session.commit()  # the reclaimed ones at least
                    raise NoGpuFree(self._busy_message(count, list(devices), taken), taken)
                chosen = sorted(free)[:count]
                for device in chosen:
                    session.add(GpuAssignment(device=device, holder=holder,
                                              assigned_at=self.clock()))
                try:
                    session.commit()
                    return chosen
                except (IntegrityError, StaleDataError, OperationalError):
                    # another process took one of them (or reclaimed the same stale row) first
                    session.rollback()
        raise NoGpuFree("The GPU assignments keep changing under this request; try again.",
                        self.holders())

    @staticmethod
    def _busy_message(count: int, devices: list[int], taken: dict[int, str]) -> str:
        in_use = [h for d, h in taken.items() if d in devices]
        servers = len({h for h in in_use if h.startswith("server:")})
        jobs = len({h for h in in_use if h.startswith("job:")})
        return (
            f"No GPU free: this needs {gpu_words(count)}, and {len(in_use)} of the "
            f"{gpu_words(len(devices))} of this machine are in use ({servers} dev "
            f"environment(s), {jobs} training job(s)). Stop a GPU dev environment you no longer "
            "need, or try again when a job has finished."
        )

    def attach(self, holder: str, pid: int, started: float | None = None) -> None:
        """Name the process that uses the holder's GPUs (after it started)."""
        started = identity(pid) if started is None else started
        with self.session_factory() as session:
            session.execute(update(GpuAssignment).where(GpuAssignment.holder == holder)
                            .values(pid=pid, pid_started=started))
            session.commit()

    def release(self, holder: str) -> list[int]:
        """Free the holder's GPUs; returns them."""
        with self.session_factory() as session:
            devices = sorted(session.scalars(
                select(GpuAssignment.device).where(GpuAssignment.holder == holder)).all())
            if devices:
                session.execute(delete(GpuAssignment).where(GpuAssignment.holder == holder))
                session.commit()
        return devices

    def release_process(self, pid: int | None) -> list[int]:
        """Free the GPUs of the holder whose process this was."""
        if not pid:
            return []
        with self.session_factory() as session:
            devices = sorted(session.scalars(
                select(GpuAssignment.device).where(GpuAssignment.pid == pid)).all())
            if devices:  # most processes hold none: no write then
                session.execute(delete(GpuAssignment).where(GpuAssignment.pid == pid))
                session.commit()
        return devices
