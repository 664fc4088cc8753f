"""The container engine of this machine, and the isolation the platform runs with.

Fermi talks to an engine only through the Docker Engine API (the ``docker`` client), so Docker
and podman are the same to it. ``fermi up`` looks, in order, at:

1. ``$FERMI_CONTAINER_ENGINE``: an Engine API URL (``unix:///run/podman/podman.sock``,
   ``tcp://127.0.0.1:2375``), or ``none`` for processes on the host ("trusted single user");
2. ``$DOCKER_HOST``; the rootful podman socket; Docker's socket — whichever answers;
3. ``podman`` on the PATH: the platform starts ``podman system service`` itself, on a socket in
   its data dir, and stops it when it stops (containers live on: conmon, not the service, keeps
   them, so a restart re-adopts them).

podman on this kind of machine needs two settings that /etc may not have (FACTS.md): runc where
crun refuses hybrid cgroups, and rlimits at or below the session's hard limits. They live in a
containers.conf of the platform's own (``$CONTAINERS_CONF``), never in /etc.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ENGINE_ENV = "FERMI_CONTAINER_ENGINE"
# what `fermi up` hands every platform process about the isolation it chose: the engine, its
# name, why there is none, the bridge address workloads reach the platform at, podman's
# configuration file of the platform's own
ISOLATION_ENV = (ENGINE_ENV, "FERMI_CONTAINER_ENGINE_NAME", "FERMI_ISOLATION_REASON",
                 "FERMI_WORKLOAD_IP", "CONTAINERS_CONF", "FERMI_ISOLATION_MODE")
ROOTFUL_PODMAN = "unix:///run/podman/podman.sock"
DOCKER = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Isolation:
    """How workloads run here: in containers of ``engine`` at ``url``, or as host processes —
    under a Unix account per user (``accounts``: the platform runs as root, see
    ``unix_accounts.py``) or all under the platform's own account (``processes``)."""

    mode: str  # "containers" | "accounts" | "processes"
    engine: str = ""  # e.g. "podman 4.3.1"
    url: str = ""
    reason: str = ""  # why processes

    @property
    def containers(self) -> bool:
        return self.mode == "containers"

    @property
    def accounts(self) -> bool:
        return self.mode == "accounts"

    def describe(self) -> str:
        if self.containers:
            return (f"containers ({self.engine} at {self.url}): every dev server, job, replica "
                    "and build runs in its own container, from its pinned image, within its "
                    "profile's limits")
        if self.accounts:
            return ("processes under per-user Unix accounts: other users' files and the "
                    "platform's secrets are out of reach; profile limits are not enforced (no "
                    f"containers) — {self.reason}")
        return ("processes on the host — NOT isolated, for a trusted single user only: a "
                f"notebook can read what the platform's account can read ({self.reason})")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_env(cls) -> "Isolation":
        """What `fermi up` decided, as handed to the hub and the control plane."""
        url = os.environ.get(ENGINE_ENV, "")
        if not url or url == "none":
            # processes of the platform's account unless `fermi up` made per-user accounts
            accounts = os.environ.get("FERMI_ISOLATION_MODE") == "accounts"
            return cls("accounts" if accounts else "processes",
                       reason=os.environ.get("FERMI_ISOLATION_REASON", "no container engine"))
        return cls("containers", os.environ.get("FERMI_CONTAINER_ENGINE_NAME", "engine"), url)

    def env(self) -> dict[str, str]:
        """The variables that hand this decision to the platform's processes."""
        if not self.containers:
            return {ENGINE_ENV: "none", "FERMI_ISOLATION_REASON": self.reason,
                    "FERMI_ISOLATION_MODE": self.mode}
        return {ENGINE_ENV: self.url, "FERMI_CONTAINER_ENGINE_NAME": self.engine}


def connect(url: str, timeout: float = 120):
    """A ``docker.DockerClient`` for the engine at ``url``."""
    import docker

    return docker.DockerClient(base_url=url, version="auto", timeout=timeout)


def engine_name(url: str, timeout: float = 5) -> str | None:
    """``"podman 4.3.1"`` / ``"Docker 28.2.2"`` when an engine answers at ``url``, else None."""
    if url.startswith("unix://") and not Path(url[len("unix://"):]).exists():
        return None
    try:
        client = connect(url, timeout=timeout)
        try:
            version = client.version()
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means: no engine there
        return None
    components = {c.get("Name", ""): c.get("Version", "") for c in version.get("Components", [])}
    if any("podman" in name.lower() for name in components):
        return f"podman {version.get('Version', '')}".strip()
    return f"Docker {version.get('Version', '')}".strip()


def containers_conf(folder: Path) -> Path:
    """Write the platform's own containers.conf: runc when it is installed (crun refuses the
    hybrid cgroup hosts seen here; runc works wherever crun does), and default rlimits no
    higher than this session's hard limits (podman's defaults exceed them without
    CAP_SYS_RESOURCE and every container fails to start)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[containers]", f"default_ulimits = {json.dumps(default_ulimits())}"]
    runc = shutil.which("runc")
    if runc:
        lines += ["", "[engine]", 'runtime = "runc"']
    path = folder / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _capped(limit: int, cap: int) -> int:
    hard = resource.getrlimit(limit)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def default_ulimits() -> list[str]:
    """nofile and nproc at or below the hard limits (which differ between the processes of one
    session here: 96362 in a shell, 32768 in a service it started). nproc counts every process
    of the UID on the host, so it is set well above what one container runs; a container's
    own process count is held by its pids limit."""
    nofile = _capped(resource.RLIMIT_NOFILE, 16384)
    nproc = _capped(resource.RLIMIT_NPROC, 16384)
    return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]


INSECURE_REGISTRIES_ENV = "FERMI_INSECURE_REGISTRIES"
SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")


def insecure_registries_from_env() -> list[str]:
    """``$FERMI_INSECURE_REGISTRIES``: registries (host:port, separated by ',' or spaces) the
    engine reaches over plain HTTP or without checking their certificate, e.g. a site's own
    registry on 127.0.0.1:5000."""
    return [r for r in os.environ.get(INSECURE_REGISTRIES_ENV, "").replace(",", " ").split() if r]


def registries_conf(folder: Path, insecure: list[str]) -> Path | None:
    """Write the platform's own registries.conf marking ``insecure`` registries as such (podman
    refuses plain HTTP otherwise), or None when there are none. The file replaces the system's
    (``$CONTAINERS_REGISTRIES_CONF``), so the system's settings are carried over when they are
    in the format the [[registry]] tables belong to (the old [registries.*] one cannot be
    mixed with it)."""
    if not insecure:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        system = SYSTEM_REGISTRIES_CONF.read_text()
    except OSError:
        system = ""
    lines = [system] if system and "[registries." not in system else []
    for location in insecure:
        lines += ["", "[[registry]]", f"location = {json.dumps(location)}", "insecure = true"]
    path = folder / "registries.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class PodmanService:
    """``podman system service`` on a socket in ``folder``, started by the platform.
    ``insecure_registries`` (default: ``$FERMI_INSECURE_REGISTRIES``) are reached without TLS
    checks (``registries_conf``)."""

    def __init__(self, folder: Path, insecure_registries: list[str] | None = None):
        self.insecure_registries = (insecure_registries_from_env()
                                    if insecure_registries is None else list(insecure_registries))
        self.ours = False  # whether this process started the service (and so stops it)
        self.folder = Path(folder)
        self.socket = self.folder / "engine.sock"
        self.state = self.folder / "engine.json"
        self.url = f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        env = {"CONTAINERS_CONF": str(self.folder / "containers.conf")}
        if self.insecure_registries:
            env["CONTAINERS_REGISTRIES_CONF"] = str(self.folder / "registries.conf")
        return env

    def start(self, timeout: float = 30) -> str | None:
        """Start the service unless one of ours already answers; its name, or None."""
        from ..processes import identity, is_alive

        self.ours = False
        name = engine_name(self.url)
        if name:  # another platform process of this data dir started it: it stops it too
            return name
        self.stop()
        self.ours = True
        containers_conf(self.folder)
        registries_conf(self.folder, self.insecure_registries)
        self.socket.unlink(missing_ok=True)
        log = open(self.folder / "engine.log", "ab")
        process = subprocess.Popen(
            [shutil.which("podman") or "podman", "system", "service", "--time=0", self.url],
            env={**os.environ, **self.env()}, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,  # not stopped by the hub's Ctrl-C
            # conmon, which it starts per container, drops an empty `oom` file in its working
            # folder when a container is killed for memory: ours, not wherever `fermi up` ran
            cwd=self.folder,
        )
        self.state.write_text(json.dumps({"pid": process.pid, "started": identity(process.pid)}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = engine_name(self.url, timeout=2)
            if name:
                return name
            if process.poll() is not None or not is_alive(process.pid, None):
                return None
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        from ..processes import kill_tree

        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return
        kill_tree(state["pid"], state.get("started"), grace=5)
        self.state.unlink(missing_ok=True)


def find_engine(folder: Path, *, start: bool = True) -> tuple[Isolation, PodmanService | None]:
    """The isolation to run with, and podman's service if the platform started it (to stop)."""
    chosen = os.environ.get(ENGINE_ENV, "").strip()
    if chosen == "none":
        return Isolation("processes", reason=f"{ENGINE_ENV}=none"), None
    if chosen:
        name = engine_name(chosen)
        if name is None:
            return Isolation("processes", reason=f"no engine answers at {ENGINE_ENV}={chosen}"), None
        return Isolation("containers", name, chosen), None
    for url in filter(None, (os.environ.get("DOCKER_HOST"), ROOTFUL_PODMAN, DOCKER)):
        name = engine_name(url)
        if name:
            return Isolation("containers", name, url), None
    if shutil.which("podman") and start:
        service = PodmanService(folder)
        name = service.start()
        if name:
            return Isolation("containers", name, service.url), service if service.ours else None
        return Isolation("processes", reason=f"podman system service did not start (see "
                                             f"{service.folder / 'engine.log'})"), None
    return Isolation("processes", reason="no container engine (install podman or Docker)"), None
