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

P5c (``--containers``): the whole platform in container mode (`fermi up` with podman: the dev
server is a container of FermiDockerSpawner from the catalogue's pinned official image) against
a bare JupyterHub with plain DockerSpawner on the same engine (the podman service `fermi up`
started, on the socket in its data dir), the same image pinned by the same digest (the one the
platform's catalogue pinned), with a minimal config of DockerSpawner's documented settings
written here (``BareDockerHub``). The bare hub listens on podman's bridge gateway, which the
platform's network anchor container keeps up, so it starts after the platform. Per run, from
the engine (not timed): when the container was created and started and when its Jupyter Server
said it was running, relative to the first request.

    .venv/bin/python benchmarks/p5_spawn.py --containers [--runs 7] [--json out.json] [--keep]

Goal (issue 14): median(Fermi) / median(bare DockerSpawner) <= 1.5.
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
GOAL_CONTAINERS = 1.5
USER = "admin"
OFFICIAL_IMAGE = "localhost/fermi/python:0.1.0"


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


class BareDockerHub(BareHub):
    """JupyterHub with plain DockerSpawner, configured as its documentation says: the image
    (pinned by digest), ``remove=True``, the hub listening on the engine's bridge gateway where
    the containers reach it (``hub_connect_ip``), the server's published port on 127.0.0.1
    (``use_internal_ip=False``), the image's own ``jupyterhub-singleuser`` (the official image
    runs as root inside, hence ``--allow-root``), the engine's socket in ``client_kwargs``, and
    the user's home a bind mount of a host folder (the persistence DockerSpawner's docs pair with
    ``remove=True``)."""

    def __init__(self, root: Path, engine_url: str, image: str, gateway: str):
        super().__init__(root)
        self.engine_url, self.image, self.gateway = engine_url, image, gateway
        # the engine is shared (the platform's, other runs'): a prefix of this run's own
        self.prefix = f"p5c-{secrets.token_hex(4)}"

    def config(self) -> str:
        home = self.root / "users"
        (home / USER).mkdir(parents=True, exist_ok=True)
        return textwrap.dedent(f"""\
            c = get_config()
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            # the containers reach the hub on the bridge's gateway, so it listens there
            c.JupyterHub.hub_ip = {self.gateway!r}
            c.JupyterHub.hub_connect_ip = {self.gateway!r}
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
            c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
            c.DockerSpawner.client_kwargs = {{"base_url": {self.engine_url!r}}}
            c.DockerSpawner.image = {self.image!r}
            c.DockerSpawner.remove = True
            c.DockerSpawner.use_internal_ip = False
            c.DockerSpawner.prefix = {self.prefix!r}
            c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
            c.DockerSpawner.args = ["--allow-root"]
            c.DockerSpawner.volumes = {{{str(home / '{username}')!r}: "/home/jovyan"}}
            c.Spawner.default_url = "/lab"
            c.Spawner.http_timeout = 60
            c.Spawner.start_timeout = 120
            """)

    def remove_containers(self, client) -> list[str]:
        """Any container of this hub left on the engine (a hub that was killed)."""
        left = []
        for container in client.containers.list(all=True, filters={"name": self.prefix}):
            left.append(container.name)
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
        return left


def _engine_time(stamp: str) -> float | None:
    """An engine timestamp (RFC 3339, nanoseconds, Z or an offset) as epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?", stamp or "")
    if not match or stamp.startswith("0001-"):
        return None
    base = dt.datetime.fromisoformat(match.group(1))
    fraction = float("0" + (match.group(2) or ".0")[:10])
    zone = match.group(3) or "Z"
    tz = dt.timezone.utc if zone == "Z" else dt.datetime.strptime(
        zone.replace(":", ""), "%z").tzinfo
    return base.replace(tzinfo=tz).timestamp() + fraction


def container_marks(client, filters: dict, t0_wall: float) -> dict:
    """For the (one) running dev-server container matching ``filters``: seconds from the first
    request to its creation, its start, and its Jupyter Server's "is running at" log line; its
    image. Read after the run's timing ended."""
    found = client.containers.list(filters=filters)
    if not found:
        return {"container": None}
    container = found[0]
    attrs = container.attrs
    marks = {"container": container.name, "image": (attrs.get("Config") or {}).get("Image")}
    for key, stamp in (("created", attrs.get("Created")),
                       ("started", (attrs.get("State") or {}).get("StartedAt"))):
        at = _engine_time(stamp) if isinstance(stamp, str) else None
        marks[key] = None if at is None else round(at - t0_wall, 3)
    marks["server_running"] = None
    try:
        for line in container.logs(timestamps=True).decode(errors="replace").splitlines():
            if "is running at" in line:
                at = _engine_time(line.split(" ", 1)[0])
                marks["server_running"] = None if at is None else round(at - t0_wall, 3)
                break
    except Exception as error:  # noqa: BLE001 - the logs are a detail
        marks["logs_error"] = str(error)[:200]
    return marks


def wait_ready_events(browser: httpx.Client, xsrf: str, timeout: float = 180) -> int:
    """Follow the spawn's progress event stream until it says ready (what spawn-pending does).
    The proxy ends a request after 20 s with 503 ("Timeout during request"), which a spawn
    in a container can outlast: then the stream is opened again (as the page's EventSource is
    reopened). Returns how many times it was reopened after such an answer."""
    deadline = time.monotonic() + timeout
    reopened = 0
    while time.monotonic() < deadline:
        with browser.stream("GET", f"/hub/api/users/{USER}/server/progress",
                            params={"_xsrf": xsrf}, headers={"X-XSRFToken": xsrf}) as events:
            if events.status_code in (502, 503, 504):
                events.read()
                reopened += 1
                continue
            if events.status_code != 200:
                raise RuntimeError(f"progress: {events.status_code} {events.read()[:300]!r}")
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("failed"):
                    raise RuntimeError(f"spawn failed: {event}")
                if event.get("ready"):
                    return reopened
    raise RuntimeError("no ready event")


def login_to_lab(url: str, password: str, form: dict, after=None) -> dict:
    """One timed login → lab; ``after(t0_wall)``, called once the lab page answered (not timed),
    may add what it finds under ``marks["after"]``."""
    marks = {}
    t0_wall = time.time()
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
        reopened = wait_ready_events(browser, xsrf)
        marks["ready"] = time.perf_counter() - t0
        lab = browser.get(f"/user/{USER}/lab")
        if lab.status_code != 200 or not lab.url.path.startswith(f"/user/{USER}/lab") or (
                "jupyter-config-data" not in lab.text):
            raise RuntimeError(f"lab: {lab.status_code} {lab.url}")
        marks["lab"] = time.perf_counter() - t0
        if after is not None:
            marks["after"] = after(t0_wall)
        if reopened:
            marks.setdefault("after", {})["progress_reopened"] = reopened
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


def pinned_image(platform: Platform) -> str:
    """The reference@digest the platform's catalogue pinned for its official image (python-local),
    so that the bare hub starts from exactly what the platform's dev server does."""
    from common import API

    with platform.client() as client:
        response = client.get(f"{API}/catalog/images")
        response.raise_for_status()
        body = response.json()
    items = body.get("images", []) if isinstance(body, dict) else body
    for image in items:
        if image.get("slug") != "python-local":
            continue
        for version in image.get("versions") or []:
            reference, digest = version.get("reference") or image.get("reference"), version.get("digest")
            if digest:
                return reference if "@" in (reference or "") else f"{reference}@{digest}"
    raise RuntimeError(f"python-local has no version pinned by digest in the catalogue: {body!r:.500}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dirs")
    parser.add_argument("--containers", action="store_true",
                        help="P5c: the platform in container mode against plain DockerSpawner "
                             "on the same engine and image (needs podman)")
    args = parser.parse_args()
    name = "P5c" if args.containers else "P5"
    goal = GOAL_CONTAINERS if args.containers else GOAL

    info = machine()
    log(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p5c-" if args.containers else "fermi-p5-"))
    platform = Platform(tmp / "fermi", containers=args.containers)
    bare: BareHub = BareHub(tmp / "bare")
    client = None  # the engine's, in container mode
    result: dict = {"benchmark": name, "machine": info, "runs": args.runs,
                    "isolation": "containers" if args.containers else "processes"}
    after = {"fermi": None, "bare": None}
    hubs = {
        "fermi": lambda: login_to_lab(platform.url, fermi_password,
                                      {"profile": "cpu-small", "image": "python-local"},
                                      after["fermi"]),
        "bare": lambda: login_to_lab(bare.url, bare.password, {}, after["bare"]),
    }
    stops = {"fermi": lambda: stop_server(platform.url, platform.admin_token),
             "bare": lambda: stop_server(bare.url, bare.admin_token)}
    try:
        if args.containers:
            from common import engine_client, engine_url, network_gateway, platform_label

            # the bare hub listens on the bridge's gateway, which exists once the platform's
            # network anchor runs: the platform first
            platform.start(timeout=900)
            url = engine_url(platform)
            if not url:
                raise RuntimeError("the platform did not start in container mode:\n"
                                   + "".join(platform.output))
            client = engine_client(url)
            image = pinned_image(platform)
            gateway = network_gateway(client, platform)
            bare = BareDockerHub(tmp / "bare", url, image, gateway)
            bare.start()
            result.update({"engine_url": url, "image": image, "gateway": gateway,
                           "engine_version": client.version().get("Version")})
            log(f"engine {url}, image {image}, bare hub on the gateway {gateway}")
            label = platform_label(platform)
            after = {
                "fermi": lambda t0: container_marks(client, {"label": [
                    "org.fermi.kind=server", f"org.fermi.platform={label}"]}, t0),
                "bare": lambda t0: container_marks(client, {"name": bare.prefix}, t0),
            }
        else:
            starting = threading.Thread(target=bare.start)
            starting.start()
            platform.start()
            starting.join()
        fermi_password = (platform.data / "admin-password").read_text().strip()
        log(f"fermi up in {platform.start_seconds:.1f} s ({platform.url}); bare hub {bare.url}")
        warm = {}
        for hub in ("fermi", "bare"):
            warm[hub] = hubs[hub]()
            stops[hub]()
            log(f"  warm-up {hub}: {warm[hub]}")
        if args.containers:
            images = {hub: (warm[hub].get("after") or {}).get("image") for hub in warm}
            result["container_images"] = images
            if None in images.values() or images["fermi"] != images["bare"]:
                raise RuntimeError(f"the two dev servers are not containers of the same image: "
                                   f"{images}")
        runs: dict[str, list[dict]] = {"fermi": [], "bare": []}
        for i in range(args.runs):
            for hub in (("fermi", "bare") if i % 2 == 0 else ("bare", "fermi")):
                marks = hubs[hub]()
                stops[hub]()
                runs[hub].append(marks)
                shown = {k: round(v, 3) for k, v in marks.items() if k != "after"}
                extra = ""
                if marks.get("after"):
                    extra = "  engine: " + ", ".join(
                        f"{k} {v}" for k, v in marks["after"].items()
                        if k in ("created", "started", "server_running"))
                log(f"  run {i + 1} {hub:5} {marks['lab']:.3f} s  {shown}{extra}")
        medians = {hub: median([m["lab"] for m in marks]) for hub, marks in runs.items()}
        ratio = medians["fermi"] / medians["bare"]
        phases = {
            hub: {k: round(median([m[k] for m in marks]), 3) for k in marks[0] if k != "after"}
            for hub, marks in runs.items()
        }
        timelines = {"fermi": spawn_timeline(platform.data / "logs" / "hub.log"),
                     "bare": spawn_timeline(bare.root / "hub.log")}
        from_logs = {
            hub: {key: round(median([r[key] for r in rows]), 3) for key in rows[0]}
            for hub, rows in timelines.items() if rows
        }
        result.update({
            "hub_log_medians_s": from_logs,
            "hub_log_spawns": timelines,
            "fermi_seconds": [round(m["lab"], 3) for m in runs["fermi"]],
            "bare_seconds": [round(m["lab"], 3) for m in runs["bare"]],
            "fermi_median_s": round(medians["fermi"], 3),
            "bare_median_s": round(medians["bare"], 3),
            "ratio": round(ratio, 3),
            "goal": f"ratio <= {goal}",
            "pass": ratio <= goal,
            "phase_medians_s": phases,
            "warmup_s": {k: round(v["lab"], 3) for k, v in warm.items()},
            "platform_start_s": round(platform.start_seconds, 1),
            "loadavg_at_end": os.getloadavg(),
        })
        if args.containers:
            engine = {hub: [m.get("after") or {} for m in marks] for hub, marks in runs.items()}
            result["engine_marks"] = engine
            result["engine_mark_medians_s"] = {
                hub: {k: round(median([r[k] for r in rows if r.get(k) is not None]), 3)
                      for k in ("created", "started", "server_running")
                      if any(r.get(k) is not None for r in rows)}
                for hub, rows in engine.items()}
        baseline = "bare DockerSpawner" if args.containers else "bare JupyterHub"
        print()
        print(f"{name} Fermi login->lab median: {medians['fermi']:.3f} s  (runs: {result['fermi_seconds']})")
        print(f"{name} {baseline} login->lab median: {medians['bare']:.3f} s  (runs: {result['bare_seconds']})")
        print(f"{name} ratio: {ratio:.3f}  goal <= {goal}: {'PASS' if ratio <= goal else 'FAIL'}")
        print(f"{name} phase medians (s, cumulative from the first request): {phases}")
        if args.containers:
            print(f"{name} from the engine (medians, s from the first request: container created, "
                  f"started, Jupyter Server running): {result['engine_mark_medians_s']}")
        else:
            print(f"{name} from the hub logs (medians, warm-up included): {from_logs}")
    except Exception as error:
        record_failure(result, platform, error)
        log("bare hub.log tail:\n" + bare.log_tail(60))
    finally:
        # the bare hub first: in container mode it uses the engine the platform stops
        leftovers = bare.stop()
        if client is not None and isinstance(bare, BareDockerHub):
            leftovers += [f"container {n}" for n in bare.remove_containers(client)]
        platform.stop()
        if client is not None:
            client.close()
        result["leftover_processes"] = getattr(platform, "leftovers", []) + leftovers
        wrap_up(args, result, tmp)
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
