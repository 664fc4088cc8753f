"""Training jobs as processes on this machine, forked from a warm launcher, each running the job
entry point every backend shares (``jobs/entry.py``), CPU jobs on a warm kernel when one waits
(``kernels.py``); under the job owner's Unix account when the platform runs as root
(``unix_accounts.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from traitlets import Any, Bool, Int, List, Unicode, default

from ...catalog.schema import Pool, Profile
from ...containers.engine import Isolation
from ...db import make_session_factory
from ...jobs.backend import Handle, JobBackend, JobLaunch, Outcome
from ...jobs.files import JobFiles, read_json
from ...processes import identity, is_alive, kill_tree
from ...jobs.entry import JobSpec
from ...spec import DatasetMount, RuntimeSpec
from ...unix_accounts import account_env, ensure_account, hand_over
from ...workload_env import workload_env
from .gpus import GpuAllocator, gpu_availability, gpu_inventory, job_holder, visible_devices
from .kernels import warm_key


class LocalJobBackend(JobBackend):
    session_factory = Any(
        None,
        help="""The platform database's session factory, handed in by the control plane's
        composition root: the GPU allocator shares its assignments with the hub's spawner
        there. None: an in-memory database (a backend made on its own, as unit tests do).""",
    )

    gpu_inventory = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="""GPU names of this machine, by device index. None (default): read them from the
        NVIDIA driver with nvidia-smi. Tests and machines without a driver give them here,
        e.g. ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"].""",
    ).tag(config=True)

    kill_grace_seconds = Int(
        5, help="Seconds between SIGTERM and SIGKILL when a job is cancelled or times out."
    ).tag(config=True)

    warm_kernels = Int(
        1, help="""Kernels kept started ahead of demand for each kind of CPU job (image, kernel,
        profile) that has run here or was warmed at start; each serves one job and is
        replaced. 0 turns the pool off (every job starts its own kernel, ~1 s). GPU jobs always
        start their own.""",
    ).tag(config=True)

    unix_accounts = Bool(
        help="""Run each job under its owner's Unix account (fermi-NAME, made on first use,
        the same the hub's spawner starts the owner's dev servers under): the launcher forks
        the job as root, hands it its job folder and switches to the account before anything
        of the user runs. Needs root. Default: what `fermi up` chose
        ($FERMI_ISOLATION_MODE=accounts: it runs as root with no container engine).""",
    ).tag(config=True)

    @default("unix_accounts")
    def _default_unix_accounts(self):
        return Isolation.from_env().accounts

    home_template = Unicode(
        help="""A user's home, the home of their account, with {username} for the hub name.
        Default: $FERMI_DATA_DIR/users/{username}, the folder the hub's spawner gives the
        user's dev servers (so a job and a dev server share the account's home).""",
    ).tag(config=True)

    @default("home_template")
    def _default_home_template(self):
        return os.path.join(os.environ.get("FERMI_DATA_DIR", "."), "users", "{username}")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._launcher: asyncio.subprocess.Process | None = None
        self._launch_lock = asyncio.Lock()
        self._gpus: GpuAllocator | None = None

    @property
    def gpu_devices(self) -> list[int]:
        if not hasattr(self, "_inventory"):
            self._inventory = [gpu.index for gpu in gpu_inventory(self.gpu_inventory)]
        return self._inventory

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_devices)

    @property
    def gpus(self) -> GpuAllocator:
        """The machine's one GPU allocator, shared with the hub's spawner through the platform
        database (the control plane's; an in-memory one when run alone, as in unit tests)."""
        if self._gpus is None:
            self._gpus = GpuAllocator(self.session_factory or make_session_factory("sqlite://"))
        return self._gpus

    def availability(self, profile: Profile, pool: Pool) -> tuple[bool, str | None]:
        return gpu_availability(profile, self.gpu_count)

    def dataset_refusal(self, mount: DatasetMount) -> str | None:
        if mount.kind == "volume":
            return (f"Dataset {mount.name!r} version {mount.version} is a Kubernetes volume "
                    f"({mount.location}); on this machine attach a version that is a path.")
        return None

    async def reserve(self, job_id: str, runtime: RuntimeSpec) -> None:
        """Claim the attempt's GPUs before anything else is made for it; raises
        ``gpus.NoGpuFree`` (an ``errors.Unavailable``) while none is free: the job waits."""
        if runtime.gpu:
            self.gpus.allocate(job_holder(job_id), runtime.gpu, self.gpu_devices)

    async def start(self) -> None:
        """Start (or restart) the warm launcher and wait until papermill is imported."""
        if self._launcher is not None and self._launcher.returncode is None:
            return
        self._launcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fermi_extension.backends.local.launcher",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=workload_env(),
        )
        line = await self._launcher.stdout.readline()
        if not line:
            raise RuntimeError("the job launcher exited during start-up; see the control plane log")

    def _warm(self, runtime: RuntimeSpec, account=None) -> dict | None:
        """The warm pool a job of ``runtime`` can take its kernel from (None: none for it).
        Under accounts, a pool per account: its slots run as that account from before their
        kernel starts, so no kernel of root or of another user ever serves a job."""
        if runtime.gpu or self.warm_kernels <= 0 or (self.unix_accounts and account is None):
            return None
        # no GPU is visible to a kernel made before its job is known
        env = workload_env({**runtime.env, "CUDA_VISIBLE_DEVICES": visible_devices([]),
                            **(account_env(account) if account else {})})
        warm = {"key": warm_key(runtime.image_reference, runtime.kernel, runtime.profile, env),
                "kernel": runtime.kernel, "env": env, "size": self.warm_kernels}
        if account is not None:
            warm.update(key=f"{warm['key']}|{account.pw_name}", account=account.pw_name)
        return warm

    async def _account(self, launch: JobLaunch):
        """The owner's account, the job folder handed to it (None without accounts)."""
        if not self.unix_accounts:
            return None
        home = Path(self.home_template.format(username=launch.owner))
        account = await asyncio.to_thread(ensure_account, launch.owner, home)
        await asyncio.to_thread(hand_over, launch.files.root, account)
        return account

    async def prewarm(self, runtime: RuntimeSpec) -> None:
        warm = self._warm(runtime)
        if warm is not None:
            await self._ask({"op": "warm", "warm": warm})

    async def launch(self, launch: JobLaunch) -> Handle:
        files = launch.files
        files.reset_attempt()
        account = await self._account(launch)
        holder = job_holder(launch.job_id)
        devices = self.gpus.allocate(holder, launch.runtime.gpu, self.gpu_devices)
        tracking = {"MLFLOW_TRACKING_URI": launch.tracking_uri} if launch.tracking_uri else {}
        request = {
            "op": "run",
            "job_id": launch.job_id,
            "job_dir": str(files.root),
            "spec": JobSpec.of(launch.job_id, launch.runtime, launch.parameters,
                               launch.attempt).to_json(),
            "env": workload_env({**launch.runtime.env, **tracking, **launch.env,
                                 "CUDA_VISIBLE_DEVICES": visible_devices(devices),
                                 **(account_env(account) if account else {})}),
            "warm": self._warm(launch.runtime, account),
            "account": account.pw_name if account else None,
        }
        try:
            answer = await self._ask(request)
        except Exception:
            self.gpus.release(holder)
            raise
        handle = Handle(pid=answer["pid"], started=identity(answer["pid"]))
        if devices:
            self.gpus.attach(holder, handle.pid, handle.started)
        return handle

    async def _ask(self, request: dict) -> dict:
        async with self._launch_lock:
            for attempt in range(2):
                await self.start()
                try:
                    self._launcher.stdin.write((json.dumps(request) + "\n").encode())
                    await self._launcher.stdin.drain()
                    line = await self._launcher.stdout.readline()
                    if line:
                        break
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.log.warning("Job launcher died; starting a new one")
                self._launcher = None
            else:
                raise RuntimeError("the job launcher could not start the job")
        return json.loads(line)

    def alive(self, handle: Handle) -> bool:
        return is_alive(handle.pid, handle.started)

    async def wait(self, handle: Handle, files: JobFiles, timeout: float | None) -> Outcome:
        ended = asyncio.get_running_loop().create_future()
        fd = None
        if self.alive(handle):
            try:
                fd = os.pidfd_open(handle.pid)
            except ProcessLookupError:
                fd = None
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
            try:
                await asyncio.wait_for(asyncio.shield(ended), timeout)
            except asyncio.TimeoutError:
                await self.kill(handle)
                self.gpus.release_process(handle.pid)
                return Outcome("failed", f"Timed out after {timeout:.0f} s and was stopped.")
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        self.gpus.release_process(handle.pid)  # the attempt has ended: its GPUs are free
        return self.outcome(files)

    def outcome(self, files: JobFiles) -> Outcome:
        result = read_json(files.result)
        if result is None:
            return Outcome(
                "failed",
                "The job process ended without reporting a result (it was killed or crashed).",
                lost=True,
            )
        return Outcome(result["status"], result.get("reason"))

    async def kill(self, handle: Handle) -> None:
        if handle.pid:
            await asyncio.to_thread(kill_tree, handle.pid, handle.started, self.kill_grace_seconds)

    async def close(self) -> None:
        """Stop the launcher and the warm kernels waiting in it (jobs keep running)."""
        if self._launcher is not None and self._launcher.returncode is None:
            self._launcher.stdin.close()
            try:
                await asyncio.wait_for(self._launcher.wait(), 15)
            except asyncio.TimeoutError:
                self._launcher.kill()

