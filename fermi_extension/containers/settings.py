"""The settings every part that makes containers shares: which engine, and which platform the
containers belong to. Mixed into the job and serving backends and the dev servers' spawner, so
the three read one engine and label their containers with one platform id."""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Unicode, default
from traitlets.config import Configurable

from .engine import Isolation
from .runtime import Runtime, platform_id


class EngineSettings(Configurable):
    engine_url = Unicode(
        help="""The Docker Engine API this platform's containers are made with, e.g.
        unix:///run/podman/podman.sock. Default: the engine `fermi up` chose
        ($FERMI_CONTAINER_ENGINE), the same for jobs, replicas and dev servers.""",
    ).tag(config=True)

    @default("engine_url")
    def _default_engine_url(self):
        return Isolation.from_env().url

    data_dir = Unicode(
        help="""The platform's data dir: its path names this platform's containers apart from
        another's on the same engine (the ``org.fermi.platform`` label and container names).
        Default: $FERMI_DATA_DIR.""",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self):
        return os.environ.get("FERMI_DATA_DIR", os.getcwd())

    cdi_gpus = Unicode(
        "auto", help="""How GPUs enter a container: "cdi" (nvidia.com/gpu=N, where the NVIDIA
        container toolkit wrote a CDI spec), "devices" (the /dev/nvidia* nodes), or "auto"
        (cdi when /etc/cdi or /var/run/cdi holds an nvidia spec). Default: auto.""",
    ).tag(config=True)

    def uses_cdi(self) -> bool:
        if self.cdi_gpus != "auto":
            return self.cdi_gpus == "cdi"
        return any(Path(d).is_dir() and any("nvidia" in p.name for p in Path(d).iterdir())
                   for d in ("/etc/cdi", "/var/run/cdi"))

    @property
    def platform(self) -> str:
        return platform_id(self.data_dir)

    @property
    def runtime(self) -> Runtime:
        """The engine, connected on first use."""
        if getattr(self, "_runtime", None) is None:
            self._runtime = Runtime(self.engine_url, self.platform)
        return self._runtime

    def close_runtime(self) -> None:
        if getattr(self, "_runtime", None) is not None:
            self._runtime.close()
            self._runtime = None
