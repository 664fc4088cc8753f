"""Shared helpers for the Fermi benchmarks: start/stop a platform, users, notebooks, statistics,
and seeding the control-plane database with ended jobs.

Only the standard library, httpx and psutil, plus the platform's own SQLAlchemy models
(``fermi_extension.db``) for seeding. Every platform started here is stopped again by
``Platform.stop`` (SIGINT to ``fermi up``, then a forced kill of whatever is left), which the
benchmark scripts call from a ``finally`` block.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform as _platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FERMI = str(VENV_BIN / "fermi") if (VENV_BIN / "fermi").exists() else "fermi"
API = "/services/fermi/api"
ENDED = ("succeeded", "failed", "cancelled")


# -- small things ---------------------------------------------------------------------------------

def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))  # ceil(p/100 * n)
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict:
    return {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": _platform.platform(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_notebook(*sources: str, parameters: str | None = "x = 1") -> dict:
    """An nbformat 4.5 notebook dict (kernelspec python3): an optional ``parameters``-tagged cell
    followed by the given code cells."""
    cells = []
    if parameters is not None:
        cells.append({"id": uuid.uuid4().hex[:8], "cell_type": "code", "execution_count": None,
                      "metadata": {"tags": ["parameters"]}, "outputs": [], "source": parameters})
    for source in sources:
        cells.append({"id": uuid.uuid4().hex[:8], "cell_type": "code", "execution_count": None,
                      "metadata": {}, "outputs": [], "source": source})
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": cells,
    }


# -- the platform ---------------------------------------------------------------------------------

class Platform:
    """One `fermi up` process on a free port with its own data dir."""

    def __init__(self, data: Path, port: int | None = None, admin_token: str | None = None):
        self.data = Path(data)
        self.port = port or free_port()
        self.admin_token = admin_token or secrets.token_hex(16)
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self._seen: dict[int, psutil.Process] = {}
        self.start_seconds: float | None = None

    # lifecycle
    def start(self, timeout: float = 240) -> "Platform":
        if not self._port_free(self.port):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        self.output = []
        env = {**os.environ, "FERMI_ADMIN_TOKEN": self.admin_token}
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            [FERMI, "up", "--data-dir", str(self.data), "--port", str(self.port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches us, not `fermi up`
        )
        ready = threading.Event()

        def drain() -> None:  # read the banner, then keep the pipe from filling up
            for line in self.process.stdout:
                self.output.append(line)
                if line.startswith("Fermi is running at"):
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready.is_set():
            if self.process.poll() is not None:
                break
            ready.wait(0.2)
        if not ready.is_set():
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(
                f"fermi up did not print its banner within {timeout} s:\n" + "".join(self.output)
                + "\n--- hub.log tail ---\n" + tail
            )
        self.start_seconds = time.monotonic() - t0
        self.remember_processes()
        return self

    @staticmethod
    def _port_free(port: int) -> bool:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    def descendants(self) -> list[psutil.Process]:
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def remember_processes(self) -> None:
        for proc in self.descendants():
            self._seen[proc.pid] = proc

    def stop(self, timeout: float = 120) -> None:
        """SIGINT to `fermi up`, wait for it; then kill anything it started that is still alive."""
        if self.process is None:
            return
        self.remember_processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"fermi up did not exit {timeout} s after SIGINT; killing it")
                self.process.kill()
                self.process.wait(10)
        leftovers = []
        for proc in self._seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(proc)
            except psutil.NoSuchProcess:
                pass
        if leftovers:
            log("processes left after `fermi up` exited (killed now): "
                + ", ".join(f"{p.pid} {short_cmd(p)}" for p in leftovers))
            for proc in leftovers:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(leftovers, timeout=10)
        self.leftovers = [f"{p.pid} {short_cmd(p)}" for p in leftovers]

    def log_tail(self, lines: int = 60) -> str:
        path = self.data / "logs" / "hub.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # clients
    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60),
                            headers={"Authorization": f"token {token or self.admin_token}"},
                            **kwargs)

    def create_user(self, name: str) -> str:
        """Create a hub user (if needed) and return a new API token for it."""
        with self.client() as hub:
            response = hub.post(f"/hub/api/users/{name}")
            if response.status_code not in (201, 409):
                raise RuntimeError(f"create user {name}: {response.status_code} {response.text}")
            response = hub.post(f"/hub/api/users/{name}/tokens", json={})
            if response.status_code != 201:
                raise RuntimeError(f"token for {name}: {response.status_code} {response.text}")
            return response.json()["token"]

    @property
    def db_path(self) -> Path:
        return self.data / "fermi.sqlite"


def short_cmd(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    text = " ".join(cmd)
    return text if len(text) < 110 else text[:107] + "..."


def classify(proc: psutil.Process) -> str:
    """Which part of the platform a process is, from its command line."""
    cmd = " ".join(proc.cmdline())
    if "fermi_extension.service.app" in cmd:
        return "control plane"
    if "fermi_extension.backends.local.launcher" in cmd:
        return "job launcher"
    if "fermi_extension.tracking.server" in cmd:
        return "tracking server"
    if "configurable-http-proxy" in cmd:
        return "proxy"
    if "jupyterhub" in cmd and "singleuser" not in cmd:
        return "hub"
    if "ipykernel" in cmd:
        return "kernel"
    if "fermi" in cmd and " up " in f" {cmd} ":
        return "fermi up"
    return "other"


def process_by_role(platform: Platform, role: str) -> psutil.Process | None:
    for proc in platform.descendants():
        try:
            if classify(proc) == role:
                return proc
        except psutil.Error:
            continue
    return None


# -- seeding the control-plane database -----------------------------------------------------------

def seed_ended_jobs(db_path: Path, count: int = 10_000, owners: list[str] | None = None,
                    heavy_owner_share: int = 2_000, seed: int = 1) -> dict[str, int]:
    """Insert ``count`` ended jobs into the control-plane DB with the platform's SQLAlchemy models.

    ``owners[0]`` gets ``heavy_owner_share`` jobs, the others share the rest evenly. Jobs are
    spread over the last 90 days, with succeeded/failed/cancelled statuses and one ``queued``
    and one final event each (as real jobs have). Returns jobs per owner.
    """
    sys.path.insert(0, str(REPO))
    from fermi_extension.db import Job, JobEvent, make_session_factory

    owners = owners or [f"user{i:02d}" for i in range(20)]
    rng = random.Random(seed)
    per_owner = {owners[0]: heavy_owner_share}
    rest = count - heavy_owner_share
    others = owners[1:]
    for i, owner in enumerate(others):
        per_owner[owner] = rest // len(others) + (1 if i < rest % len(others) else 0)
    # what runtime_spec() stores for the default image/profile (a real job's is reused if present)
    runtime = {"image": "python-local", "image_version": "2025-06-30",
               "image_reference": "quay.io/jupyter/scipy-notebook", "image_local": True,
               "kernel": "python3", "profile": "cpu-small", "pool": "cpu", "cpu": 1.0,
               "memory": "2Gi", "gpu": 0, "gpu_resource": "nvidia.com/gpu", "gpu_type": None,
               "node_selector": {}, "tolerations": [], "price_per_hour": 0.05, "env": {}}
    factory = make_session_factory(f"sqlite:///{db_path}")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with factory() as session:
        existing = session.query(Job).first()
        if existing is not None and existing.runtime:
            runtime = dict(existing.runtime)
        batch = 0
        for owner, n in per_owner.items():
            for _ in range(n):
                created = now - dt.timedelta(seconds=rng.uniform(60, 90 * 86400))
                started = created + dt.timedelta(seconds=rng.uniform(0.5, 30))
                finished = started + dt.timedelta(seconds=rng.uniform(2, 3600))
                status = rng.choices(ENDED, weights=(80, 15, 5))[0]
                job_id = uuid.uuid4().hex[:12]
                job = Job(
                    id=job_id, name=f"train-{rng.randrange(1000)}", owner=owner, status=status,
                    reason=None if status == "succeeded" else f"{status} (seeded)",
                    priority=0, image=runtime.get("image", "python-local"),
                    profile=runtime.get("profile", "cpu-small"), pool=runtime.get("pool", "cpu"),
                    runtime=runtime, notebook_name="train.ipynb",
                    parameters={"lr": rng.choice([0.1, 0.01, 0.001]), "epochs": rng.randrange(1, 50)},
                    timeout_seconds=None, max_retries=1, attempt=1,
                    created_at=created, started_at=started, finished_at=finished,
                    progress={"cells_total": 5, "cells_done": 5, "current_cell": None},
                    metrics={"accuracy": round(rng.random(), 4)},
                    tracking_run_id=uuid.uuid4().hex, tracking_experiment_id="1",
                )
                session.add(job)
                session.add(JobEvent(job_id=job_id, at=created, kind="queued",
                                     message=f"queued by {owner} on cpu-small (python-local)"))
                session.add(JobEvent(job_id=job_id, at=finished, kind=status,
                                     message=job.reason or "finished"))
                batch += 1
                if batch % 1000 == 0:
                    session.commit()
        session.commit()
    factory.kw["bind"].dispose()
    return per_owner


def timed_gets(client: httpx.Client, path: str, n: int, warmup: int = 10) -> list[float]:
    """``n`` sequential GETs (after ``warmup`` untimed ones); latencies in ms. Raises on non-200."""
    for _ in range(warmup):
        response = client.get(path)
        response.raise_for_status()
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(path)
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return latencies


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
