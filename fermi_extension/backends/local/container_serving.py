"""Inference-service replicas in containers on this machine, behind the router on the host.

Each replica of the model server (``serving/server.py``) is a container made from the image its
deployment pinned at creation (by digest), within its profile's CPU, memory and process limits.
It sees the one model version the control plane fetched (read-only, at ``/model``) and nothing
else of the data dir; its environment is the image × profile's and its own replica key, never a
platform secret. It sits on the engine's bridge network, never the host's, so the host's
loopback services (tracking, the proxy's API) are out of its reach; its port is published on
127.0.0.1 only, where the router — the platform's own process, on the host — reaches it. The
replica key still guards it against anything else on the bridge.

Restarts keep containers: a container is named after its replica, and the replica row keeps
that name (``ReplicaHandle.name``), so a restarted control plane (even after -9) finds it
running and re-adopts it with its URL unchanged; at start, replica containers no replica row
owns are removed. A container that ended is kept until the controller reads why
(``replica_log``): a SIGKILL under a memory limit that the platform did not send is an
out-of-memory kill (``containers/runtime.exit_of``; podman here reports ``OOMKilled`` false),
and the deployment's events say so, naming the profile and a larger one.

The vLLM engine stays a host process (``LocalServingBackend``): no official image carries vLLM
and a GPU is not yet passed to a replica container.
"""

from __future__ import annotations

import asyncio

from traitlets import Any, Int

from ...catalog.access import out_of_memory
from ...caller import Caller
from ...containers.settings import EngineSettings
from ...containers.runtime import (
    DEFAULT_PIDS,
    KIND,
    LABEL,
    ContainerRequest,
    Mount,
    limits_of,
)
from ...deployments.backend import ReplicaHandle, ReplicaLaunch
from ...processes import free_port
from ...serving.replica_key import ENV_REPLICA_KEY, replica_key
from .container_jobs import PYTHON
from .serving import LocalServingBackend

MODEL_FOLDER = "/model"
SERVER_PORT = 8080  # inside the container; the host side is a free 127.0.0.1 port
DEPLOYMENT = f"{LABEL}.deployment"
REPLICA = f"{LABEL}.replica"
PROFILE = f"{LABEL}.profile"


class ContainerServingBackend(EngineSettings, LocalServingBackend):
    """Replicas as containers of the machine's engine (``containers/engine.py``); the router,
    availability and readiness are the process backend's."""

    pids_limit = Int(
        DEFAULT_PIDS, help=f"""Processes (and threads) one replica container may run: a runaway
        model stops there. Numeric libraries start a thread per host core whatever the CPU
        limit, so this stays well above the machine's core count. Default: {DEFAULT_PIDS}.""",
    ).tag(config=True)

    stop_grace_seconds = Int(
        12, help="""Seconds a stopped replica gets between SIGTERM and SIGKILL. The model
        server lets requests in flight finish for up to 10 s after SIGTERM. Default: 12.""",
    ).tag(config=True)

    session_factory = Any(
        None,
        help="""The platform database's session factory, handed in by the control plane's
        composition root: at start it tells which replica containers a replica still owns, and
        an out-of-memory message names a profile the deployment's owner may pick. None: no
        orphan removal (a backend made on its own, as unit tests do).""",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # replicas refused before a container was made (no pinned image, image not here): why,
        # told once through ``replica_log`` when the controller finds them gone
        self._refused: dict[str, str] = {}

    # -- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """The router (adopted or started), then the removal of replica containers no replica
        row owns: a crash between making a container and committing its row, or between
        deleting the rows and stopping the containers at a shutdown, leaves them. Ended
        containers go too: the controller drops their rows at start without asking why."""
        await super().start()
        await asyncio.to_thread(self._remove_orphans)

    def _remove_orphans(self) -> None:
        from sqlalchemy import select

        from ...db import Replica

        if self.session_factory is None:
            return
        with self.session_factory() as session:
            owned = set(session.scalars(select(Replica.handle_name).where(
                Replica.handle_name.is_not(None))))
        for container in self.runtime.find(kind="replica"):
            if container.name in owned and container.status == "running":
                continue  # re-adopted: the controller finds it alive by name
            if container.status == "running":
                self.log.warning("Removing replica container %s: no replica owns it",
                                 container.name)
                self.runtime.stop(container.id, self.stop_grace_seconds)
            self.runtime.remove(container.id)

    async def close(self, *, stop_all: bool) -> None:
        await super().close(stop_all=stop_all)
        self.close_runtime()

    # -- replicas --------------------------------------------------------------------------------

    def request(self, launch: ReplicaLaunch, port: int) -> ContainerRequest:
        """What the replica's container is made of (pure: tests read it without an engine).
        ``port`` is the host's 127.0.0.1 port the router reaches the replica at."""
        runtime = launch.runtime
        if "@" not in runtime.image_reference:
            raise LookupError(
                f"image {runtime.image!r} has no pinned digest ({runtime.image_reference}); an "
                "admin builds it (`fermi images build`) or pulls it on the images page, then "
                "the deployment is created again")
        url = f"http://127.0.0.1:{port}"
        env = {**runtime.env, "PYTHONUNBUFFERED": "1",
               # the router derives the same key from its token and this URL (replica_key.py)
               ENV_REPLICA_KEY: replica_key(self._token(), url)}
        command = [PYTHON, "-m", "fermi_extension.serving.server",
                   "--model-dir", MODEL_FOLDER, "--model-name", launch.model,
                   "--model-version", launch.version, "--port", str(SERVER_PORT),
                   # every interface of its own network namespace: the published port arrives
                   # on the bridge's, not on the container's loopback
                   "--host", "0.0.0.0"]
        return ContainerRequest(
            name=container_name(launch.replica_id),
            image=runtime.image_reference,
            command=command,
            env=env,
            limits=limits_of(runtime.cpu, runtime.memory, self.pids_limit),
            labels={KIND: "replica", DEPLOYMENT: launch.deployment, REPLICA: launch.replica_id,
                    PROFILE: runtime.profile},
            mounts=[Mount(str(launch.model_dir), MODEL_FOLDER, read_only=True)],
            ports={SERVER_PORT: port},
        )

    async def start_replica(self, launch: ReplicaLaunch) -> ReplicaHandle:
        if launch.engine == "vllm":
            return await super().start_replica(launch)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        name = container_name(launch.replica_id)
        try:
            request = self.request(launch, port)
            await asyncio.to_thread(self.runtime.run, request)
        except LookupError as refusal:
            # a replica that never started: the controller finds it gone, tells the
            # deployment's events why (replica_log) and backs off like after any crash
            self._refused[launch.replica_id] = f"The replica could not start: {refusal}."
        return ReplicaHandle(None, None, url, name)

    def alive(self, handle: ReplicaHandle) -> bool:
        if not handle.name:
            return super().alive(handle)
        return self.runtime.running(handle.name)

    async def stop_replica(self, handle: ReplicaHandle) -> None:
        if not handle.name:
            return await super().stop_replica(handle)
        await asyncio.to_thread(self.runtime.stop, handle.name, self.stop_grace_seconds)
        await asyncio.to_thread(self.runtime.remove, handle.name)

    def replica_log(self, replica_id: str, lines: int = 20) -> str:
        """The container's own log. The controller asks for it when it finds a replica gone:
        an ended container is then read once — why it ended first — and removed."""
        if replica_id in self._refused:
            return self._refused.pop(replica_id)
        name = container_name(replica_id)
        container = self.runtime.get(name)
        if container is None:
            return super().replica_log(replica_id, lines)  # a vLLM replica's process log
        tail = container.logs(tail=lines).decode(errors="replace").rstrip()
        if container.status in ("running", "created", "paused"):
            return tail
        ended = self.runtime.exit(container)
        self.runtime.remove(container.id)
        if ended.oom:
            why = self._oom_message(container.labels)
        else:
            why = f"The replica's container exited with code {ended.code}."
        return f"{why}\n{tail}" if tail else why

    def _oom_message(self, labels: dict) -> str:
        profile = labels.get(PROFILE, "?")
        try:
            from ...catalog.store import CatalogStore
            from ...db import Deployment

            with self.session_factory() as session:
                deployment = session.get(Deployment, labels.get(DEPLOYMENT, ""))
                owner = deployment.owner if deployment is not None else ""
            catalog = CatalogStore(self.session_factory).catalog()
            return out_of_memory(catalog, Caller(owner), profile, what="The replica")
        except Exception:  # noqa: BLE001 - the message without a suggestion
            return (f"The replica exceeded the memory of profile {profile} and was stopped (out "
                    "of memory); pick a profile with more memory.")


def container_name(replica_id: str) -> str:
    return f"fermi-replica-{replica_id}"
