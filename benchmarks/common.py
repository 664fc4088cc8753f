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
import shutil
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


def stop_on_sigterm() -> None:
    """Make SIGTERM (what `timeout` sends) raise SystemExit in the main thread, so that the
    scripts' ``finally`` blocks still stop every process they started."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


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

    def __init__(self, data: Path, port: int | None = None, admin_token: str | None = None,
                 serving_port: int | None = None, containers: bool = False):
        self.data = Path(data)
        # False: workloads as host processes (FERMI_CONTAINER_ENGINE=none), whatever engine the
        # machine has; True: what `fermi up` does by itself where podman is installed
        self.containers = containers
        self.port = port or free_port()
        # the inference router's port (`fermi up --serving-port`); its default, port + 1, may be taken
        self.serving_port = serving_port or free_port()
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
        while self.serving_port == self.port or not self._port_free(self.serving_port):
            self.serving_port = free_port()
        self.output = []
        env = {**os.environ, "FERMI_ADMIN_TOKEN": self.admin_token}
        if not self.containers:
            env["FERMI_CONTAINER_ENGINE"] = "none"
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            [FERMI, "up", "--data-dir", str(self.data), "--port", str(self.port),
             "--serving-port", str(self.serving_port)],
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
        # the router and the replicas run in sessions of their own and are meant to outlive a
        # dead control plane: remember them by their recorded pids too
        pids = [r["pid"] for r in replica_rows(self.db_path) if r.get("pid")]
        router = router_state(self.data).get("pid")
        if router:
            pids.append(router)
        for pid in pids:
            if pid not in self._seen:
                try:
                    proc = psutil.Process(pid)
                    if "fermi_extension.serving" in " ".join(proc.cmdline()):
                        self._seen[pid] = proc
                except psutil.Error:
                    pass

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
    if "fermi_extension.serving.router" in cmd:
        return "router"
    if "fermi_extension.serving.server" in cmd:
        return "model server"
    if "fermi_spawner.culler" in cmd:
        return "idle culler"
    if "fermi_extension.control_plane.app" in cmd:
        return "control plane"
    if "fermi_extension.backends.local.launcher" in cmd:
        return "job launcher"
    if "fermi_extension.tracking.server" in cmd:
        return "tracking server"
    if "configurable-http-proxy" in cmd:
        return "proxy"
    if ("fermi_extension.start_hub" in cmd or "jupyterhub" in cmd) and "singleuser" not in cmd:
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
    runtime = {"image": "python-local", "image_version": "0.1.0",
               "image_reference": "localhost/fermi/python", "image_local": True,
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


def record_failure(result: dict, platform: "Platform", error: Exception) -> None:
    """A run that broke: the error in the result, and the hub log's tail to see why."""
    result["error"] = f"{type(error).__name__}: {error}"
    log(f"ERROR: {result['error']}")
    log("hub.log tail:\n" + platform.log_tail(80))


def stop_and_wrap_up(args, result: dict, tmp: Path, platform) -> None:
    """Stop the platform, record any process it left behind, then ``wrap_up``."""
    platform.stop()
    result["leftover_processes"] = getattr(platform, "leftovers", [])
    wrap_up(args, result, tmp)


def wrap_up(args, result: dict, tmp: Path) -> None:
    """The end of every benchmark run: its JSON result (``--json``) and its temporary data dir
    removed, unless ``--keep`` asked to keep it for inspection."""
    if args.json:
        write_json(args.json, result)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"kept {tmp}")


# -- inference services ---------------------------------------------------------------------------

WINE_TEMPLATE = REPO / "notebooks" / "templates" / "tabular-classifier.ipynb"


MLSERVER_VENV = Path("/tmp/mlserver-venv")
# pinned: the V2 comparison tests state which of its answers differ from ours and why
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-mlflow==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]
# KServe's SDK pins older pandas, psutil and protobuf than the platform's: it gets a venv too
KSERVE_VENV = Path("/tmp/kserve-sdk-venv")
KSERVE_PACKAGES = ["kserve==0.21.0"]


def ensure_mlserver_venv(venv: Path = MLSERVER_VENV) -> dict:
    """Reuse ``venv`` when it has MLServer with its two runtimes and uvloop < 0.22; otherwise
    (re)create it with the platform's scikit-learn and skops versions pinned.

    A venv of its own because MLServer adds ~500 MB and pins of its own that the platform's
    environment must not take; the P3 benchmark and tests/serving/test_v2_clients.py share it.
    """
    def acceptable(found: dict) -> bool:
        # MLServer 1.7 crashes on uvloop 0.22 ("There is no current event loop")
        return tuple(int(x) for x in found["uvloop"].split(".")[:2]) < (0, 22)

    return ensure_venv(venv, MLSERVER_PACKAGES, ["mlserver", "mlserver_sklearn", "mlserver_mlflow",
                                                 "uvloop"], acceptable)


def ensure_kserve_venv(venv: Path = KSERVE_VENV) -> dict:
    """A venv with KServe's Python SDK (``kserve.InferenceRESTClient``), for driving it from a
    subprocess."""
    return ensure_venv(venv, KSERVE_PACKAGES, ["kserve"])


def ensure_venv(venv: Path, packages: list[str], modules: list[str], acceptable=None) -> dict:
    """Reuse ``venv`` when ``modules`` import in it (and ``acceptable(versions)``, if given);
    otherwise (re)create it with ``packages`` and the platform's scikit-learn and skops versions
    pinned. Returns the venv, whether it was created, and the versions found."""
    import fcntl

    import sklearn
    import skops

    python = venv / "bin" / "python"
    names = ["sklearn", "skops", *modules]
    check = (f"import json, {', '.join(names)}; print(json.dumps({{n: getattr(m, '__version__', '?') "
             f"for n, m in zip({names!r}, [{', '.join(names)}])}}))")

    def versions() -> dict | None:
        if not python.exists():
            return None
        done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return None
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if found["sklearn"] != sklearn.__version__ or (acceptable and not acceptable(found)):
            return None
        return found

    venv.parent.mkdir(parents=True, exist_ok=True)
    # two runs building the same venv at once remove each other's files mid-install (and a pip
    # whose venv lost its pyvenv.cfg installs into the base interpreter)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = versions()
        if found:
            return {"venv": str(venv), "created": False, "versions": found}
        pins = [*packages, f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"]
        log(f"creating the venv {venv} (first use; pip install {' '.join(pins)}); this takes minutes")
        t0 = time.monotonic()
        if venv.exists():
            shutil.rmtree(venv)
        base = getattr(sys, "_base_executable", None) or shutil.which("python3")
        subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
            capture_output=True, text=True, timeout=1500)
        if done.returncode != 0:
            raise RuntimeError(f"pip install into {venv} failed:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        seconds = time.monotonic() - t0
        found = versions()
        if not found:
            raise RuntimeError(f"{venv} was installed but {', '.join(modules)} do not import")
        size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0]
        log(f"venv {venv} created in {seconds:.0f} s ({size} MB): {found}")
        return {"venv": str(venv), "created": True, "install_seconds": round(seconds, 1),
                "size_mb": int(size), "versions": found}


def require_wrk() -> str:
    """The path of `wrk`, or exit 2 with a sentence saying how to get it."""
    import shutil

    path = shutil.which("wrk")
    if not path:
        print("ERROR: this benchmark needs `wrk` (HTTP load generator) on PATH and it is missing.\n"
              "Install it with: apt-get update && apt-get install -y wrk", file=sys.stderr, flush=True)
        sys.exit(2)
    return path


def wine_rows(n: int = 1) -> list[list[float]]:
    from sklearn.datasets import load_wine

    return load_wine().data[:n].tolist()


def v2_body(rows: list[list[float]]) -> dict:
    """A V2 infer request of rows of the wine data set as one FP64 tensor ``input-0``."""
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [x for row in rows for x in row]}]}


def register_wine_models(platform: "Platform", token: str, model: str,
                         cs: tuple[float, ...] = (1.0,), timeout: float = 300) -> list[dict]:
    """Run the tabular-classifier template as one job per C (in order), so that versions 1, 2, ...
    of ``model`` get registered. Returns the ended jobs; raises when one did not succeed."""
    notebook = json.loads(WINE_TEMPLATE.read_text())
    jobs = []
    with platform.client(token) as client:
        for c in cs:
            response = client.post(f"{API}/jobs", json={
                "notebook": notebook, "name": f"train-{model}-C{c}",
                "parameters": {"C": c, "model_name": model}})
            if response.status_code != 201:
                raise RuntimeError(f"submit template: {response.status_code} {response.text[:300]}")
            job_id = response.json()["id"]
            deadline = time.monotonic() + timeout
            while True:
                job = client.get(f"{API}/jobs/{job_id}").json()
                if job["status"] in ENDED:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"training job {job_id} still {job['status']} after {timeout} s")
                time.sleep(0.3)
            if job["status"] != "succeeded":
                raise RuntimeError(f"training job {job_id} {job['status']}: {job.get('reason')}")
            jobs.append(job)
    return jobs


def deploy(client: httpx.Client, **fields) -> dict:
    response = client.post(f"{API}/deployments", json=fields)
    if response.status_code != 201:
        raise RuntimeError(f"POST deployments: {response.status_code} {response.text[:500]}")
    return response.json()


def get_deployment(client: httpx.Client, name: str) -> dict:
    response = client.get(f"{API}/deployments/{name}")
    response.raise_for_status()
    return response.json()


def wait_deployment(client: httpx.Client, name: str, predicate, timeout: float = 120,
                    poll: float = 0.25, what: str = "condition") -> tuple[dict, float]:
    """Poll GET deployments/{name} until ``predicate(d)``; returns (d, seconds waited)."""
    t0 = time.monotonic()
    while True:
        d = get_deployment(client, name)
        if predicate(d):
            return d, time.monotonic() - t0
        if d.get("status") == "failed":
            raise RuntimeError(f"deployment {name} failed: {d.get('reason')}; events: {d.get('events')}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"deployment {name}: {what} not reached in {timeout} s: "
                               f"status {d.get('status')}, replicas {d.get('replicas')}")
        time.sleep(poll)


def ready_replicas(d: dict) -> list[dict]:
    return [r for r in d.get("replicas", []) if r["state"] == "ready"]


def replica_rows(db_path: Path) -> list[dict]:
    """Rows of the control plane's ``replicas`` table (read-only; [] when there is none yet)."""
    import sqlite3

    if not Path(db_path).exists():
        return []
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            cursor = connection.execute(
                "SELECT id, deployment, revision, state, url, pid FROM replicas")
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            connection.close()
    except sqlite3.Error:
        return []


def router_state(data: Path) -> dict:
    try:
        return json.loads((Path(data) / "serving" / "router.json").read_text())
    except (OSError, ValueError):
        return {}


def router_stats(data: Path) -> dict:
    """The router's admin ``/stats`` (per deployment and replica counters)."""
    state = router_state(data)
    token = (Path(data) / "serving" / "admin-token").read_text().strip()
    response = httpx.get(f"http://127.0.0.1:{state['admin_port']}/stats",
                         headers={"Authorization": f"token {token}"}, timeout=5)
    response.raise_for_status()
    return response.json()


def rss_mb(pid: int) -> dict:
    full = psutil.Process(pid).memory_full_info()
    mb = 1024 * 1024
    return {"pid": pid, "rss_mb": round(full.rss / mb, 1), "pss_mb": round(full.pss / mb, 1),
            "uss_mb": round(full.uss / mb, 1)}


class Load:
    """``clients`` threads, each with its own keep-alive httpx client, POSTing ``body`` to ``url``
    in a loop until stopped; every outcome (status code, or the exception's class name) is kept
    with its completion time. ``interval`` > 0 paces each thread (seconds between request starts).
    ``want_version`` parses each 200 answer for ``model_version``."""

    def __init__(self, url: str, body: dict, headers: dict, clients: int, interval: float = 0.0,
                 want_version: bool = False, timeout: float = 30.0):
        self.url, self.headers, self.clients = url, headers, clients
        self.payload = json.dumps(body).encode()
        self.interval, self.want_version, self.timeout = interval, want_version, timeout
        self.stop_event = threading.Event()
        self.records: list[list[tuple[float, object, str | None]]] = []
        self.threads: list[threading.Thread] = []
        self.started_at: float | None = None

    def _worker(self, sink: list) -> None:
        headers = {**self.headers, "Content-Type": "application/json"}
        with httpx.Client(timeout=self.timeout, headers=headers) as http:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                if self.interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                    next_at = max(next_at + self.interval, time.monotonic() - self.interval)
                version = None
                try:
                    response = http.post(self.url, content=self.payload)
                    outcome: object = response.status_code
                    if self.want_version and response.status_code == 200:
                        version = response.json().get("model_version")
                except Exception as error:  # noqa: BLE001 — every failure counts
                    outcome = type(error).__name__
                sink.append((time.monotonic(), outcome, version))

    def start(self) -> "Load":
        self.started_at = time.monotonic()
        for _ in range(self.clients):
            sink: list = []
            self.records.append(sink)
            thread = threading.Thread(target=self._worker, args=(sink,), daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 40) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def outcomes(self, start: float | None = None, end: float | None = None) -> dict:
        """Counts in [start, end) by monotonic completion time: total, ok (200), failed, by
        outcome, by model version."""
        by_outcome: dict[str, int] = {}
        versions: dict[str, int] = {}
        first_failure = last_failure = None
        for sink in self.records:
            for at, outcome, version in list(sink):
                if (start is not None and at < start) or (end is not None and at >= end):
                    continue
                by_outcome[str(outcome)] = by_outcome.get(str(outcome), 0) + 1
                if version is not None:
                    versions[version] = versions.get(version, 0) + 1
                if outcome != 200:
                    first_failure = at if first_failure is None else min(first_failure, at)
                    last_failure = at if last_failure is None else max(last_failure, at)
        total = sum(by_outcome.values())
        ok = by_outcome.get("200", 0)
        return {"total": total, "ok": ok, "failed": total - ok, "by_outcome": by_outcome,
                "versions": versions, "first_failure_at": first_failure,
                "last_failure_at": last_failure}


def wrk_script(path: Path, body: dict, headers: dict) -> Path:
    """A wrk Lua script that POSTs ``body`` as JSON with ``headers``."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    for name, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    import re

    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, script: Path, *, threads: int = 1, connections: int = 8,
            seconds: int = 10, latency: bool = False, timeout_s: str = "5s") -> dict:
    """Run wrk once and parse its report: requests/s, requests, latency mean/stdev/max and (with
    ``latency``) p50/p75/p90/p99, non-2xx answers and socket errors."""
    import re

    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", timeout_s,
               "-s", str(script)]
    if latency:
        command.append("--latency")
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({done.returncode}): {out}\n{done.stderr}")
    result: dict = {"command": " ".join(command), "raw": out}
    result["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    match = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    result["requests"] = int(match.group(1))
    match = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    result["latency_mean_ms"], result["latency_stdev_ms"], result["latency_max_ms"] = (
        _ms(match.group(1)), _ms(match.group(2)), _ms(match.group(3)))
    for p in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M)
        if match:
            result[f"p{p}_ms"] = _ms(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in match.groups()) if match else 0
    return result


def kill_if_alive(proc: "psutil.Process | subprocess.Popen | None", grace: float = 10) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` s, a process this script started (and its children).
    Returns True when something had to be killed hard."""
    if proc is None:
        return False
    try:
        p = psutil.Process(proc.pid) if isinstance(proc, subprocess.Popen) else proc
        if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
            if isinstance(proc, subprocess.Popen):
                proc.poll()
            return False
        family = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for q in family:
        try:
            q.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for q in alive:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    if isinstance(proc, subprocess.Popen):
        proc.poll()
    return bool(alive)


# -- container mode (`Platform(..., containers=True)`) --------------------------------------------

def engine_url(platform: "Platform") -> str | None:
    """The Engine API URL the platform's workloads run on: podman's service on the socket in its
    data dir (what `fermi up` starts where podman is installed), else the one its banner names
    (``Isolation: containers (podman 4.3.1 at unix://...)``); None in process mode."""
    import re

    sock = platform.data / "containers" / "engine.sock"
    if sock.exists():
        return f"unix://{sock}"
    for line in platform.output:
        match = re.search(r"containers \(.+? at (\S+?)\)", line)
        if match:
            return match.group(1)
    return None


def engine_client(url: str, timeout: float = 120):
    """A docker-py client of the engine at ``url`` (docker comes with dockerspawner)."""
    import docker

    return docker.DockerClient(base_url=url, timeout=timeout)


def platform_label(platform: "Platform") -> str:
    """The ``org.fermi.platform`` label value of this platform's containers (its data dir's id)."""
    sys.path.insert(0, str(REPO))
    from fermi_extension.containers.runtime import platform_id

    return platform_id(str(platform.data))


def platform_containers(client, platform: "Platform", **labels: str) -> list:
    """This platform's running containers (``kind="warm"`` etc. narrows by ``org.fermi.*``)."""
    wanted = {"org.fermi.platform": platform_label(platform),
              **{f"org.fermi.{k}": v for k, v in labels.items()}}
    return client.containers.list(filters={"label": [f"{k}={v}" for k, v in wanted.items()]})


def network_gateway(client, platform: "Platform") -> str:
    """The bridge's gateway address, as the platform's network anchor container sees it."""
    container = client.containers.get(f"fermi-network-{platform_label(platform)}")
    settings = container.attrs.get("NetworkSettings") or {}
    gateway = settings.get("Gateway") or next(
        (n.get("Gateway") for n in (settings.get("Networks") or {}).values() if n.get("Gateway")),
        "")
    if not gateway:
        raise RuntimeError("the network anchor container has no gateway address")
    return gateway


def engine_service_process(platform: "Platform") -> psutil.Process | None:
    """`podman system service` on the socket in the platform's data dir (started by `fermi up`),
    found by that socket in its command line; None when the engine is not one of ours."""
    sock = str(platform.data / "containers" / "engine.sock")
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "system service" in cmd and sock in cmd:
            return proc
    return None


def _cgroup_memory_bytes(pid: int) -> int | None:
    """The memory cgroup's usage of ``pid`` (v1 ``memory.usage_in_bytes`` or v2
    ``memory.current``), page cache included; None when unreadable."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.usage_in_bytes"
        elif controllers == "":
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.current"
            if not candidate.exists():
                candidate = Path("/sys/fs/cgroup/unified") / path.lstrip("/") / "memory.current"
        else:
            continue
        try:
            return int(candidate.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def container_memory(container) -> dict:
    """RSS / PSS / USS of one running container's processes (its init's pid from the engine and
    every descendant) and of its conmon (the init's parent, podman's monitor; shown apart), plus
    the memory cgroup's usage (which also counts page cache)."""
    mb = 1024 * 1024
    container.reload()
    pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
    row = {"name": container.name, "kind": container.labels.get("org.fermi.kind", "?"),
           "pid": pid, "processes": 0, "rss_mb": 0.0, "pss_mb": 0.0, "uss_mb": 0.0,
           "conmon_rss_mb": None, "conmon_pss_mb": None, "cgroup_mb": None}
    if not pid:
        return row
    try:
        init = psutil.Process(pid)
        family = [init] + init.children(recursive=True)
    except psutil.NoSuchProcess:
        return row
    for proc in family:
        try:
            full = proc.memory_full_info()
        except psutil.Error:
            continue
        row["processes"] += 1
        row["rss_mb"] += full.rss / mb
        row["pss_mb"] += full.pss / mb
        row["uss_mb"] += full.uss / mb
    try:
        parent = init.parent()
        if parent is not None and "conmon" in parent.name():
            full = parent.memory_full_info()
            row["conmon_rss_mb"], row["conmon_pss_mb"] = round(full.rss / mb, 1), round(full.pss / mb, 1)
    except psutil.Error:
        pass
    usage = _cgroup_memory_bytes(pid)
    row["cgroup_mb"] = None if usage is None else round(usage / mb, 1)
    for key in ("rss_mb", "pss_mb", "uss_mb"):
        row[key] = round(row[key], 1)
    return row
