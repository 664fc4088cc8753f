"""Dev environments as local processes (the embedded default)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Bool, Dict, Float, Unicode, default

from fermi_extension.backends.local.gpus import visible_devices
from fermi_extension.catalog.schema import Image, parse_memory_bytes
from fermi_extension.containers.engine import Isolation
from fermi_extension.unix_accounts import account_env, ensure_account, hand_over

from fermi_extension.datasets.service import link_datasets
from .base import FermiSpawnerMixin
from .gpus import MachineGpus
from .options import Resolved


class FermiLocalSpawner(MachineGpus, FermiSpawnerMixin, SimpleLocalProcessSpawner):
    """A JupyterLab server per user, as a process of the platform's own Python environment.

    Every user's server runs in a home folder of its own under the data dir, as the
    operating-system user that runs Fermi (the embedded default trusts its users, see README)
    or, when Fermi runs as root, as the user's own Unix account (``unix_accounts``). The
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

    unix_accounts = Bool(
        help="""Start each user's server under a Unix account of its own (fermi-NAME, made on
        first use, its home the user's folder), with JupyterHub's LocalProcessSpawner user
        switching. Needs root. Default: what `fermi up` chose ($FERMI_ISOLATION_MODE=accounts:
        it runs as root with no container engine); False keeps every server under the
        platform's account.""",
    ).tag(config=True)

    @default("unix_accounts")
    def _default_unix_accounts(self):
        return Isolation.from_env().accounts

    @default("args")
    def _default_args(self):
        return ["--allow-root"] if os.getuid() == 0 else []

    def image_check(self, image: Image):
        if image.local or image.slug in self.local_environments:
            return True, None
        return False, (f"Image {image.slug!r} is a container image ({image.reference}) and runs "
                       "on Kubernetes only; on this machine choose an image that runs locally.")

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
        self.fermi_account = None
        if self.unix_accounts:
            self.fermi_account = await asyncio.to_thread(ensure_account, self.user.name,
                                                         Path(self.home_dir))
        holder = self.claim_gpus(resolved.profile.gpu)
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


    # -- under the user's account ----------------------------------------------------------------

    def make_preexec_fn(self, name):
        account = getattr(self, "fermi_account", None)
        if account is None:
            return super().make_preexec_fn(name)
        # JupyterHub's own switch (groups, group, user, then the home as working folder)
        return LocalProcessSpawner.make_preexec_fn(self, account.pw_name)

    def user_env(self, env):
        env = super().user_env(env)
        account = getattr(self, "fermi_account", None)
        if account is not None:
            env.update(account_env(account))
        return env

    def get_env(self):
        env = super().get_env()
        if self.fermi_api_url:
            env["FERMI_API_URL"] = self.fermi_api_url
        if self.fermi is not None:
            # empty for a CPU profile: no GPU visible, so none handed to someone else is used
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(getattr(self, "fermi_devices", []))
            # attached datasets appear at datasets/NAME in the home folder (as in a job's)
            env.update(link_datasets(Path(self.home_dir), self.fermi.spec.datasets))
            account = getattr(self, "fermi_account", None)
            links = Path(self.home_dir) / "datasets"
            if account is not None and links.is_dir():  # made just now by root, for the user
                hand_over(links, account)
        return env

