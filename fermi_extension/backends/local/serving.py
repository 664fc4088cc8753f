"""Inference services on this machine: model-server processes behind one router process.

Replicas and the router run in sessions of their own, so a control plane that dies (even with
-9) leaves every endpoint answering; the next one adopts them (pid + start time).

Replicas accept only the router: each is started with its key (``serving.replica_key``, derived
from the router's admin token and the replica's URL), which the router derives in turn.

Readiness has one source of truth, the router: ``stats()`` is its admin API's ``/stats``, whose
``readiness: true`` tells the controller to count a replica (and a deployment) as ready only
once the router's own table routes to it; ``ready()`` (the replica's health check) only decides
what the controller publishes to the router.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
from traitlets import Int, Unicode, default

from ...catalog.schema import Pool, Profile
from ...deployments.backend import ReplicaHandle, ReplicaLaunch, ServingBackend
from ...jobs.files import read_json, write_json_atomic
from ...processes import free_port, identity, is_alive, kill_tree, port_is_free
from ...serving.replica_key import (ENV_REPLICA_KEY, ENV_VLLM_API_KEY, replica_auth_header,
                                    replica_key)
from ...workload_env import workload_env
from .gpus import detect_gpus


class LocalServingBackend(ServingBackend):
    serving_dir = Unicode(help="Folder of the router's state, replica logs and fetched models.").tag(config=True)

    @default("serving_dir")
    def _default_serving_dir(self):
        return str(Path(os.environ.get("FERMI_DATA_DIR", "fermi-data")) / "serving")

    router_port = Int(help="Public port of the router (default: $FERMI_SERVING_PORT).").tag(config=True)

    @default("router_port")
    def _default_router_port(self):
        return int(os.environ.get("FERMI_SERVING_PORT", "8001"))

    router_ip = Unicode(help="Address the router listens on (default: $FERMI_IP).").tag(config=True)

    @default("router_ip")
    def _default_router_ip(self):
        return os.environ.get("FERMI_IP", "127.0.0.1")

    hub_api_url = Unicode(help="The hub API the router checks tokens with.").tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dir = Path(self.serving_dir)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "router.json"
        self.routes_path = self.dir / "routes.json"
        self.token_path = self.dir / "admin-token"
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(24))
            self.token_path.chmod(0o600)
        self._http = httpx.AsyncClient(timeout=2)

    # -- capacity ------------------------------------------------------------------------------

    def availability(self, profile: Profile, pool: Pool, engine: str) -> tuple[bool, str | None]:
        gpus = len(detect_gpus())
        if engine == "vllm" and (profile.gpu == 0 or gpus == 0):
            return False, (
                "The vllm engine needs a GPU profile on a machine with a GPU; this machine has "
                f"{gpus} GPU(s) and profile {profile.slug!r} asks for {profile.gpu}. Deploy with "
                "engine 'auto' (scikit-learn / MLflow models) here, or use the Kubernetes backend."
            )
        if profile.gpu > gpus:
            return False, (
                f"Profile {profile.slug!r} needs {profile.gpu} GPU(s); this machine has {gpus}. "
                "Choose a CPU profile."
            )
        return True, None

    # -- the router ----------------------------------------------------------------------------

    async def start(self) -> None:
        state = read_json(self.state_path) or {}
        if is_alive(state.get("pid"), state.get("started")):
            self._admin = f"http://127.0.0.1:{state['admin_port']}"
            health = await self._admin_health()
            if health is None or (health.get("replica_keys") is True
                                  and health.get("readiness") is True):
                return
            # a router from before replica keys (replicas started from now on would refuse it)
            # or before it reported readiness (the control plane's "ready" waits on its word)
            self.log.warning("Restarting the router (pid %s): it is older than this control plane",
                             state["pid"])
            await asyncio.to_thread(kill_tree, state["pid"], state.get("started"), 10)
        if not self.routes_path.exists():
            write_json_atomic(self.routes_path, {"generation": 0, "deployments": {}})
        admin_port = state.get("admin_port")
        if not admin_port or not port_is_free(admin_port):
            admin_port = free_port()
        log = open(self.dir / "logs" / "router.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "fermi_extension.serving.router",
             "--port", str(self.router_port), "--host", self.router_ip,
             "--routes", str(self.routes_path), "--admin-port", str(admin_port),
             "--admin-token-file", str(self.token_path), "--hub-api-url", self.hub_api_url],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=workload_env(), start_new_session=True,
        )
        write_json_atomic(self.state_path, {"pid": process.pid, "started": identity(process.pid),
                                            "admin_port": admin_port})
        self._admin = f"http://127.0.0.1:{admin_port}"
        for _ in range(100):
            if await self._admin_ok():
                return
            if process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        self.log.error("The router did not start; see %s", self.dir / "logs" / "router.log")

    async def _admin_ok(self) -> bool:
        return await self._admin_health() is not None

    async def _admin_health(self) -> dict | None:
        try:
            response = await self._http.get(f"{self._admin}/healthz", headers=self._auth())
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _token(self) -> str:
        return self.token_path.read_text().strip()

    def _auth(self) -> dict:
        return {"Authorization": f"token {self._token()}"}

    def publish(self, routes: dict) -> None:
        write_json_atomic(self.routes_path, routes)

    async def stats(self) -> dict:
        try:
            response = await self._http.get(f"{self._admin}/stats", headers=self._auth())
            if response.status_code == 200:
                return response.json()
        except (httpx.HTTPError, AttributeError, ValueError):
            pass
        state = read_json(self.state_path) or {}
        if not is_alive(state.get("pid"), state.get("started")):
            self.log.warning("The router is not running; starting it again")
            await self.start()
        return {}

    # -- replicas ------------------------------------------------------------------------------

    async def start_replica(self, launch: ReplicaLaunch) -> ReplicaHandle:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = workload_env(launch.runtime.env)
        # in the environment, not the command line, which every user of the machine can read
        key = replica_key(self._token(), url)
        if launch.engine == "vllm":
            env[ENV_VLLM_API_KEY] = key  # vLLM's server checks it as a Bearer token
            command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                       "--model", str(launch.model_dir), "--served-model-name", launch.model,
                       "--host", "127.0.0.1", "--port", str(port)]
        else:
            env[ENV_REPLICA_KEY] = key
            command = [sys.executable, "-m", "fermi_extension.serving.server",
                       "--model-dir", str(launch.model_dir), "--model-name", launch.model,
                       "--model-version", launch.version, "--port", str(port)]
        log = open(self.dir / "logs" / f"{launch.replica_id}.log", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        return ReplicaHandle(process.pid, identity(process.pid), url)

    def alive(self, handle: ReplicaHandle) -> bool:
        return is_alive(handle.pid, handle.started)

    async def ready(self, handle: ReplicaHandle) -> bool:
        try:
            response = await self._http.get(f"{handle.url}/v2/health/ready",
                                            headers=replica_auth_header(self._token(), handle.url))
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def stop_replica(self, handle: ReplicaHandle) -> None:
        if handle.pid:
            await asyncio.to_thread(kill_tree, handle.pid, handle.started, 10)

    def replica_log(self, replica_id: str, lines: int = 20) -> str:
        path = self.dir / "logs" / f"{replica_id}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def model_dir(self, model: str, version: str) -> Path:
        return self.dir / "models" / model / str(version)

    async def close(self, *, stop_all: bool) -> None:
        if stop_all:
            state = read_json(self.state_path) or {}
            if state.get("pid"):
                await asyncio.to_thread(kill_tree, state["pid"], state.get("started"), 10)
        await self._http.aclose()


