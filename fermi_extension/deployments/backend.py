"""What the deployment controller needs from a backend (local processes, Kubernetes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traitlets.config import LoggingConfigurable

from ..catalog.schema import Pool, Profile
from ..spec import RuntimeSpec


@dataclass
class ReplicaHandle:
    """A replica: a process (pid + start time) on this machine, or ``name`` on a cluster."""

    pid: int | None
    started: float | None
    url: str | None
    name: str | None = None


@dataclass
class ReplicaLaunch:
    replica_id: str
    deployment: str
    model: str
    version: str
    model_dir: Path
    engine: str
    runtime: RuntimeSpec
    # where the backend's replicas fetch their model themselves (``fetches_models``): the
    # token their storage initializer reads that one version with, through the tracking proxy
    fetch_token: str | None = None


class ServingBackend(LoggingConfigurable):
    """Runs model-server replicas and the router in front of them.
    Implementations never touch the database or the API."""

    # False: the controller fetches each model version into ``model_dir`` on this machine and
    # replicas read it there. True (Kubernetes): replicas fetch it themselves, each launch with
    # a token that reads that version only (``ReplicaLaunch.fetch_token``).
    fetches_models = False

    def availability(self, profile: Profile, pool: Pool, engine: str) -> tuple[bool, str | None]:
        raise NotImplementedError

    async def start(self) -> None:
        """Make sure the router runs (adopting one that outlived a previous control plane)."""

    async def start_replica(self, launch: ReplicaLaunch) -> ReplicaHandle:
        raise NotImplementedError

    def alive(self, handle: ReplicaHandle) -> bool:
        raise NotImplementedError

    async def ready(self, handle: ReplicaHandle) -> bool:
        raise NotImplementedError

    async def stop_replica(self, handle: ReplicaHandle) -> None:
        raise NotImplementedError

    def model_dir(self, model: str, version: str) -> Path:
        """Where the controller puts a model version's files for the replicas."""
        raise NotImplementedError

    def replica_log(self, replica_id: str, lines: int = 20) -> str:
        return ""

    def publish(self, routes: dict) -> None:
        """Hand the routing table to the router."""
        raise NotImplementedError

    async def stats(self) -> dict:
        """Traffic per deployment and replica, as the router counts it."""
        raise NotImplementedError

    async def close(self, *, stop_all: bool) -> None:
        """``stop_all``: the platform is shutting down on purpose; stop the router too."""
