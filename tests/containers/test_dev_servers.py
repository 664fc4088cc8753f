"""Dev servers in containers, on the real engine (``fermi_spawner.container``): from the pinned
image, within the profile's limits, with only the user's home mounted and no platform secret in
their environment; reached through the proxy; removed when stopped; an out-of-memory kill said
on the hub's home page; kept across a hub killed with -9.

Code runs in a server the way a notebook runs it: a kernel started through the server's REST
API, its code sent over the kernel's websocket (``run_in_kernel``).
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
import websocket

from fermi_extension.containers.runtime import CAPABILITIES, KIND, OWNER, PLATFORM, platform_id

from ..test_restart import platform_processes, wait_until
from ..test_spawners import person

pytestmark = pytest.mark.hub

CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7}
SECRETS = ("CONFIGPROXY_AUTH_TOKEN", "FERMI_ADMIN_TOKEN", "FERMI_PROXY_TOKEN",
           "JPY_COOKIE_SECRET", "JUPYTERHUB_CRYPT_KEY", "FERMI_DB_URL", "CONTAINERS_CONF")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def server_containers(engine_client, platform, user: str) -> list:
    return engine_client.containers.list(all=True, filters={"label": [
        f"{KIND}=server", f"{OWNER}={user}", f"{PLATFORM}={platform_id(str(platform.data))}"]})


def start_server(platform, user, options: dict, timeout: float = 180) -> dict:
    response = user.http.post(f"/hub/api/users/{user.name}/server", json=options)
    assert response.status_code in (201, 202), response.text
    deadline = time.monotonic() + timeout
    while True:
        model = platform.admin.http.get(f"/hub/api/users/{user.name}").json()
        server = model["servers"].get("")
        if server and server["ready"]:
            return server
        assert time.monotonic() < deadline, f"{model}\n{platform.log_tail()}"
        time.sleep(0.5)


def stop_server(platform, user) -> None:
    response = user.http.delete(f"/hub/api/users/{user.name}/server")
    assert response.status_code in (202, 204), response.text
    wait_until(lambda: not platform.admin.http.get(
        f"/hub/api/users/{user.name}").json()["servers"], timeout=90, what="the server to stop")


def run_in_kernel(platform, user, code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a new kernel of the user's server; returns ``{"stdout", "error"}``
    (``error`` is "died" when the kernel's connection ended before it answered)."""
    base = f"/user/{user.name}/api/kernels"
    response = user.http.post(base, json={"name": "python3"})
    assert response.status_code == 201, response.text
    kernel = response.json()["id"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{platform.port}{base}/{kernel}/channels",
        header=[f"Authorization: token {user.token}"], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": user.name, "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out, error = [], None
    try:
        while True:
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                out.append(message["content"]["text"])
            elif kind == "error":
                error = f"{message['content']['ename']}: {message['content']['evalue']}"
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                break
    except (websocket.WebSocketException, ConnectionError, OSError):
        error = "died"
    finally:
        ws.close()
    return {"stdout": "".join(out), "error": error}


def test_a_dev_server_runs_in_its_own_container_from_the_pinned_image_with_nothing_else(
        container_platform, engine_client, official_image):
    alice = container_platform.user(unique("alice"))
    start_server(container_platform, alice, {"profile": "cpu-small"})
    containers = server_containers(engine_client, container_platform, alice.name)
    assert len(containers) == 1, containers
    container = containers[0]
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    # exactly the image the catalogue pins, within cpu-small (1 CPU, 2Gi) and the job rules
    assert config["Image"] == official_image.reference
    assert container.image.id == engine_client.images.get(official_image.reference).id
    assert host["Memory"] == 2 * 2**30 and host["MemorySwap"] == host["Memory"]
    assert host.get("NanoCpus") == 1_000_000_000 or (
        host.get("CpuQuota"), host.get("CpuPeriod")) == (100_000, 100_000), host
    assert host["PidsLimit"] == 1024
    dropped = {c.upper().removeprefix("CAP_") for c in host.get("CapDrop") or []}
    assert "ALL" in dropped or {"DAC_OVERRIDE", "NET_RAW"} <= dropped, dropped
    assert host.get("NetworkMode") not in ("host",)
    # the user's home only: not the data dir, not the engine's socket
    mounts = [(m["Source"], m["Destination"]) for m in container.attrs["Mounts"]]
    assert mounts == [(str(container_platform.data / "users" / alice.name), "/home/jovyan")]
    # no platform secret, no hub environment in the server's
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not [k for k in SECRETS if k in env], env
    assert container_platform.admin_token not in json.dumps(env)
    assert env["JUPYTERHUB_API_URL"].startswith("http://10.") or "127.0.0.1" not in env[
        "JUPYTERHUB_API_URL"]

    # through the proxy, as the user's browser reaches it
    lab = alice.http.get(f"/user/{alice.name}/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.text[:500]

    # what a notebook sees: its own processes only, none of the data dir, the control plane
    # at the bridge's address (FERMI_API_URL)
    facts = run_in_kernel(container_platform, alice, (
        "import os, json, urllib.request\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "cmds = [open(f'/proc/{p}/cmdline', 'rb').read().decode(errors='replace') "
        "for p in pids]\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "api = os.environ['FERMI_API_URL']\n"
        "try:\n"
        "    status = urllib.request.urlopen(api + '/health', timeout=10).status\n"
        "except Exception as e:\n"
        "    status = repr(e)\n"
        "print(json.dumps({'pids': len(pids), 'cmds': cmds, 'data': os.path.exists(%r), "
        "'home': sorted(os.listdir(os.environ['HOME'])), 'api': api, 'status': status, "
        "'caps': caps, 'environ_secrets': [k for k in os.environ if k in %r]}))" % (
            str(container_platform.data), SECRETS)))
    assert facts["error"] is None, facts
    seen = json.loads(facts["stdout"])
    assert seen["pids"] < 15, seen["cmds"]  # a PID namespace of its own
    assert not [c for c in seen["cmds"] if "jupyterhub" in c and "singleuser" not in c], seen
    assert not [c for c in seen["cmds"] if "control_plane" in c or "configurable-http" in c]
    assert seen["data"] is False and not seen["environ_secrets"], seen
    assert seen["status"] == 200, seen
    # the kernel holds no capability beyond runtime.CAPABILITIES (no SYS_ADMIN, no DAC_OVERRIDE)
    kept = sum(1 << CAP_BITS[name] for name in CAPABILITIES)
    assert int(seen["caps"], 16) & ~kept == 0, seen["caps"]

    # stop removes the container; the home folder stays
    stop_server(container_platform, alice)
    assert not server_containers(engine_client, container_platform, alice.name)
    assert (container_platform.data / "users" / alice.name).is_dir()


def test_an_image_without_a_digest_is_refused_with_what_to_do(container_platform):
    admin = container_platform.admin
    slug = unique("nodigest")
    response = admin.api("POST", "catalog/images", json={
        "slug": slug, "name": "No digest", "reference": "localhost/fermi/python",
        "versions": [{"tag": "0.1.0"}]})
    assert response.status_code == 201, response.text
    bob = container_platform.user(unique("bob"))
    response = bob.http.post(f"/hub/api/users/{bob.name}/server",
                             json={"profile": "cpu-small", "image": slug})
    assert 400 <= response.status_code < 500, response.text
    assert "digest" in response.json()["message"], response.text
    assert "fermi images build" in response.json()["message"]


def test_a_server_killed_for_memory_says_so_on_the_hub_home_page(
        container_platform, engine_client):
    admin = container_platform.admin
    slug = unique("t-256m")
    response = admin.api("POST", "catalog/profiles", json={
        "slug": slug, "name": "Test 256Mi", "cpu": 0.5, "memory": "256Mi", "pool": "cpu"})
    assert response.status_code == 201, response.text
    name = unique("carol")
    browser = person(container_platform, name)  # hub pages want a login, not a token
    carol = container_platform.user(name)
    start_server(container_platform, carol, {"profile": slug})
    [container] = server_containers(engine_client, container_platform, carol.name)
    assert container.attrs["HostConfig"]["Memory"] == 256 * 2**20
    # the kernel makes its server the OOM killer's choice (a process may raise the score of
    # one of its own uid), then allocates past the profile: the server is killed, as when
    # the server itself holds too much (a large upload, an extension)
    result = run_in_kernel(container_platform, carol, (
        "import os, time\n"
        "open(f'/proc/{os.getppid()}/oom_score_adj', 'w').write('1000')\n"
        "chunks = []\n"
        "for _ in range(64):\n"
        "    chunks.append(bytearray(16 * 2**20))\n"
        "    time.sleep(0.01)\n"), timeout=10)
    assert result["error"] in ("died", None) or "MemoryError" in result["error"], result
    wait_until(lambda: engine_client.api.inspect_container(container.id)["State"][
        "Running"] is False if server_containers(engine_client, container_platform, carol.name)
        else True, timeout=60, what="the server's container to end")
    # the next visit of the home page: the hub notices, the notice names profile and limit
    deadline = time.monotonic() + 60
    while True:
        page = browser.get("/hub/home")
        if "exceeded the 256Mi memory" in page.text:
            break
        assert time.monotonic() < deadline, page.text[-3000:] + container_platform.log_tail()
        time.sleep(1)
    assert f"profile {slug}" in page.text and "pick " in page.text, page.text
    # the state was read, then the container removed
    assert not server_containers(engine_client, container_platform, carol.name)
    # the spawn page says it too, until the next start
    assert "exceeded the 256Mi memory" in browser.get(f"/hub/spawn/{carol.name}").text


def test_a_hub_killed_with_minus_9_keeps_the_running_server(container_platform, engine_client):
    dave = container_platform.user(unique("dave"))
    start_server(container_platform, dave, {"profile": "cpu-small"})
    [before] = server_containers(engine_client, container_platform, dave.name)
    old = platform_processes(container_platform)["hub"]
    old.send_signal(signal.SIGKILL)
    wait_until(lambda: getattr(platform_processes(container_platform).get("hub"), "pid",
                               old.pid) != old.pid, timeout=120, what="fermi up to restart the hub")

    def answers() -> bool:
        try:
            return dave.http.get(f"/user/{dave.name}/api/status").status_code == 200
        except Exception:  # noqa: BLE001 - the proxy or the hub not up yet
            return False

    wait_until(answers, timeout=120, what="the server to answer again after the restart")
    model = container_platform.admin.http.get(f"/hub/api/users/{dave.name}").json()
    assert model["servers"][""]["ready"], model
    [after] = server_containers(engine_client, container_platform, dave.name)
    assert after.id == before.id  # the same container, found again by the hub's state
    stop_server(container_platform, dave)
    assert not server_containers(engine_client, container_platform, dave.name)


def test_an_attached_dataset_is_mounted_read_only_and_found_in_the_home(
        container_platform, engine_client, tmp_path):
    erin = container_platform.user(unique("erin"))
    data = tmp_path / "wine"
    data.mkdir()
    (data / "wine.csv").write_text("a,b\n1,2\n")
    name = f"wine-{erin.name}"
    made = erin.api("POST", "datasets", json={"name": name, "location": str(data)})
    assert made.status_code == 201, made.text
    start_server(container_platform, erin, {"profile": "cpu-small", "datasets": name})
    [container] = server_containers(engine_client, container_platform, erin.name)
    mounts = sorted((m["Source"], m["Destination"], m["RW"]) for m in container.attrs["Mounts"])
    assert mounts == sorted([
        (str(container_platform.data / "users" / erin.name), "/home/jovyan", True),
        (str(data), f"/datasets/{name}", False)]), mounts
    seen = run_in_kernel(container_platform, erin, (
        "import os, json\n"
        f"place = os.path.expanduser('~/datasets/{name}')\n"
        "try:\n"
        "    open(os.path.join(place, 'new.txt'), 'w').write('x')\n"
        "    wrote = True\n"
        "except OSError:\n"
        "    wrote = False\n"
        "print(json.dumps({'csv': open(os.path.join(place, 'wine.csv')).read(), 'wrote': wrote,"
        " 'env': {k: v for k, v in os.environ.items() if '/datasets/' in v}}))"))
    assert seen["error"] is None, seen
    facts = json.loads(seen["stdout"])
    assert facts["csv"] == "a,b\n1,2\n" and facts["wrote"] is False, facts
    assert list(facts["env"].values()) == [f"/home/jovyan/datasets/{name}"], facts
    assert not (data / "new.txt").exists()
    stop_server(container_platform, erin)
