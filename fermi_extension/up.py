"""`fermi up`: the whole platform on one machine.

Starts JupyterHub with ``hub_config/jupyterhub_config.py``; the hub starts the proxy, the control
plane and the tracking server as its managed services, and restarts any that dies. This process
watches the hub, restarts it if it dies, and on Ctrl-C stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from .paths import shipped
from .processes import die_with_parent, free_port, identity, is_alive, port_is_free

PORT_NAMES = ("hub", "proxy_api", "service", "tracking")


def _state(data: Path, public_port: int, serving_port: int) -> dict:
    """Ports and secrets kept across restarts, so that jobs still running after a crash find the
    tracking server where they left it."""
    path = data / "platform.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    ports = state.get("ports", {})
    taken = {public_port, serving_port}
    for name in PORT_NAMES:
        port = ports.get(name)
        if not port or port in taken or not port_is_free(port):
            port = free_port()
            while port in taken:
                port = free_port()
        ports[name] = port
        taken.add(port)
    state["ports"] = ports
    state.setdefault("proxy_token", secrets.token_hex(32))
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)
    return state


def _admin_password(data: Path) -> tuple[str, bool]:
    path = data / "admin-password"
    if os.environ.get("FERMI_ADMIN_PASSWORD"):
        return os.environ["FERMI_ADMIN_PASSWORD"], False
    if path.exists():
        return path.read_text().strip(), False
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password, True


def _previous(data: Path) -> None:
    """Refuse to start twice on one data dir; stop a hub orphaned by a killed `fermi up`."""
    path = data / "up.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    if is_alive(previous.get("pid"), previous.get("started")):
        sys.exit(f"Fermi is already running on {data} (pid {previous['pid']}); stop it first.")
    hub = previous.get("hub", {})
    if is_alive(hub.get("pid"), hub.get("started")):
        os.killpg(hub["pid"], signal.SIGTERM)
        for _ in range(100):
            if not is_alive(hub.get("pid"), hub.get("started")):
                break
            time.sleep(0.1)


def _stop_stale_proxy(data: Path) -> None:
    """The proxy runs in a session of its own; a hub that died abruptly leaves it behind."""
    pid_file = data / "jupyterhub-proxy.pid"
    try:
        pid = int(pid_file.read_text().strip())
        process = psutil.Process(pid)
        if "configurable-http-proxy" in " ".join(process.cmdline()):
            process.terminate()
            process.wait(5)
    except (OSError, ValueError, psutil.Error):
        pass
    pid_file.unlink(missing_ok=True)


def _router_owns(data: Path, port: int) -> bool:
    """The inference router outlives the rest of the platform on purpose (endpoints keep
    answering); the next control plane adopts it, so its port is not a conflict."""
    state_path = data / "serving" / "router.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return False
    return is_alive(state.get("pid"), state.get("started"))


def private_data_dir(data: Path) -> None:
    """The data dir holds password hashes, tokens and every user's jobs: only this account reads
    it. Everything the platform creates from here on is private too (the umask reaches the hub
    and every process it starts), and what an earlier version left readable is closed."""
    os.umask(0o077)
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    for folder in (data, data / "logs", data / "mlflow", data / "serving", data / "serving" / "logs"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if info.st_mode & 0o077 and not entry.is_symlink():
                os.chmod(entry.path, info.st_mode & 0o700)  # the owner's bits, no one else's


class _Terminal:
    """The log of `fermi up` is its terminal."""

    def info(self, message: str, *args) -> None:
        print(message % args, flush=True)

    warning = info


def upgrade_database(data: Path) -> bool:
    """Before any platform process opens it, the platform database gets this version's schema
    (a SQLite file that holds data is copied aside first, and the terminal says where)."""
    from .db import platform_db_url, upgrade_if_needed

    try:
        upgrade_if_needed(platform_db_url(data), log=_Terminal())
    except Exception as error:  # noqa: BLE001 - nothing starts on a database that failed to upgrade
        print(f"The platform database could not be upgraded: {error}", file=sys.stderr)
        return False
    return True


def _ready(url: str, timeout: float = 0.5) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def isolate(data: Path) -> tuple[dict, object, object]:
    """Choose how workloads run (``containers/engine.py``). With an engine: the official image
    of this Fermi exists and is pinned in the catalogue, and the bridge that workloads reach the
    platform on is up. Returns the environment that hands this to the platform's processes,
    the isolation, and podman's service when this process started it."""
    from .containers.engine import find_engine

    isolation, service = find_engine(data / "containers")
    if not isolation.containers:
        isolation = with_accounts(data, isolation)
        return isolation.env(), isolation, None
    try:
        env = prepare_containers(data, isolation)
    except Exception as error:  # noqa: BLE001 - say why, then run without containers
        from .containers.engine import Isolation

        if service is not None:
            service.stop()
        isolation = with_accounts(data, Isolation(
            "processes", reason=f"the container engine could not be prepared: {error}"))
        return isolation.env(), isolation, None
    if service is not None:
        env.update(service.env())
    return {**isolation.env(), **env}, isolation, service


def with_accounts(data: Path, isolation):
    """Without containers, as root: each user's processes under a Unix account of their own
    (``unix_accounts.py``), unless the admin opted out or this machine cannot have them (then
    processes of the platform's account, and the reason says why)."""
    from . import unix_accounts
    from .containers.engine import Isolation

    if not unix_accounts.wanted():
        return isolation
    try:
        granted = unix_accounts.prepare(data)
    except (unix_accounts.AccountError, OSError) as error:
        return Isolation("processes", reason=f"{isolation.reason}; no per-user accounts: {error}")
    for folder in granted:
        print(f"  Group {unix_accounts.GROUP} may now enter {folder} (search only, an ACL "
              "entry): user accounts reach their own folders and the platform's Python through "
              "it.", flush=True)
    return Isolation("accounts", reason=isolation.reason)


def prepare_containers(data: Path, isolation) -> dict:
    from .catalog.store import CatalogStore, load_catalog_file, seed_path
    from .containers.engine import connect
    from .containers.images import BASE, ensure_official, record
    from .containers.runtime import Runtime, network_anchor, platform_id
    from .db import make_session_factory, platform_db_url

    client = connect(isolation.url, timeout=1800)
    try:
        print("Checking the official image (the first start builds it: a few minutes) …",
              flush=True)
        built = ensure_official(client, "python", data / "containers" / "cache",
                                log=lambda line: print("  " + line, flush=True))
    finally:
        client.close()
    sessions = make_session_factory(platform_db_url(data))
    store = CatalogStore(sessions)
    store.seed_if_empty(load_catalog_file(seed_path()))
    try:
        image = store.get("images", built.slug)
        pinned = image.reference == built.repository and any(
            v.digest == built.digest for v in image.versions[:1])
    except Exception:  # noqa: BLE001 - an admin removed it: nothing to pin
        pinned = True
    if not pinned:
        record(sessions, built, by="fermi up")
        print(f"  Pinned {built.reference} in the catalogue ({built.slug}).", flush=True)
    runtime = Runtime(isolation.url, platform_id(str(data)))
    try:
        gateway = network_anchor(runtime, BASE)
    finally:
        runtime.close()
    return {"FERMI_WORKLOAD_IP": gateway}


def remove_network_anchor(url: str, data: Path) -> None:
    """Running workloads keep the bridge up by themselves; the anchor is for the next start."""
    from .containers.runtime import Runtime, platform_id

    try:
        runtime = Runtime(url, platform_id(str(data)))
        try:
            runtime.remove(f"fermi-network-{runtime.platform}")
        finally:
            runtime.close()
    except Exception as error:  # noqa: BLE001 - the engine may be gone already
        print(f"Could not remove the network anchor container: {error}", file=sys.stderr)


class Platform:
    def __init__(self, port: int, ip: str, data_dir: str, public_url: str | None,
                 log_to_terminal: bool, serving_port: int | None = None):
        self.port, self.ip = port, ip
        self.serving_port = serving_port or port + 1
        self.data = Path(data_dir).resolve()
        host = "127.0.0.1" if ip in ("0.0.0.0", "") else ip
        self.public_url = (public_url or f"http://{host}:{port}").rstrip("/")
        self.serving_url = f"http://{host}:{serving_port or port + 1}"
        self.log_to_terminal = log_to_terminal
        self.hub: subprocess.Popen | None = None
        self.stopping = False
        self.isolation = None
        self.engine_service = None
        self.hub_host = "127.0.0.1"

    def env(self) -> dict:
        state = _state(self.data, self.port, self.serving_port)
        password, self.new_password = _admin_password(self.data)
        self.password = password
        ports = state["ports"]
        env = dict(os.environ)
        # the platform's own commands (proxy, single-user server) come from this environment
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update({
            "FERMI_DATA_DIR": str(self.data),
            "FERMI_IP": self.ip,
            "FERMI_PUBLIC_URL": self.public_url,
            "FERMI_PUBLIC_PORT": str(self.port),
            "FERMI_SERVING_PORT": str(self.serving_port),
            "FERMI_SERVING_URL": self.serving_url,
            "FERMI_PROXY_TOKEN": state["proxy_token"],
            "FERMI_ADMIN_PASSWORD": password,
            "FERMI_INTERNAL_API_URL": f"http://127.0.0.1:{ports['service']}/services/fermi/api",
            **{f"FERMI_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        })
        self.ports = ports
        return env

    def start_hub(self, env: dict) -> None:
        log_dir = self.data / "logs"
        log_dir.mkdir(exist_ok=True)
        output = None if self.log_to_terminal else open(log_dir / "hub.log", "ab")
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "fermi_extension.start_hub", "-f", str(shipped("hub_config") / "jupyterhub_config.py")],
            cwd=self.data, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
            start_new_session=True,  # Ctrl-C reaches `fermi up` only, which stops things in order
            preexec_fn=die_with_parent,
        )
        (self.data / "up.json").write_text(json.dumps({
            "pid": os.getpid(), "started": identity(os.getpid()),
            "hub": {"pid": self.hub.pid, "started": identity(self.hub.pid)},
        }))

    def wait_ready(self, timeout: float = 180) -> bool:
        checks = {
            "hub": f"http://{self.hub_host}:{self.ports['hub']}/hub/api/",
            "control plane": f"http://127.0.0.1:{self.ports['service']}/services/fermi/api/health",
            "tracking server": f"http://127.0.0.1:{self.ports['tracking']}/health",
            "proxy": f"http://127.0.0.1:{self.port}/hub/api/",
        }
        deadline = time.monotonic() + timeout
        pending = dict(checks)
        while pending and time.monotonic() < deadline:
            if self.hub.poll() is not None:
                return False
            for name, url in list(pending.items()):
                if _ready(url):
                    pending.pop(name)
            time.sleep(0.2)
        if pending:
            print(f"Still waiting for: {', '.join(pending)} (see {self.data / 'logs'})", flush=True)
        return not pending

    def banner(self) -> str:
        url = self.public_url
        lines = [
            "",
            f"Fermi is running at {url}/",
            f"  Log in as 'admin' with password {self.password}"
            + (f"  (kept in {self.data / 'admin-password'})" if not os.environ.get("FERMI_ADMIN_PASSWORD") else ""),
            f"  Researchers sign up at {url}/hub/signup; the admin approves them at {url}/hub/authorize",
            f"  Control-plane API: {url}/services/fermi/api/  (OpenAPI: {url}/services/fermi/api/openapi.json)",
            f"  Inference services answer at {self.serving_url}/<deployment>/v2/…",
            f"  State: {self.data}   Logs: {self.data / 'logs'}",
            f"  Isolation: {self.isolation.describe()}",
            "Press Ctrl-C to stop.",
            "",
        ]
        return "\n".join(lines)

    def stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> int:
        private_data_dir(self.data)
        _previous(self.data)
        _stop_stale_proxy(self.data)
        for port, option in ((self.port, "--port"), (self.serving_port, "--serving-port")):
            if not port_is_free(port, self.ip or "0.0.0.0") and not _router_owns(self.data, port):
                print(f"Port {port} is in use; choose another with {option}.", file=sys.stderr)
                return 2
        if not upgrade_database(self.data):
            return 1
        isolation_env, self.isolation, self.engine_service = isolate(self.data)
        print(f"Workloads run as {self.isolation.describe()}.", flush=True)
        env = {**self.env(), **isolation_env}
        # the hub listens where containers reach it (hub_config): check it there
        self.hub_host = isolation_env.get("FERMI_WORKLOAD_IP") or "127.0.0.1"
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        print(f"Starting Fermi (data in {self.data}) …", flush=True)
        self.start_hub(env)
        if self.wait_ready():
            print(self.banner(), flush=True)
        elif self.hub.poll() is not None and not self.stopping:
            print(f"JupyterHub exited during start-up; see {self.data / 'logs' / 'hub.log'}",
                  file=sys.stderr)
            return 1
        restarts: list[float] = []
        while not self.stopping:
            time.sleep(0.2)
            if self.hub.poll() is not None and not self.stopping:
                restarts = [t for t in restarts if time.monotonic() - t < 300] + [time.monotonic()]
                if len(restarts) > 5:
                    print("JupyterHub keeps exiting; giving up. See the hub log.", file=sys.stderr)
                    return 1
                print(f"JupyterHub exited ({self.hub.returncode}); restarting it …", flush=True)
                self.start_hub(env)
                self.wait_ready()
        print("Stopping Fermi …", flush=True)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        if self.hub and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            try:
                self.hub.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub.pid, signal.SIGKILL)
        try:
            os.killpg(self.hub.pid, signal.SIGKILL)  # anything left in the hub's session
        except (ProcessLookupError, PermissionError, TypeError, AttributeError):
            pass
        _stop_stale_proxy(self.data)
        if self.isolation is not None and self.isolation.containers:
            remove_network_anchor(self.isolation.url, self.data)
        if self.engine_service is not None:
            self.engine_service.stop()  # the containers live on; the next start re-adopts them
        (self.data / "up.json").unlink(missing_ok=True)
        print("Fermi stopped.", flush=True)
