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
            "hub": f"http://127.0.0.1:{self.ports['hub']}/hub/api/",
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
        env = self.env()
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
        (self.data / "up.json").unlink(missing_ok=True)
        print("Fermi stopped.", flush=True)
