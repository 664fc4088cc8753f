"""Test doubles.

``FakeBackend`` stands in for process launching only: the job service asks a backend whether a
profile can run here, and the runner hands attempts to it. Unit tests need neither real processes
nor a cluster for that; the hub-level tests run jobs for real through the local backend.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

from traitlets import Bool, Unicode

from fermi_extension.catalog.schema import Pool, Profile
from fermi_extension.jobs.backend import Handle, JobBackend, JobLaunch, Outcome
from fermi_extension.jobs.files import JobFiles


class FakeBackend(JobBackend):
    """Attempts are recorded, not run; each ends at once with ``result``."""

    has_gpu = Bool(False, help="Whether GPU profiles can run here (default: no).").tag(config=True)
    no_gpu_reason = Unicode(
        "This machine has no GPU: choose a CPU profile.",
        help="What `availability` answers for a GPU profile when `has_gpu` is False.",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.launches: list[JobLaunch] = []
        self.killed: list[Handle] = []
        self.result = Outcome("succeeded")
        self._pids = itertools.count(1000)

    def availability(self, profile: Profile, pool: Pool) -> tuple[bool, str | None]:
        if profile.gpu and not self.has_gpu:
            return False, self.no_gpu_reason
        return True, None

    async def launch(self, launch: JobLaunch) -> Handle:
        self.launches.append(launch)
        return Handle(next(self._pids), time.time())

    async def wait(self, handle: Handle, files: JobFiles, timeout: float | None) -> Outcome:
        return self.result

    def alive(self, handle: Handle) -> bool:
        return False

    async def kill(self, handle: Handle) -> None:
        self.killed.append(handle)

    def outcome(self, files: JobFiles) -> Outcome:
        return self.result


class InstantTracker:
    """The tracking server's part in a job attempt, answered at once (for runner tests that
    need no MLflow server)."""

    def __init__(self):
        self.runs = 0

    async def warm_up(self):
        pass

    async def experiment_id(self, name):
        return "1"

    async def create_run(self, *args, **kwargs):
        self.runs += 1
        return {"run_id": f"run{self.runs}"}

    async def get_run(self, run_id):
        return {"info": {}, "data": {"metrics": []}}

    async def registered_versions(self, run_id):
        return []

    async def upload_artifact(self, *args):
        pass

    async def end_run(self, run_id, status):
        pass


# one fixed instant for tests that drive time through db.utcnow (the `clock` fixture)
T0 = dt.datetime(2026, 5, 4, 12, 0)


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += dt.timedelta(**delta)
