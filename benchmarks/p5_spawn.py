"""P5: dev environment start — login → JupyterLab ready, with FermiLocalSpawner on the whole
platform (`fermi up`) against a bare JupyterHub with SimpleLocalProcessSpawner (a minimal config
written here), same machine, same run, interleaved.

    .venv/bin/python benchmarks/p5_spawn.py [--runs 7] [--json out.json] [--keep]

One run is what a person's browser does, timed from the first request to the lab page:
GET /hub/login, POST /hub/login (which lands on /hub/spawn: Fermi shows its spawn form, which is
then submitted with profile cpu-small and image python-local; the bare hub has no form and
starts the server at once), wait on the spawn's progress event stream
(as the spawn-pending page does) until `ready`, then GET /user/NAME/lab following the OAuth
redirects until the JupyterLab page answers 200. Between runs the server is stopped through the
REST API (not timed). One warm-up of each first (not counted); then the runs alternate which hub
goes first.

Goal: median(Fermi) / median(bare JupyterHub) <= 1.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil

from common import wrap_up, record_failure, VENV_BIN, Platform, free_port, log, machine, median

GOAL = 1.1
USER = "admin"


class BareHub:
    """JupyterHub as shipped, with the minimal configuration a local spawn needs."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.admin_token = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        return textwrap.dedent(f"""\
            import os, sys
            c = get_config()
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {free_port()}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
            c.ConfigurableHTTPProxy.command = [{str(VENV_BIN / 'configurable-http-proxy')!r}]
            c.JupyterHub.db_url = "sqlite:///{self.root / 'jupyterhub.sqlite'}"
            c.JupyterHub.cookie_secret_file = {str(self.root / 'cookie_secret')!r}
            c.JupyterHub.authenticator_class = "dummy"
            c.DummyAuthenticator.password = {self.password!r}
            c.Authenticator.allow_all = True
            c.Authenticator.admin_users = {{{USER!r}}}
            c.JupyterHub.api_tokens = {{{self.admin_token!r}: {USER!r}}}
            c.JupyterHub.spawner_class = "simple"
            c.SimpleLocalProcessSpawner.home_dir_template = {str(self.root / 'users' / '{username}')!r}
            c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
            c.Spawner.default_url = "/lab"
            c.Spawner.http_timeout = 60
            if os.getuid() == 0:
                c.Spawner.args = ["--allow-root"]
            """)

    def start(self, timeout: float = 120) -> "BareHub":
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "jupyterhub_config.py"
        config.write_text(self.config())
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        log_file = open(self.root / "hub.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=self.root, env=env,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("bare jupyterhub exited:\n" + self.log_tail())
            try:
                if httpx.get(f"{self.url}/hub/api/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("bare jupyterhub did not answer:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "hub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> list[str]:
        if self.process is None:
            return []
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for proc in left:
            proc.kill()
        return [f"{p.pid}" for p in left]


def wait_ready_events(browser: httpx.Client, xsrf: str, timeout: float = 120) -> None:
    """Follow the spawn's progress event stream until it says ready (what spawn-pending does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with browser.stream("GET", f"/hub/api/users/{USER}/server/progress",
                            params={"_xsrf": xsrf}, headers={"X-XSRFToken": xsrf}) as events:
            if events.status_code != 200:
                raise RuntimeError(f"progress: {events.status_code} {events.read()[:300]!r}")
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("failed"):
                    raise RuntimeError(f"spawn failed: {event}")
                if event.get("ready"):
                    return
    raise RuntimeError("no ready event")


def login_to_lab(url: str, password: str, form: dict) -> dict:
    marks = {}
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, follow_redirects=True, timeout=120) as browser:
        browser.get("/hub/login")
        xsrf = browser.cookies.get("_xsrf", "")
        response = browser.post("/hub/login", data={"username": USER, "password": password,
                                                    "_xsrf": xsrf})
        if response.status_code != 200 or "/hub/login" in str(response.url):
            raise RuntimeError(f"login failed: {response.status_code} {response.url}")
        marks["login"] = time.perf_counter() - t0
        xsrf = browser.cookies.get("_xsrf", xsrf)
        # the login lands on /hub/spawn: with a spawn form (Fermi) the person submits it; without
        # one (bare JupyterHub) the spawn has already started and this is the pending page
        if 'id="spawn_form"' in response.text:
            response = browser.post(response.url.path, data={**form, "_xsrf": xsrf})
            if response.status_code != 200:
                raise RuntimeError(f"spawn: {response.status_code} {response.text[:300]}")
        marks["spawn_requested"] = time.perf_counter() - t0
        wait_ready_events(browser, xsrf)
        marks["ready"] = time.perf_counter() - t0
        lab = browser.get(f"/user/{USER}/lab")
        if lab.status_code != 200 or not lab.url.path.startswith(f"/user/{USER}/lab") or (
                "jupyter-config-data" not in lab.text):
            raise RuntimeError(f"lab: {lab.status_code} {lab.url}")
        marks["lab"] = time.perf_counter() - t0
    return marks


def stop_server(url: str, token: str, timeout: float = 60) -> None:
    headers = {"Authorization": f"token {token}"}
    response = httpx.delete(f"{url}/hub/api/users/{USER}/server", headers=headers, timeout=60)
    if response.status_code not in (202, 204, 400):
        raise RuntimeError(f"stop: {response.status_code} {response.text[:200]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = httpx.get(f"{url}/hub/api/users/{USER}", headers=headers, timeout=30).json()
        if not model.get("servers", {}).get(""):
            return
        time.sleep(0.2)
    raise RuntimeError("server did not stop")


def spawn_timeline(log_path: Path) -> list[dict]:
    """From a hub log: per spawn, seconds from `Spawning` to the server's `is running at` line
    (the dev server process starting) and from there to the hub's `took N seconds to start`
    (how long the hub took to notice)."""
    def clock(stamp: str) -> dt.datetime:
        return dt.datetime.strptime(stamp, "%H:%M:%S.%f")

    spawned = running = None
    rows = []
    if not log_path.exists():
        return rows
    for line in log_path.read_text(errors="replace").splitlines():
        if m := re.search(r"(\d\d:\d\d:\d\d\.\d+) JupyterHub spawner:\d+\] Spawning ", line):
            spawned, running = clock(m.group(1)), None
        elif m := re.search(r"(\d\d:\d\d:\d\d\.\d+) ServerApp\] Jupyter Server \S+ is running", line):
            running = clock(m.group(1))
        elif (m := re.search(r"(\d\d:\d\d:\d\d\.\d+) JupyterHub base:\d+\] User \S+ took", line)) \
                and spawned and running:
            rows.append({"process_start_s": round((running - spawned).total_seconds(), 3),
                         "detected_after_s": round((clock(m.group(1)) - running).total_seconds(), 3)})
            spawned = running = None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dirs")
    args = parser.parse_args()

    info = machine()
    log(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p5-"))
    platform = Platform(tmp / "fermi")
    bare = BareHub(tmp / "bare")
    result: dict = {"benchmark": "P5", "machine": info, "runs": args.runs}
    hubs = {
        "fermi": lambda: login_to_lab(platform.url, fermi_password,
                                      {"profile": "cpu-small", "image": "python-local"}),
        "bare": lambda: login_to_lab(bare.url, bare.password, {}),
    }
    stops = {"fermi": lambda: stop_server(platform.url, platform.admin_token),
             "bare": lambda: stop_server(bare.url, bare.admin_token)}
    try:
        starting = threading.Thread(target=bare.start)
        starting.start()
        platform.start()
        starting.join()
        fermi_password = (platform.data / "admin-password").read_text().strip()
        log(f"fermi up in {platform.start_seconds:.1f} s ({platform.url}); bare hub {bare.url}")
        warm = {}
        for name in ("fermi", "bare"):
            warm[name] = hubs[name]()
            stops[name]()
            log(f"  warm-up {name}: {warm[name]}")
        runs: dict[str, list[dict]] = {"fermi": [], "bare": []}
        for i in range(args.runs):
            for name in (("fermi", "bare") if i % 2 == 0 else ("bare", "fermi")):
                marks = hubs[name]()
                stops[name]()
                runs[name].append(marks)
                log(f"  run {i + 1} {name:5} {marks['lab']:.3f} s  {marks}")
        medians = {name: median([m["lab"] for m in marks]) for name, marks in runs.items()}
        ratio = medians["fermi"] / medians["bare"]
        phases = {
            name: {k: round(median([m[k] for m in marks]), 3) for k in marks[0]}
            for name, marks in runs.items()
        }
        timelines = {"fermi": spawn_timeline(platform.data / "logs" / "hub.log"),
                     "bare": spawn_timeline(bare.root / "hub.log")}
        from_logs = {
            name: {key: round(median([r[key] for r in rows]), 3) for key in rows[0]}
            for name, rows in timelines.items() if rows
        }
        result.update({
            "hub_log_medians_s": from_logs,
            "hub_log_spawns": timelines,
            "fermi_seconds": [round(m["lab"], 3) for m in runs["fermi"]],
            "bare_seconds": [round(m["lab"], 3) for m in runs["bare"]],
            "fermi_median_s": round(medians["fermi"], 3),
            "bare_median_s": round(medians["bare"], 3),
            "ratio": round(ratio, 3),
            "goal": f"ratio <= {GOAL}",
            "pass": ratio <= GOAL,
            "phase_medians_s": phases,
            "warmup_s": {k: round(v["lab"], 3) for k, v in warm.items()},
            "platform_start_s": round(platform.start_seconds, 1),
            "loadavg_at_end": os.getloadavg(),
        })
        print()
        print(f"P5 Fermi login->lab median: {medians['fermi']:.3f} s  (runs: {result['fermi_seconds']})")
        print(f"P5 bare  login->lab median: {medians['bare']:.3f} s  (runs: {result['bare_seconds']})")
        print(f"P5 ratio: {ratio:.3f}  goal <= {GOAL}: {'PASS' if ratio <= GOAL else 'FAIL'}")
        print(f"P5 phase medians (s, cumulative from the first request): {phases}")
        print(f"P5 from the hub logs (medians, warm-up included): {from_logs}")
    except Exception as error:
        record_failure(result, platform, error)
        log("bare hub.log tail:\n" + bare.log_tail(60))
    finally:
        platform.stop()
        result["leftover_processes"] = getattr(platform, "leftovers", []) + bare.stop()
        wrap_up(args, result, tmp)
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
