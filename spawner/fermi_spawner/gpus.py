"""The machine's GPUs for a dev server on one machine, as a process or in a container: the one
allocator dev servers and jobs share (``fermi_extension.backends.local.gpus``), and what the
spawn form says about it."""

from __future__ import annotations

from traitlets import List, Unicode
from traitlets.config import Configurable

from fermi_extension.backends.local.gpus import (
    GpuAllocator,
    NoGpuFree,
    gpu_availability,
    gpu_inventory,
    server_holder,
)
from fermi_extension.catalog.schema import Pool, Profile, gpus

from .base import spawn_error
from .options import ProfileView

_detected: list[int] | None = None


class MachineGpus(Configurable):
    """Mixed into a one-machine spawner before ``FermiSpawnerMixin``, whose hooks
    (``profile_check``, ``profile_view``, ``release_devices``) it fills in."""

    gpu_inventory = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="""GPU names of this machine, by device index. None (default): read them from the
        NVIDIA driver with nvidia-smi. Tests and machines without a driver give them here,
        e.g. ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"]. Give the control plane the
        same list (LocalJobBackend.gpu_inventory): dev servers and jobs share the GPUs.""",
    ).tag(config=True)

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

    def claim_gpus(self, count: int) -> str:
        """Take ``count`` of the machine's GPUs for this server (``self.fermi_devices``) before
        it starts; 409 naming why while none is free. Returns the allocator's holder."""
        holder = self.gpu_holder
        try:
            self.fermi_devices = self.gpus.allocate(holder, count, self.gpu_devices)
        except NoGpuFree as error:
            raise spawn_error(409, error.message) from None
        return holder

    def profile_check(self, profile: Profile, pool: Pool | None):
        return gpu_availability(profile, len(self.gpu_devices))

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

    def release_devices(self) -> None:
        self.gpus.release(self.gpu_holder)
