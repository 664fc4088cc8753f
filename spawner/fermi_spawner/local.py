"""Dev environments as local processes (the embedded default)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Dict, Float, List, Unicode, default

from fermi_extension.backends.local.gpus import (
    GpuAllocator,
    NoGpuFree,
    gpu_availability,
    gpu_inventory,
    server_holder,
    visible_devices,
)
from fermi_extension.catalog.schema import Image, Pool, Profile, gpus, parse_memory_bytes

from fermi_extension.datasets.service import link_datasets
from .base import FermiSpawnerMixin, spawn_error
from .options import ProfileView, Resolved

_detected: list[int] | None = None


class FermiLocalSpawner(FermiSpawnerMixin, SimpleLocalProcessSpawner):
    """A JupyterLab server per user, as a process of the platform's own Python environment.

    Every user's server runs as the operating-system user that runs Fermi, in a home folder
    of its own under the data dir: the embedded default trusts its users (see README). The
    profile's CPU and memory are hints in the environment (``CPU_LIMIT``, ``MEM_LIMIT``, as
    JupyterHub sets them); its GPUs are real devices of this machine, handed out by the GPU
    allocator shared with training jobs and shown to the server as ``CUDA_VISIBLE_DEVICES``.
    """

    fermi_api_url = Unicode(
        help="""URL of the control-plane API as seen from a dev server, handed to it as
        $FERMI_API_URL (default: $FERMI_INTERNAL_API_URL that `fermi up` sets).""",
    ).tag(config=True)

    @default("fermi_api_url")
    def _default_api_url(self):
        return os.environ.get("FERMI_INTERNAL_API_URL", "")

    gpu_inventory = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="""GPU names of this machine, by device index. None (default): read them from the
        NVIDIA driver with nvidia-smi. Tests and machines without a driver give them here,
        e.g. ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"]. Give the control plane the
        same list (LocalJobBackend.gpu_inventory): dev servers and jobs share the GPUs.""",
    ).tag(config=True)

    local_environments = Dict(
        value_trait=Unicode(),
        help="""Python interpreters that run images on this machine, by image slug, e.g.
        {"pytorch-2": "/opt/envs/torch/bin/python"}; that environment needs jupyterhub and
        jupyterlab. Images marked `local` in the catalogue and not listed here run with the
        platform's own Python (the configured `cmd`). Default: {}.""",
    ).tag(config=True)

    listen_poll_seconds = Float(
        0.05,
        help="""How often start() checks whether the new server accepts connections; it returns
        once it does, so the hub's first readiness check succeeds at once instead of after its
        randomised backoff (which can add up to 5 s to a start). 0: return as soon as the
        process is started, as JupyterHub's local spawners do. Default: 0.05.""",
    ).tag(config=True)

    @default("args")
    def _default_args(self):
        return ["--allow-root"] if os.getuid() == 0 else []

    # -- GPUs ------------------------------------------------------------------------------------

    @property
    def gpu_devices(self) -> list[int]:
        global _detected
        if self.gpu_inventory is not None:
            return list(range(len(self.gpu_inventory)))
        if _detected is None:  # nvidia-smi once per hub process
            _detected = [gpu.index for gpu in gpu_inventory(None)]
        return _detected

    @property
    def gpus(self) -> GpuAllocator:
        return GpuAllocator(self.platform_sessions())

    @property
    def gpu_holder(self) -> str:
        return server_holder(self.user.name, self.name)

    def profile_check(self, profile: Profile, pool: Pool | None):
        return gpu_availability(profile, len(self.gpu_devices))

    def image_check(self, image: Image):
        if image.local or image.slug in self.local_environments:
            return True, None
        return False, (f"Image {image.slug!r} is a container image ({image.reference}) and runs "
                       "on Kubernetes only; on this machine choose an image that runs locally.")

    def profile_view(self, profile: Profile, pool: Pool | None) -> ProfileView:
        view = super().profile_view(profile, pool)
        if view.available and profile.gpu:
            devices = self.gpu_devices
            held = self.gpus.holders()
            free = [d for d in devices if d not in held]
            view.note = f"{len(free)} of {gpus(len(devices))} free now / 空闲"
            if len(free) < profile.gpu:
                view.available = False
                view.reason = (f"all GPUs of this machine are in use right now ({len(free)} of "
                               f"{len(devices)} free); stop a GPU dev environment or wait for a "
                               "job to finish")
        return view

    # -- one spawn -------------------------------------------------------------------------------

    def apply_choice(self, resolved: Resolved) -> None:
        profile = resolved.profile
        self.cpu_limit = profile.cpu
        self.mem_limit = parse_memory_bytes(profile.memory)
        if not hasattr(self, "_configured_cmd"):
            self._configured_cmd = list(self.cmd)
        python = self.local_environments.get(resolved.image.slug)
        self.cmd = ([python, "-m", "jupyterhub.singleuser"] if python
                    else list(self._configured_cmd))
        self.fermi_devices: list[int] = []

    async def start(self):
        resolved = await self.load_user_options()
        holder = self.gpu_holder
        try:
            self.fermi_devices = self.gpus.allocate(holder, resolved.profile.gpu,
                                                    self.gpu_devices)
        except NoGpuFree as error:
            raise spawn_error(409, error.message) from None
        try:
            url = await super().start()
        except BaseException:
            self.gpus.release(holder)
            raise
        if self.fermi_devices:
            self.gpus.attach(holder, self.pid)
        self.mark_running(self.fermi_devices)
        await self.wait_listening(*url)
        return url

    async def wait_listening(self, ip: str, port: int) -> None:
        """Return once the server accepts connections, its process ended, or ``http_timeout``
        passed (then the hub's own check decides)."""
        if not self.listen_poll_seconds:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        while loop.time() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                _reader, writer = await asyncio.open_connection(ip, port)
            except OSError:
                await asyncio.sleep(self.listen_poll_seconds)
                continue
            writer.close()
            return

    def release_devices(self) -> None:
        self.gpus.release(self.gpu_holder)

    def get_env(self):
        env = super().get_env()
        if self.fermi_api_url:
            env["FERMI_API_URL"] = self.fermi_api_url
        if self.fermi is not None:
            # empty for a CPU profile: no GPU visible, so none handed to someone else is used
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(getattr(self, "fermi_devices", []))
            # attached datasets appear at datasets/NAME in the home folder (as in a job's)
            env.update(link_datasets(Path(self.home_dir), self.fermi.spec.datasets))
        return env

