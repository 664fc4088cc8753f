"""Dev environments as containers of this machine's engine: DockerSpawner with Fermi's catalogue.

Used when `fermi up` found a container engine (``$FERMI_CONTAINER_ENGINE`` is an Engine API
URL). Per spawn, everything the container is made of comes from the resolved catalogue choice
(``apply_choice``, rebuilt each time so nothing of one spawn leaks into the next):

- the image is the catalogue version's pinned ``reference@digest``; an image with no digest, or
  not on the engine, is refused with what to do;
- the profile's memory and CPU as DockerSpawner's ``mem_limit``/``cpu_limit``, and the rest of
  the container rules every workload gets (pids, no swap past the limit, capabilities, no new
  privileges, an init) from ``containers.runtime.host_config``, the jobs' own function;
- GPUs from the allocator dev servers and jobs share, as device entries;
- labels (``org.fermi.kind=server``, owner, platform) that name the container as ours;
- mounts: the user's home folder (the same ``data/users/NAME`` the local spawner uses) at the
  image's home, and the datasets the server attached, read-only — nothing else of the data dir,
  never the engine's socket; no environment of the hub (``env_keep = []``).

DockerSpawner keeps the container's id and name in the hub's state, so a restarted hub finds a
running server again (``poll``). A container that ends by itself is inspected before it is
removed: an out-of-memory kill (told apart by ``containers.runtime.exit_of``, since podman
reports ``OOMKilled`` false on this kind of host) leaves a notice that the hub's home and spawn
pages show (``ended_notices``, hub_config's ``template_vars``).
"""

from __future__ import annotations

import html
import inspect
from pathlib import Path

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from traitlets import Int, Unicode, default

from fermi_extension.catalog.access import out_of_memory
from fermi_extension.catalog.schema import Image
from fermi_extension.containers.settings import EngineSettings
from fermi_extension.containers.runtime import (
    DEFAULT_PIDS,
    KIND,
    LABEL,
    OWNER,
    PLATFORM,
    exit_of,
    gpu_devices,
    host_config,
    limits_of,
    platform_id,
)
from fermi_extension.datasets.mounts import link_datasets
from fermi_extension.spec import DatasetMount

from .base import FermiSpawnerMixin, spawn_error
from .gpus import MachineGpus
from .options import Resolved

NOTICE = "fermi_notice"  # the spawner state's key for what the user is told after a server ended
PROFILE_LABEL = f"{LABEL}.profile"
SERVER_LABEL = f"{LABEL}.server"
DATASETS = "/datasets"  # where attached datasets are mounted in the container (as in a job's)

class FermiDockerSpawner(MachineGpus, FermiSpawnerMixin, EngineSettings, DockerSpawner):
    """A JupyterLab server per user in a container of the machine's engine (Docker or podman),
    from the catalogue's pinned image, within its profile's limits."""

    @default("client_kwargs")
    def _default_client_kwargs(self):
        # DockerSpawner reads $DOCKER_HOST; the engine `fermi up` chose wins over it
        return {"base_url": self.engine_url} if self.engine_url else {}


    host_home_template = Unicode(
        help="""The user's home folder on this machine, mounted read-write at ``home_in_image``;
        ``{username}`` is replaced by the user's name. Give it the local spawner's
        home_dir_template so a user finds the same files whichever isolation runs. Default:
        $FERMI_DATA_DIR/users/{username}.""",
    ).tag(config=True)

    @default("host_home_template")
    def _default_host_home(self):
        return str(Path(self.data_dir) / "users" / "{username}")

    home_in_image = Unicode(
        "/home/jovyan",
        help="""Where the image expects the user's home (its $HOME and working folder); the
        official images use /home/jovyan, as Jupyter's docker-stacks do. Default:
        /home/jovyan.""",
    ).tag(config=True)

    fermi_api_url = Unicode(
        help="""URL of the control-plane API as a dev server's container reaches it, handed to
        it as $FERMI_API_URL, e.g. http://10.88.0.1:8081/services/fermi/api (the bridge's
        gateway, where the control plane also listens). Default: none (hub_config sets it
        from $FERMI_WORKLOAD_IP).""",
    ).tag(config=True)

    pids_limit = Int(
        DEFAULT_PIDS,
        help="""Processes (and threads) one dev server's container may run: a fork bomb in a
        notebook stops there instead of taking the machine. Default: 1024 (as a job's).""",
    ).tag(config=True)

    # -- DockerSpawner's settings that Fermi decides ---------------------------------------------

    @default("prefix")
    def _default_prefix(self):
        return f"fermi-server-{platform_id(self.data_dir)}"

    @default("remove")
    def _default_remove(self):
        return True  # a stopped server leaves no container; the home folder keeps the files

    @default("env_keep")
    def _default_env_keep(self):
        return []  # nothing of the hub's environment (the proxy's token, admin tokens) enters

    @default("cmd")
    def _default_container_cmd(self):
        return ["jupyterhub-singleuser"]  # the image's, on its PATH

    @default("args")
    def _default_args(self):
        # the official images run as root inside, with all capabilities dropped but the few of
        # runtime.CAPABILITIES; Jupyter refuses root without this flag
        return ["--allow-root"]

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"  # images enter the engine through `fermi images build` or the images page

    @default("format_volume_name")
    def _default_format_volume_name(self):
        # mounts are absolute paths made per spawn, not templates: a "{" in one stays itself
        return lambda path, _spawner: path

    def image_check(self, image: Image):
        if image.versions and image.versions[0].digest:
            return True, None
        return False, (f"Image {image.slug!r} has no version pinned by digest, so what would "
                       "run is not known exactly; an admin builds it (`fermi images build`) or "
                       "pulls it on the images page.")

    # -- one spawn -------------------------------------------------------------------------------

    @property
    def host_home(self) -> Path:
        return Path(self.host_home_template.format(username=self.user.name))

    def apply_choice(self, resolved: Resolved) -> None:
        spec = resolved.spec
        if "@" not in spec.image_reference:
            raise spawn_error(409, (
                f"Image {resolved.image.slug!r} ({spec.image_reference}) has no pinned digest, "
                "so a dev server cannot start from it: an admin builds it (`fermi images build`) "
                "or pulls it on the images page, or choose another image."))
        self.image = spec.image_reference
        limits = limits_of(spec.cpu, spec.memory, self.pids_limit)
        rules = host_config(limits)
        # DockerSpawner sets these two from its own traits (and CPU_LIMIT/MEM_LIMIT for the
        # server from them); Docker refuses NanoCpus beside the CpuQuota it derives
        self.mem_limit = rules.pop("mem_limit")
        self.cpu_limit = limits.cpu
        rules.pop("nano_cpus")
        rules.pop("devices")  # the allocator's, added at start
        # read the container's state when it ends (why it ended) before removing it ourselves
        rules["auto_remove"] = False
        self.fermi_rules = rules
        self.fermi_devices: list[int] = []
        self.fermi_stopping = False
        home = self.home_in_image
        mounts = [{"type": "bind", "source": str(self.host_home), "target": home}]
        inside = []
        for mount in spec.datasets:
            if mount.kind == "volume":
                raise spawn_error(409, (
                    f"Dataset {mount.name!r} is on a Kubernetes volume ({mount.location}), which "
                    "dev servers on this machine cannot mount; detach it, or register a copy "
                    "in a folder of this machine."))
            if mount.kind == "path":
                target = f"{DATASETS}/{mount.name}"
                mounts.append({"type": "bind", "source": mount.location, "target": target,
                               "read_only": True})
                mount = DatasetMount(**{**mount.model_dump(), "location": target})
            inside.append(mount)
        # the mixin hands each dataset's place to the server: the container's, not the host's
        spec.datasets = inside
        self.mounts = mounts
        self.volumes = {}

    def fermi_host_config(self) -> dict:
        """The profile's limits, the hardening and the GPUs of this spawn."""
        return {**self.fermi_rules, "devices": gpu_devices(self.fermi_devices, self.uses_cdi())}

    def fermi_create_kwargs(self) -> dict:
        labels = {KIND: "server", OWNER: self.user.name, SERVER_LABEL: self.name or "",
                  PLATFORM: platform_id(self.data_dir)}
        if self.fermi is not None:
            labels[PROFILE_LABEL] = self.fermi.profile.slug
        return {"labels": labels, "working_dir": self.home_in_image}

    async def create_object(self):
        """DockerSpawner's container, with Fermi's rules merged over what an admin configured
        in ``extra_host_config``/``extra_create_kwargs`` (an addition such as ``shm_size``
        stays; the limits, the hardening and the labels cannot be configured away)."""
        configured = self.extra_host_config, self.extra_create_kwargs
        host = await _evaluated(self, configured[0])
        create = await _evaluated(self, configured[1])
        ours = self.fermi_create_kwargs()
        self.extra_host_config = {**host, **self.fermi_host_config()}
        self.extra_create_kwargs = {**create, **ours,
                                    "labels": {**(create.get("labels") or {}), **ours["labels"]}}
        try:
            return await super().create_object()
        finally:
            self.extra_host_config, self.extra_create_kwargs = configured

    async def check_allowed(self, image):
        # DockerSpawner's own image choice: the catalogue has already decided (options.py)
        return self.image

    async def pull_image(self, image):
        try:
            await self.docker("inspect_image", image)
        except NotFound:
            raise spawn_error(409, (
                f"Image {image} is pinned in the catalogue but is not on this machine's "
                "container engine; an admin builds it again (`fermi images build`) or pulls it "
                "on the images page.")) from None

    async def start(self):
        resolved = await self.load_user_options()
        self.state_notice = None  # a new start: the last one's ending is old news
        self.host_home.mkdir(parents=True, exist_ok=True)
        link_datasets(self.host_home, self.fermi.spec.datasets)  # links to the container's paths
        holder = self.claim_gpus(resolved.profile.gpu)
        try:
            url = await super().start()
        except BaseException:
            self.gpus.release(holder)
            if self.object_id:  # created, but it did not start: leave nothing behind
                await self._remove_quietly()
            raise
        if self.fermi_devices:
            # the container's init, as the host sees it: the assignment lives as long as it
            obj = await self.get_object()
            pid = int((obj or {}).get("State", {}).get("Pid") or 0)
            if pid:
                self.gpus.attach(holder, pid)
        self.mark_running(self.fermi_devices)
        return url

    def get_env(self):
        env = super().get_env()
        if self.fermi_api_url:
            env["FERMI_API_URL"] = self.fermi_api_url
        if self.fermi is not None:
            home = self.home_in_image
            env.update({m.env: f"{home}/datasets/{m.name}"
                        for m in self.fermi.spec.datasets if m.kind == "path"})
        return env

    # -- the end of a server ---------------------------------------------------------------------

    async def poll(self):
        status = await super().poll()
        if status is None or status == 0:  # running, or gone already
            return status
        # it ended by itself: why (an out-of-memory kill is told apart here), then remove it
        obj = await self.get_object()
        if obj is not None:
            state = dict(obj.get("State") or {})
            if getattr(self, "fermi_stopping", False):
                state["FermiStopped"] = True
            ended = exit_of(state, (obj.get("Config") or {}).get("Labels") or {},
                            int((obj.get("HostConfig") or {}).get("Memory") or 0))
            if ended.oom:
                self.state_notice = self.out_of_memory_notice(
                    ((obj.get("Config") or {}).get("Labels") or {}).get(PROFILE_LABEL))
                self.log.warning("%s: %s", self._log_name, self.state_notice)
            await self._remove_quietly()
        return status

    def out_of_memory_notice(self, profile: str | None) -> str:
        profile = profile or (self.fermi_run or {}).get("profile") or "?"
        what = "Your dev environment" + (f" {self.name!r}" if self.name else "")
        try:
            return out_of_memory(self.read_catalog(), self.caller(), profile, what=what)
        except Exception:  # noqa: BLE001 - the catalogue unreadable: the notice without advice
            return (f"{what} exceeded the memory of profile {profile} and was stopped (out of "
                    "memory); pick a profile with more memory.")

    async def stop(self, now=False):
        self.fermi_stopping = True  # our SIGKILL after the grace period is not out of memory
        await super().stop(now=now)

    async def _remove_quietly(self) -> None:
        try:
            await self.remove_object()
        except APIError as error:
            self.log.warning("Could not remove the container of %s: %s", self._log_name, error)
        self.object_id = ""

    # the notice outlives the server: the hub saves the state after clearing it (User.stop),
    # so it is shown on the next visit, also after a hub restart, until the next start
    state_notice: str | None = None

    def get_state(self):
        state = super().get_state()
        if self.state_notice:
            state[NOTICE] = self.state_notice
        return state

    def load_state(self, state):
        super().load_state(state)
        self.state_notice = (state or {}).get(NOTICE) or None


async def _evaluated(spawner, setting) -> dict:
    """An ``extra_*`` setting as DockerSpawner reads it: a dict, or a callable of the spawner
    (maybe async) returning one."""
    value = setting(spawner) if callable(setting) else setting
    if inspect.isawaitable(value):
        value = await value
    return dict(value or {})


def ended_notices(user) -> str | None:
    """What the hub's home and spawn pages tell ``user`` about servers that ended by themselves
    (``c.JupyterHub.template_vars``: ``announcement_home``, ``announcement_spawn``); None: the
    page's own announcement, if any. The notices come from the saved spawner states, so a
    named server's (which the hub forgets when it stops) and one from before a hub restart are
    shown too."""
    orm_user = getattr(user, "orm_user", None)
    if orm_user is None:
        return None
    notices = [orm.state.get(NOTICE) for orm in orm_user.orm_spawners.values()
               if orm.server is None and isinstance(orm.state, dict) and orm.state.get(NOTICE)]
    if not notices:
        return None
    return "<br>".join(html.escape(n) for n in notices)
