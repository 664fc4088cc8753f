"""Replicas accept only the router: the attack of going round the router's key check, replayed.

A replica is started the way the control plane starts one (``LocalServingBackend.start_replica``,
behind the router that ``LocalServingBackend.start`` runs), a real model-server process at its
own ``http://127.0.0.1:PORT``. Anything that can reach that address (every local process) and
asks it directly is refused, whatever it shows short of the replica's key; the same request
through the router with the deployment's API key is answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from fermi_extension.backends.local.serving import LocalServingBackend
from fermi_extension.deployments.backend import ReplicaLaunch
from fermi_extension.processes import free_port, identity, is_alive
from fermi_extension.serving.replica_key import replica_key
from tests.conformance.drivers import default_runtime
from tests.serving.test_server import tensor

API_KEY = "fk-the-deployments-own-key"


@pytest.fixture
async def serving(tmp_path):
    """A started local serving backend (its router running) and the replicas started on it."""
    backend = LocalServingBackend(serving_dir=str(tmp_path / "serving"), router_port=free_port())
    await backend.start()
    started = []
    yield backend, started
    for handle in started:
        await backend.stop_replica(handle)
    await backend.close(stop_all=True)


async def start_replica(serving, model_dir):
    backend, started = serving
    launch = ReplicaLaunch("wine-r1-a", "wine", "wine", "1", model_dir, "auto", default_runtime())
    handle = await backend.start_replica(launch)
    started.append(handle)
    deadline = time.monotonic() + 60
    while not await backend.ready(handle):
        assert backend.alive(handle), backend.replica_log(launch.replica_id)
        assert time.monotonic() < deadline, backend.replica_log(launch.replica_id)
        await asyncio.sleep(0.1)
    return handle


async def route(backend, handle) -> str:
    """Publish the replica as deployment ``wine`` with API_KEY; the deployment's URL."""
    backend.publish({"generation": 1, "deployments": {"wine": {
        "owner": "alice", "admins_allowed": False,
        "key_hashes": [hashlib.sha256(API_KEY.encode()).hexdigest()],
        "revisions": [{"name": "r1", "traffic_percent": 100,
                       "replicas": [{"id": "wine-r1-a", "url": handle.url, "state": "ready"}]}]}}})
    deadline = time.monotonic() + 10
    while (await backend.stats()).get("generation") != 1:
        assert time.monotonic() < deadline, "the router never took the routes"
        await asyncio.sleep(0.02)
    return f"http://127.0.0.1:{backend.router_port}/wine"


async def test_a_replica_refuses_everyone_but_the_router(serving, model_dir, wine):  # noqa: F811
    X, pipeline = wine
    backend, _ = serving
    handle = await start_replica(serving, model_dir)
    deployment_url = await route(backend, handle)
    payload = {"inputs": [tensor(X.iloc[[3, 70]].to_numpy())]}
    admin_token = backend.token_path.read_text().strip()
    other_key = replica_key(admin_token, f"http://127.0.0.1:{int(handle.url.rsplit(':', 1)[1]) + 1}")
    async with httpx.AsyncClient(timeout=10) as http:
        direct = f"{handle.url}/v2/models/wine/infer"
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY},
                        {"Authorization": f"Bearer {admin_token}"},
                        {"Authorization": f"token {admin_token}"},
                        {"Authorization": f"Bearer {other_key}"}):
            refused = await http.post(direct, json=payload, headers=headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert set(refused.json()) == {"error"}
        assert (await http.get(f"{handle.url}/v2/health/ready")).status_code == 401

        answered = await http.post(f"{deployment_url}/v2/models/wine/infer", json=payload,
                                   headers={"Authorization": f"Bearer {API_KEY}"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["outputs"][0]["data"] == pipeline.predict(X.iloc[[3, 70]]).tolist()
        assert (await http.post(f"{deployment_url}/v2/models/wine/infer", json=payload)).status_code == 401

    # the key is on no command line (which every user of the machine can read)
    key = replica_key(admin_token, handle.url)
    assert key not in " ".join(psutil.Process(handle.pid).cmdline())


STANDIN_ROUTER = """
import http.server, json, sys
class Old(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"ok": True, "generation": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Old).serve_forever()
"""


async def test_a_router_from_before_replica_keys_is_replaced_not_adopted(tmp_path):
    """It would forward requests without keys to replicas that now require them."""
    admin_port = free_port()
    old = subprocess.Popen([sys.executable, "-c", STANDIN_ROUTER, str(admin_port)],
                           start_new_session=True)
    try:
        serving_dir = tmp_path / "serving"
        (serving_dir / "logs").mkdir(parents=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{admin_port}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        (serving_dir / "router.json").write_text(json.dumps(
            {"pid": old.pid, "started": identity(old.pid), "admin_port": admin_port}))
        backend = LocalServingBackend(serving_dir=str(serving_dir), router_port=free_port())
        await backend.start()
        try:
            assert old.wait(15) is not None
            state = json.loads((serving_dir / "router.json").read_text())
            assert state["pid"] != old.pid and is_alive(state["pid"], state["started"])
            health = httpx.get(f"{backend._admin}/healthz", headers=backend._auth()).json()
            assert health["replica_keys"] is True
        finally:
            await backend.close(stop_all=True)
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
