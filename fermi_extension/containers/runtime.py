"""One workload container from a neutral request, over the Engine API.

Jobs, replicas and builds go through here; the dev servers' DockerSpawner subclass takes its
limits and hardening from the same functions (``limits_of``, ``host_config``), so a profile
means the same in every container. What a container gets is exactly what its request names:
its image (by digest), its mounts, its environment, its limits; never the engine's socket, the
data dir or the host's network.

Why a container ended is the platform's to tell (``exit_reason``): on hybrid-cgroup hosts
podman's conmon misses out-of-memory kills (``State.OOMKilled`` stays false, FACTS.md), so an
exit 137 under a memory limit that the platform did not cause by stopping it is taken as one,
and the memory cgroup's own counters are read while the container runs where they exist.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog.schema import parse_memory_bytes

log = logging.getLogger("fermi.containers")

LABEL = "org.fermi"  # every label the platform sets starts with this
KIND = f"{LABEL}.kind"  # job | replica | build | warm | server
OWNER = f"{LABEL}.owner"
PLATFORM = f"{LABEL}.platform"  # the data dir's id: two platforms on one engine stay apart
STOPPED = f"{LABEL}.stopped"  # a file-less mark: see ``Runtime.stop``

# The capabilities a workload keeps: what a notebook's own pip install and file handling in
# folders it owns need, and nothing that reaches beyond its container (no CAP_SYS_ADMIN, no
# NET_RAW, no SYS_PTRACE, no DAC_OVERRIDE into files it does not own).
CAPABILITIES = ["CHOWN", "FOWNER", "SETUID", "SETGID", "KILL"]
DEFAULT_PIDS = 1024


def platform_id(data_dir: str) -> str:
    """Names one platform's containers apart from another's on the same engine: its data dir."""
    import hashlib
    import os

    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Limits:
    cpu: float  # cores
    memory: int  # bytes
    pids: int = DEFAULT_PIDS
    devices: tuple[str, ...] = ()  # GPU device nodes or CDI names, chosen by the allocator


def limits_of(cpu: float, memory: str, pids: int = DEFAULT_PIDS, devices=()) -> Limits:
    """A profile's CPU and memory (``"2Gi"``) as container limits."""
    return Limits(cpu=float(cpu), memory=parse_memory_bytes(memory), pids=pids,
                  devices=tuple(devices))


def gpu_devices(indexes: list[int], cdi: bool = False) -> list[str]:
    """The device entries that give a container the GPUs ``indexes`` and no other: CDI names
    where the NVIDIA container toolkit generated a spec, else the device nodes themselves."""
    if not indexes:
        return []
    if cdi:
        return [f"nvidia.com/gpu={i}" for i in indexes]
    nodes = [f"/dev/nvidia{i}" for i in indexes]
    nodes += [p for p in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
              if Path(p).exists()]
    return [f"{node}:{node}:rwm" for node in nodes]


def host_config(limits: Limits) -> dict:
    """docker-py ``create`` arguments that hold a profile and harden the container.
    ``memswap_limit`` equals ``mem_limit``: otherwise the container swaps instead of being
    stopped at its limit (podman#13145)."""
    return {
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,
        "nano_cpus": int(limits.cpu * 1e9),
        "pids_limit": limits.pids,
        "devices": list(limits.devices),
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "security_opt": ["no-new-privileges"],
        "init": True,  # a real PID 1 that reaps the kernel's children
    }


@dataclass(frozen=True)
class Mount:
    source: str  # a host path
    target: str  # where the container sees it
    read_only: bool = False


@dataclass
class ContainerRequest:
    name: str
    image: str  # reference@sha256:… — the exact image the catalogue pins
    command: list[str]
    limits: Limits
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host 127.0.0.1 port
    workdir: str | None = None
    network: str | None = None  # None: the engine's default bridge; "none": no network
    extra_hosts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Exit:
    """How a container ended."""

    code: int
    oom: bool  # out of memory, as the engine saw it or as the platform infers it
    stopped: bool  # stopped by the platform (cancel, timeout, scale-down)

    @property
    def killed(self) -> bool:
        return self.code in (137, -9)


def exit_of(state: dict, labels: dict, memory_limit: int) -> Exit:
    """``State`` of an exited container → why it ended. podman here reports 137 with
    ``OOMKilled`` false for an out-of-memory kill; a SIGKILL nobody on the platform sent, in a
    container with a memory limit, is taken as one."""
    code = int(state.get("ExitCode", -1))
    stopped = labels.get(STOPPED) == "1" or bool(state.get("FermiStopped"))
    oom = bool(state.get("OOMKilled")) or (code == 137 and memory_limit > 0 and not stopped)
    return Exit(code=code, oom=oom, stopped=stopped)


class Runtime:
    """The platform's containers on one engine. ``platform`` labels every container made here
    with the platform it belongs to, so a second platform on the same engine, or a test's,
    never adopts or removes another's."""

    def __init__(self, url: str, platform: str):
        from .engine import connect

        self.url = url
        self.platform = platform
        self.client = connect(url)
        self._stopping: set[str] = set()  # ids this process asked to stop

    # -- making ---------------------------------------------------------------------------------

    def create_kwargs(self, request: ContainerRequest) -> dict:
        from docker.types import Mount as EngineMount

        kwargs = {
            "image": request.image,
            "command": request.command,
            "name": request.name,
            "environment": dict(request.env),
            "labels": {**request.labels, PLATFORM: self.platform},
            "mounts": [EngineMount(m.target, m.source, type="bind", read_only=m.read_only)
                       for m in request.mounts],
            "working_dir": request.workdir,
            "detach": True,
            **host_config(request.limits),
        }
        if request.network:
            kwargs["network_mode"] = request.network
        if request.ports:
            kwargs["ports"] = {f"{c}/tcp": ("127.0.0.1", h) for c, h in request.ports.items()}
        if request.extra_hosts:
            kwargs["extra_hosts"] = dict(request.extra_hosts)
        return kwargs

    def run(self, request: ContainerRequest):
        """Create and start the container; returns the docker-py ``Container``. A container
        of the same name left by a crash is replaced."""
        import docker.errors

        self.remove(request.name)
        kwargs = self.create_kwargs(request)
        try:
            container = self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise LookupError(f"image {request.image} is not on this machine's engine; build or "
                              "pull it first (`fermi images build`, or the images page)") from None
        try:
            container.start()
        except BaseException:
            self.remove(container.id)
            raise
        return container

    # -- finding --------------------------------------------------------------------------------

    def find(self, **labels: str) -> list:
        """This platform's containers with these labels (``kind="job"``, …), running or not."""
        wanted = {PLATFORM: self.platform, **{f"{LABEL}.{k}": v for k, v in labels.items()}}
        filters = {"label": [f"{k}={v}" for k, v in wanted.items()]}
        return self.client.containers.list(all=True, filters=filters)

    def get(self, name_or_id: str):
        import docker.errors

        try:
            return self.client.containers.get(name_or_id)
        except docker.errors.NotFound:
            return None

    def running(self, name_or_id: str) -> bool:
        container = self.get(name_or_id)
        return container is not None and container.status in ("running", "created", "paused")

    # -- ending ---------------------------------------------------------------------------------

    async def wait(self, name_or_id: str, block: float = 60) -> Exit | None:
        """Wait until the container ends (None: it is gone, e.g. removed by hand). The engine's
        own wait answers the moment it exits; it is asked again every ``block`` seconds so a
        lost connection is noticed."""
        import docker
        import requests

        waiter = docker.APIClient(base_url=self.url, version="auto", timeout=block)
        try:
            while True:
                container = await asyncio.to_thread(self.get, name_or_id)
                if container is None:
                    return None
                if container.status in ("exited", "dead", "stopped"):
                    return self.exit(container)
                try:
                    await asyncio.to_thread(waiter.wait, container.id)
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    pass
                except docker.errors.NotFound:
                    return None
        finally:
            waiter.close()

    def exit(self, container) -> Exit:
        state = dict(container.attrs.get("State", {}))
        if container.id in self._stopping or container.name in self._stopping:
            state["FermiStopped"] = True
        memory = int(container.attrs.get("HostConfig", {}).get("Memory") or 0)
        return exit_of(state, container.labels, memory)

    def stop(self, name_or_id: str, grace: float = 5) -> None:
        """Stop the container: SIGTERM, SIGKILL after ``grace`` seconds. The platform notes that
        it stopped it, so the SIGKILL is not read as an out-of-memory kill."""
        container = self.get(name_or_id)
        if container is None:
            return
        self._stopping.update({container.id, container.name})
        try:
            container.stop(timeout=int(max(grace, 0)))
        except Exception as error:  # noqa: BLE001 - it may have ended meanwhile
            log.debug("stop %s: %s", name_or_id, error)

    def remove(self, name_or_id: str) -> None:
        container = self.get(name_or_id)
        if container is None:
            return
        try:
            container.remove(force=True)
        except Exception as error:  # noqa: BLE001 - gone meanwhile
            log.debug("remove %s: %s", name_or_id, error)
        self._stopping.discard(container.id)

    def logs(self, name_or_id: str, tail: int = 200) -> str:
        container = self.get(name_or_id)
        if container is None:
            return ""
        return container.logs(tail=tail).decode(errors="replace")

    def close(self) -> None:
        self.client.close()


def network_anchor(runtime: "Runtime", image: str) -> str:
    """The bridge's gateway address, where workloads reach the platform, with a container that
    keeps the bridge up: netavark removes the bridge with its last container, and the hub and
    the control plane must be able to listen on its address before any workload runs. The
    anchor only sleeps, within 64 MiB and 16 processes (the runtime's own start counts)."""
    name = f"fermi-network-{runtime.platform}"
    container = runtime.get(name)
    if container is None or container.status != "running":
        container = runtime.run(ContainerRequest(
            name=name, image=image, command=["sleep", "infinity"],
            limits=Limits(cpu=0.1, memory=64 * 2**20, pids=16),
            labels={KIND: "network"}))
        container.reload()
    settings = container.attrs.get("NetworkSettings", {})
    gateway = settings.get("Gateway") or next(
        (n.get("Gateway") for n in (settings.get("Networks") or {}).values() if n.get("Gateway")),
        "")
    if not gateway:
        raise RuntimeError(f"the engine's default network has no gateway address ({name})")
    return gateway
