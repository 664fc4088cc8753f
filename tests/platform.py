"""Starting and driving a real Fermi platform in tests (see conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nbformat
import psutil

from fermi_extension.processes import free_port

FERMI = [sys.executable, "-m", "fermi_extension.cli"]
ENDED = ("succeeded", "failed", "cancelled")


def make_notebook(*sources: str, parameters: str = "x = 1") -> dict:
    """A notebook with a ``parameters`` cell and the given code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(s) for s in (sources or ("y = x * 2",))]
    return json.loads(nbformat.writes(nb))


@dataclass
class User:
    name: str
    token: str
    base: str
    http: httpx.Client = field(init=False)

    def __post_init__(self):
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"token {self.token}"}, timeout=60
        )

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.http.request(method, f"/services/fermi/api/{path.lstrip('/')}", **kwargs)

    def submit(self, notebook: dict, expect: int = 201, **fields) -> dict:
        response = self.api("POST", "jobs", json={"notebook": notebook, **fields})
        assert response.status_code == expect, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.api("GET", f"jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, statuses=ENDED, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
            time.sleep(0.2)


class Platform:
    def __init__(self, data: Path, port: int, process: subprocess.Popen, admin_token: str):
        self.data, self.port, self.process = data, port, process
        self.url = f"http://127.0.0.1:{port}"
        self.admin_token = admin_token
        self.admin = User("admin", admin_token, self.url)

    @property
    def ports(self) -> dict:
        return json.loads((self.data / "platform.json").read_text())["ports"]

    @property
    def tracking_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['tracking']}"

    def user(self, name: str, groups: list[str] | None = None) -> User:
        hub = self.admin.http
        response = hub.post(f"/hub/api/users/{name}")
        assert response.status_code in (201, 409), response.text
        for group in groups or []:
            hub.post(f"/hub/api/groups/{group}")
            hub.post(f"/hub/api/groups/{group}/users", json={"users": [name]})
        token = hub.post(f"/hub/api/users/{name}/tokens", json={"note": "tests"}).json()["token"]
        return User(name, token, self.url)

    def log_tail(self, lines: int = 80) -> str:
        path = self.data / "logs" / "hub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> None:
        """Stop ``fermi up`` as a user would (Ctrl-C), then make sure every process it started
        (hub, services, job and replica processes in sessions of their own) went with it: a
        ``kill()`` of ``fermi up`` alone would leave them to init."""
        try:
            started = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _, left = psutil.wait_procs(started, timeout=10)
        for process in left:
            try:
                print(f"fermi up left pid {process.pid} running: {' '.join(process.cmdline())}",
                      file=sys.stderr)
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)


def dataset_settings(config_dir: Path, roots: list[Path], claims: list[str]) -> dict:
    """The environment for ``start_platform`` that allows datasets inside ``roots`` and on
    ``claims`` (FermiService.dataset_roots and dataset_claims; the production default is none).
    The hub's spawners read $FERMI_DATASET_ROOTS and $FERMI_DATASET_CLAIMS; the control plane,
    a hub service that starts with only the environment hub_config gives it, gets the same
    lists in its config file ($FERMI_SERVICE_CONFIG)."""
    config = Path(config_dir) / "service_config.py"
    config.write_text(f"c.FermiService.dataset_roots = {[str(r) for r in roots]!r}\n"
                      f"c.FermiService.dataset_claims = {list(claims)!r}\n")
    return {"FERMI_DATASET_ROOTS": os.pathsep.join(str(r) for r in roots),
            "FERMI_DATASET_CLAIMS": ",".join(claims), "FERMI_SERVICE_CONFIG": str(config)}


def start_platform(data: Path, port: int | None = None, admin_token: str = "test-admin-token",
                   timeout: float = 180, env: dict | None = None,
                   serving_port: int | None = None) -> Platform:
    port = port or free_port()
    serving_port = serving_port or free_port()
    process = subprocess.Popen(
        [*FERMI, "up", "--data-dir", str(data), "--port", str(port),
         "--serving-port", str(serving_port)],
        # processes unless the test asks for containers (tests/containers), whatever engine
        # this machine has: the suite's shared platform tests the platform's own rules. As
        # root, under the platform's account unless the test (tests/test_unix_accounts.py) or
        # the run (FERMI_UNIX_ACCOUNTS=on) asks for per-user accounts: a data dir in pytest's
        # basetemp loses the ACL that lets accounts enter it whenever a pytest session starts
        # on this machine (each one chmods that folder's root to 0700)
        env={**os.environ, "FERMI_ADMIN_TOKEN": admin_token, "FERMI_CONTAINER_ENGINE": "none",
             "FERMI_UNIX_ACCOUNTS": os.environ.get("FERMI_UNIX_ACCOUNTS", "off"),
             **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    platform = Platform(Path(data), port, process, admin_token)
    platform.serving_port = serving_port
    platform.serving_url = f"http://127.0.0.1:{serving_port}"
    deadline = time.monotonic() + timeout
    output = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        output.append(line)
        if line.startswith("Fermi is running at"):
            # keep draining the pipe so that `fermi up` never blocks on a full one
            import threading

            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return platform
    platform.stop()
    raise RuntimeError("fermi up did not start:\n" + "".join(output) + "\n" + platform.log_tail())
