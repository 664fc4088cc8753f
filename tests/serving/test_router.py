"""The router of the inference services, as real processes speaking real HTTP on 127.0.0.1.

Fixtures:
- ``standin``: one process (this file run as a script) serving stand-in replicas on ports of
  their own (``fast-a``, ``fast-b``, ``fast-c``, ``slow``: every answer of ``slow`` takes 0.4 s)
  and a stand-in hub ``/hub/api/user``. Each replica answers ``{"replica": id, ...}`` and has
  ``/stream``, ``/crash``, ``/echo`` and ``?sleep=S``; see ``standin_main``.
- ``start_router``: starts a router on a routes document (``RouterProcess``), stopped after the test.

Unit tests of the pure parts (routes parsing, balancing) come first.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fermi_extension.processes import free_port
from fermi_extension.serving.router import (
    Balancer,
    DeploymentStats,
    Replica,
    RoutesError,
    parse_routes,
)
from fermi_extension.serving.replica_key import replica_key

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-secret"
KEY = "wine-key-123"
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()
BEARER = {"Authorization": f"Bearer {KEY}"}
HUB_USERS = {
    "alice-token": {"name": "alice", "admin": False},
    "bob-token": {"name": "bob", "admin": False},
    "root-token": {"name": "root", "admin": True},
}
SLOW_SECONDS = 0.4


# -- the stand-in replicas and hub (this file run as a script) -------------------------------------


def standin_main(replica_ids: list[str]) -> None:
    """Serve each replica id on a port of its own plus a hub; print {"id": port, ..., "hub": port}."""
    from aiohttp import web

    def replica_app(rid: str) -> web.Application:
        async def any_path(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            sleep = float(request.query.get("sleep", SLOW_SECONDS if rid == "slow" else 0))
            if sleep:
                await asyncio.sleep(sleep)
            if request.path == "/crash":  # take the request, then drop the connection unanswered
                request.transport.close()
                await asyncio.sleep(0.05)
                raise ConnectionResetError
            if request.path == "/echo":
                return web.Response(body=body, headers={"X-Replica": rid},
                                    content_type="application/octet-stream")
            if request.path == "/stream":
                response = web.StreamResponse(headers={"X-Replica": rid, "Content-Type": "text/event-stream"})
                await response.prepare(request)
                for i in range(int(request.query.get("n", 3))):
                    await response.write(f"data: {i}\n\n".encode())
                    await asyncio.sleep(float(request.query.get("gap", 0.3)))
                await response.write_eof()
                return response
            status = int(request.query.get("status", 200))
            return web.json_response(
                {"replica": rid, "method": request.method, "path": request.path,
                 "target": request.raw_path, "headers": dict(request.headers),
                 "authorization": request.headers.getall("Authorization", []),
                 "body": body.decode(errors="replace")[:200], "body_len": len(body)},
                status=status, headers={"X-Replica": rid})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app

    async def hub_user(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        model = HUB_USERS.get(token) if scheme.lower() == "token" else None
        if model is None:
            return web.json_response({"status": 403, "message": "bad token"}, status=403)
        return web.json_response({"kind": "user", **model})

    async def main() -> None:
        ports = {}
        runners = []
        apps = [(rid, replica_app(rid)) for rid in replica_ids]
        hub = web.Application()
        hub.router.add_get("/hub/api/user", hub_user)
        apps.append(("hub", hub))
        for name, app in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports[name] = site._server.sockets[0].getsockname()[1]
            runners.append(runner)
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- harness ---------------------------------------------------------------------------------------


def replica(rid: str, port: int, state: str = "ready") -> dict:
    return {"id": rid, "url": f"http://127.0.0.1:{port}", "state": state}


def routes(generation: int = 1, **deployments) -> dict:
    return {"generation": generation, "deployments": deployments}


def deployment(*revisions: dict, owner: str = "alice", admins_allowed: bool = True) -> dict:
    return {"owner": owner, "admins_allowed": admins_allowed, "key_hashes": [KEY_HASH],
            "revisions": list(revisions)}


def revision(name: str, traffic: int, *replicas: dict) -> dict:
    return {"name": name, "traffic_percent": traffic, "replicas": list(replicas)}


def write_atomic(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


class RouterProcess:
    """The router as the control plane starts it, its routes in ``tmp/routes.json`` (written
    here from ``doc``), or in ``routes``, a file the caller keeps (a ConfigMap's link)."""

    def __init__(self, tmp: Path, doc: dict | None, hub_api_url: str = "",
                 admin_host: str | None = None, routes: Path | None = None):
        self.routes_path = routes or tmp / "routes.json"
        if doc is not None:
            write_atomic(self.routes_path, doc)
        (tmp / "admin-token").write_text(ADMIN_TOKEN + "\n")
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.log = open(tmp / "router.log", "w+b")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fermi_extension.serving.router", "--port", str(self.port),
             "--host", "127.0.0.1", "--routes", str(self.routes_path), "--admin-port",
             str(self.admin_port), "--admin-token-file", str(tmp / "admin-token"),
             "--hub-api-url", hub_api_url,
             *(["--admin-host", admin_host] if admin_host else [])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{self.admin_url}/healthz", headers=self.admin_headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, "the router did not start:\n" + self.output()
            time.sleep(0.02)

    admin_headers = {"Authorization": f"token {ADMIN_TOKEN}"}

    def stats(self) -> dict:
        response = httpx.get(f"{self.admin_url}/stats", headers=self.admin_headers)
        assert response.status_code == 200, response.text
        return response.json()

    def publish(self, doc) -> None:
        write_atomic(self.routes_path, doc)

    def wait_generation(self, generation: int, timeout: float = 1.0) -> float:
        started = time.monotonic()
        while self.stats()["generation"] != generation:
            assert time.monotonic() - started < timeout, self.output()
            time.sleep(0.005)
        return time.monotonic() - started

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def standin():
    process = subprocess.Popen(
        [sys.executable, __file__, "fast-a", "fast-b", "fast-c", "slow"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    ports = json.loads(process.stdout.readline())
    yield ports
    process.kill()
    process.wait()


@pytest.fixture
def start_router(tmp_path):
    started = []

    def start(doc: dict, hub_api_url: str = "") -> RouterProcess:
        router = RouterProcess(tmp_path, doc, hub_api_url)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


@pytest.fixture
def one_replica(standin, start_router) -> RouterProcess:
    router = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))))
    router.replica_port = standin["fast-a"]
    return router


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


# -- unit: routes parsing and balancing ------------------------------------------------------------


def test_parse_routes_keeps_replicas_and_counters_across_generations():
    doc = routes(wine=deployment(revision("r1", 100, replica("a", 1001), replica("b", 1002))))
    first = parse_routes(doc)
    a = first.replicas["a"]
    a.in_flight, first.deployments["wine"].stats.requests = 2, 7
    doc["deployments"]["wine"]["revisions"][0]["replicas"][0]["state"] = "draining"
    second = parse_routes(doc, first)
    assert second.replicas["a"] is a and a.state == "draining" and a.in_flight == 2
    assert second.deployments["wine"].stats.requests == 7
    assert [r.id for r in second.deployments["wine"].revisions[0].ready] == ["b"]


@pytest.mark.parametrize("bad", [
    [], {"generation": "x"}, {"deployments": []},
    routes(wine={"owner": "", "revisions": []}),
    routes(wine=deployment(revision("r1", 120))),
    routes(wine=deployment(revision("r1", 100, {"id": "a", "url": "ftp://x:1", "state": "ready"}))),
    routes(wine=deployment(revision("r1", 100, replica("a", 1), replica("a", 2)))),
])
def test_parse_routes_rejects_bad_documents_without_touching_the_previous_table(bad):
    good = parse_routes(routes(wine=deployment(revision("r1", 100, replica("a", 1001)))))
    with pytest.raises(RoutesError):
        parse_routes(bad, good)
    assert good.replicas["a"].state == "ready"


def test_balancer_weighted_split_least_in_flight_and_zero_traffic():
    table = parse_routes(routes(wine=deployment(
        revision("r1", 80, replica("a", 1), replica("b", 2)), revision("r2", 20, replica("c", 3)),
        revision("old", 0, replica("d", 4)))))
    wine = table.deployments["wine"]
    balancer = Balancer(random.Random(7))
    picks = collections.Counter(balancer.pick(wine, [])[0].id for _ in range(10_000))
    assert picks["d"] == 0
    assert 0.18 < picks["c"] / 10_000 < 0.22
    assert abs(picks["a"] - picks["b"]) < 200  # ties go round
    table.replicas["a"].in_flight = 3
    assert {balancer.pick(wine, [], wine.revisions[0])[0].id for _ in range(20)} == {"b"}
    # a retry goes to another replica, then another revision, never to 0 % traffic
    tried = [table.replicas["b"], table.replicas["a"]]
    assert balancer.pick(wine, tried, wine.revisions[0])[0].id == "c"
    assert balancer.pick(wine, tried + [table.replicas["c"]], wine.revisions[0]) == (None, None)


def test_latency_window_is_bounded_and_forgets_old_samples():
    stats = DeploymentStats()
    for i in range(20_000):
        stats.latency.add(1000.0 + i * 0.001, 0.001 * (i % 10))
    assert len(stats.latency.values) == 8192
    p = stats.latency.percentiles(now=1020.0)
    assert p["count"] == 8192 and 4.0 <= p["p50"] <= 5.0 and p["p99"] == pytest.approx(9.0)
    assert stats.latency.percentiles(now=2000.0)["count"] == 0


def test_each_replica_is_sent_the_key_of_its_own_url_in_the_head():
    doc = routes(wine=deployment(revision("r1", 100, replica("a", 1001), replica("b", 1002))))
    table = parse_routes(doc, master="m")
    a_key, b_key = replica_key("m", "http://127.0.0.1:1001"), replica_key("m", "http://127.0.0.1:1002")
    assert table.replicas["a"].host_header == b"127.0.0.1:1001\r\nAuthorization: Bearer " + a_key.encode()
    assert table.replicas["b"].host_header.endswith(b_key.encode()) and a_key != b_key
    assert parse_routes(doc).replicas["a"].host_header == b"127.0.0.1:1001"  # no master, no key


def test_replica_urls_as_kubernetes_gives_them_and_nothing_else():
    """A Service URL without a port is port 80 (KServe's NAME-predictor); with one, that port.
    The key sent is of the url as written, the string the control plane derived it from."""
    bare = Replica("a", "http://wine-v1-predictor.fermi.svc.cluster.local", "m")
    assert (bare.upstream.host, bare.upstream.port) == ("wine-v1-predictor.fermi.svc.cluster.local", 80)
    assert bare.host_header.endswith(
        replica_key("m", "http://wine-v1-predictor.fermi.svc.cluster.local").encode())
    declared = Replica("b", "http://wine-v1.fermi.svc.cluster.local:8080")
    assert declared.upstream.port == 8080
    for bad in ("ftp://x:1", "http://h/path", "http://h:99999", "http://u:p@h:1", "http://h:1?q",
                "http://:80", "h:80"):
        with pytest.raises(RoutesError, match="http://HOST or http://HOST:PORT"):
            Replica("a", bad)


# -- authentication --------------------------------------------------------------------------------


def test_api_keys(one_replica):
    url = f"{one_replica.url}/wine/v2/models/m/infer"
    none = httpx.post(url, json={})
    assert none.status_code == 401 and "error" in none.json()
    assert none.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Basic eDp5"}).status_code == 401
    ok = httpx.post(url, json={"inputs": []}, headers=BEARER)
    assert ok.status_code == 200 and ok.json()["replica"] == "fast-a"
    assert ok.json()["path"] == "/v2/models/m/infer"
    # the caller's credentials stay here; the replica is shown its own key, and only that
    forwarded = {k.lower() for k in ok.json()["headers"]}
    replica_bearer = f"Bearer {replica_key(ADMIN_TOKEN, 'http://127.0.0.1:%d' % one_replica.replica_port)}"
    assert ok.json()["authorization"] == [replica_bearer] and "x-api-key" not in forwarded
    by_header = httpx.post(url, json={}, headers={"X-API-Key": KEY})
    assert by_header.status_code == 200 and by_header.json()["authorization"] == [replica_bearer]


def test_hub_tokens(standin, start_router):
    hub = f"http://127.0.0.1:{standin['hub']}/hub/api"
    router = start_router(routes(
        wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"]))),
        private=deployment(revision("r1", 100, replica("p-a", standin["fast-a"])), admins_allowed=False),
    ), hub_api_url=hub)

    def call(name, token):
        return httpx.get(f"{router.url}/{name}/v2/models/m", headers={"Authorization": f"token {token}"})

    assert call("wine", "alice-token").status_code == 200
    other = call("wine", "bob-token")
    assert other.status_code == 403 and "bob" in other.json()["error"]
    assert call("wine", "root-token").status_code == 200
    assert call("private", "root-token").status_code == 403
    assert call("wine", "nobody-token").status_code == 401
    assert call("wine", "alice-token").status_code == 200  # from the cache

    hubless = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))),
                           hub_api_url=f"http://127.0.0.1:{closed_port()}/hub/api")
    down = httpx.get(f"{hubless.url}/wine/v2/models/m", headers={"Authorization": "token alice-token"})
    assert down.status_code == 503 and "hub" in down.json()["error"]
    assert httpx.get(f"{hubless.url}/wine/v2/models/m", headers=BEARER).status_code == 200


# -- proxying --------------------------------------------------------------------------------------


def test_method_query_headers_and_bodies_are_forwarded(one_replica):
    with httpx.Client(base_url=f"{one_replica.url}/wine", headers=BEARER) as client:
        answer = client.put("/v2/x/y?a=1&b=%20two", content=b"hello", headers={"X-Trace": "t1"}).json()
        assert (answer["method"], answer["target"]) == ("PUT", "/v2/x/y?a=1&b=%20two")
        assert answer["body"] == "hello" and answer["headers"]["X-Trace"] == "t1"
        big = os.urandom(3 * 1024 * 1024)
        echoed = client.post("/echo", content=big)
        assert echoed.status_code == 200 and echoed.content == big
        chunked = client.post("/echo", content=iter([b"a" * 70_000, b"b" * 10]))  # chunked upload
        assert chunked.content == b"a" * 70_000 + b"b" * 10
        assert client.get("/anything?status=404").status_code == 404
        head = client.head("/anything")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/anything").json()["replica"] == "fast-a"  # the connection still works


def test_streamed_answers_arrive_chunk_by_chunk(one_replica):
    with httpx.Client(headers=BEARER, timeout=10) as client:
        started = time.monotonic()
        arrivals = []
        with client.stream("GET", f"{one_replica.url}/wine/stream?n=3&gap=0.3") as response:
            assert response.headers["content-type"] == "text/event-stream"
            for chunk in response.iter_raw():
                arrivals.append((time.monotonic() - started, chunk))
        assert b"".join(c for _, c in arrivals) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert arrivals[0][0] < 0.25 and arrivals[-1][0] > 0.55


def test_unknown_deployment_and_health(standin, start_router):
    router = start_router(routes(
        wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"]))),
        cold=deployment(revision("r1", 100, replica("cold-a", standin["fast-b"], "starting"))),
    ))
    missing = httpx.get(f"{router.url}/nope/v2/models/m", headers=BEARER)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert httpx.get(f"{router.url}/wine/v2/health/live").status_code == 200
    assert httpx.get(f"{router.url}/wine/v2/health/ready").status_code == 200
    assert httpx.get(f"{router.url}/cold/v2/health/live").status_code == 200
    assert httpx.get(f"{router.url}/cold/v2/health/ready").status_code == 503
    assert httpx.get(f"{router.url}/nope/v2/health/live").status_code == 404


def test_no_ready_replica_is_503(standin, start_router):
    router = start_router(routes(
        cold=deployment(revision("r1", 100, replica("cold-a", standin["fast-a"], "draining"))),
        empty=deployment(revision("r1", 100)),
    ))
    for name in ("cold", "empty"):
        response = httpx.post(f"{router.url}/{name}/v2/models/m/infer", json={}, headers=BEARER)
        assert response.status_code == 503
        assert response.json()["error"].startswith("no replica is ready")
    assert router.stats()["deployments"]["cold"]["errors"] == 1


# -- balancing -------------------------------------------------------------------------------------


async def fire(url: str, n: int, concurrency: int, **kwargs) -> collections.Counter:
    """n requests, at most ``concurrency`` at once; counts the replicas that answered."""
    counts: collections.Counter = collections.Counter()
    queue = list(range(n))
    async with httpx.AsyncClient(headers=BEARER, timeout=10,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while queue:
                queue.pop()
                response = await client.post(url, json={"inputs": []}, **kwargs)
                counts[response.json().get("replica") if response.status_code == 200 else response.status_code] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def test_least_in_flight_prefers_the_fast_replica(standin, start_router):
    router = start_router(routes(wine=deployment(revision(
        "r1", 100, replica("wine-fast", standin["fast-a"]), replica("wine-slow", standin["slow"])))))
    counts = await fire(f"{router.url}/wine/v2/models/m/infer", 300, 6)
    assert sum(counts.values()) == 300 and set(counts) <= {"fast-a", "slow"}
    assert counts["fast-a"] >= 0.9 * 300, counts
    replicas = router.stats()["deployments"]["wine"]["replicas"]
    assert replicas["wine-fast"]["requests"] == counts["fast-a"]


async def test_canary_split(standin, start_router):
    router = start_router(routes(wine=deployment(
        revision("r1", 80, replica("wine-r1-0", standin["fast-a"]), replica("wine-r1-1", standin["fast-b"])),
        revision("r2", 20, replica("wine-r2-0", standin["fast-c"])))))
    counts = await fire(f"{router.url}/wine/v2/models/m/infer", 1000, 8)
    assert sum(counts.values()) == 1000 and counts["fast-c"] + counts["fast-a"] + counts["fast-b"] == 1000
    assert 150 <= counts["fast-c"] <= 250, counts
    revisions = router.stats()["deployments"]["wine"]["revisions"]
    assert revisions["r2"]["requests"] == counts["fast-c"]
    assert revisions["r1"]["requests"] == counts["fast-a"] + counts["fast-b"]


async def test_a_draining_replica_finishes_its_request_and_gets_no_new_ones(standin, start_router):
    doc = routes(wine=deployment(revision("r1", 100, replica("wine-slow", standin["slow"]))))
    router = start_router(doc)
    async with httpx.AsyncClient(headers=BEARER, timeout=10) as client:
        slow = asyncio.ensure_future(client.post(f"{router.url}/wine/v2/models/m/infer?sleep=1.0", json={}))
        while router.stats()["deployments"]["wine"]["replicas"]["wine-slow"]["in_flight"] != 1:
            await asyncio.sleep(0.01)
        router.publish(routes(2, wine=deployment(revision(
            "r1", 100, replica("wine-slow", standin["slow"], "draining"), replica("wine-new", standin["fast-a"])))))
        router.wait_generation(2)
        assert router.stats()["deployments"]["wine"]["replicas"]["wine-slow"]["in_flight"] == 1
        counts = await fire(f"{router.url}/wine/v2/models/m/infer", 20, 4)
        assert counts == {"fast-a": 20}
        answer = await slow
        assert answer.status_code == 200 and answer.json()["replica"] == "slow"
    assert router.stats()["deployments"]["wine"]["replicas"]["wine-slow"]["in_flight"] == 0


async def test_a_dead_replica_is_skipped_without_failed_requests(standin, start_router):
    router = start_router(routes(wine=deployment(revision(
        "r1", 100, replica("wine-dead", closed_port()), replica("wine-ok", standin["fast-a"])),
        revision("r2", 0, replica("wine-idle", standin["fast-b"])))))
    counts = await fire(f"{router.url}/wine/v2/models/m/infer", 100, 4)
    assert counts == {"fast-a": 100}
    wine = router.stats()["deployments"]["wine"]
    assert wine["replicas"]["wine-dead"]["errors"] >= 1 and wine["replicas"]["wine-dead"]["requests"] == 0
    assert wine["errors"] == wine["replicas"]["wine-dead"]["errors"]  # failed attempts, no 5xx


def test_a_request_that_reached_a_replica_is_not_retried(standin, start_router):
    router = start_router(routes(wine=deployment(revision(
        "r1", 100, replica("wine-a", standin["fast-a"]), replica("wine-b", standin["fast-b"])))))
    response = httpx.post(f"{router.url}/wine/crash", json={}, headers=BEARER)
    assert response.status_code == 502 and "not retried" in response.json()["error"]
    replicas = router.stats()["deployments"]["wine"]["replicas"]
    assert replicas["wine-a"]["requests"] + replicas["wine-b"]["requests"] == 1


# -- the routes file -------------------------------------------------------------------------------


def test_routes_changes_apply_without_restart_and_bad_files_are_ignored(standin, start_router):
    router = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))))
    pid = router.process.pid
    with httpx.Client(headers=BEARER) as client:
        assert client.get(f"{router.url}/wine/x").json()["replica"] == "fast-a"
        router.publish(routes(2, wine=deployment(revision("r2", 100, replica("wine-b", standin["fast-b"]))),
                              beer=deployment(revision("r1", 100, replica("beer-c", standin["fast-c"])))))
        assert router.wait_generation(2) < 0.2
        assert client.get(f"{router.url}/wine/x").json()["replica"] == "fast-b"
        assert client.get(f"{router.url}/beer/x").json()["replica"] == "fast-c"
        for bad in ("{not json", json.dumps(routes(3, wine={"owner": 5}))):
            router.publish(bad)
            time.sleep(0.2)
            assert router.stats()["generation"] == 2
            assert client.get(f"{router.url}/beer/x").json()["replica"] == "fast-c"
        router.routes_path.unlink()
        time.sleep(0.15)
        assert client.get(f"{router.url}/beer/x").status_code == 200
        router.publish(routes(4))
        router.wait_generation(4)
        assert client.get(f"{router.url}/beer/x").status_code == 404
    assert router.process.pid == pid and router.process.poll() is None
    assert "Ignoring the routes file" in router.output()


# -- admin API and stopping ------------------------------------------------------------------------


async def test_stats_counters_and_in_flight(standin, start_router):
    router = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))))
    assert httpx.get(f"{router.admin_url}/stats").status_code == 401
    assert httpx.get(f"{router.admin_url}/stats", headers={"Authorization": "token nope"}).status_code == 401
    assert httpx.get(f"{router.admin_url}/healthz", headers=router.admin_headers).status_code == 200
    async with httpx.AsyncClient(headers=BEARER, timeout=10) as client:
        url = f"{router.url}/wine/v2/models/m/infer"
        for _ in range(5):
            assert (await client.post(url, json={})).status_code == 200
        assert (await client.post(url + "?status=500", json={})).status_code == 500
        assert (await client.post(url, json={}, headers={"Authorization": "Bearer bad"})).status_code == 401
        pending = [asyncio.ensure_future(client.post(url + "?sleep=0.6", json={})) for _ in range(3)]
        deadline = time.monotonic() + 2
        while router.stats()["deployments"]["wine"]["in_flight"] != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        wine = router.stats()["deployments"]["wine"]
        assert wine["replicas"]["wine-a"]["in_flight"] == 3
        await asyncio.gather(*pending)
    stats = router.stats()
    wine = stats["deployments"]["wine"]
    assert stats["generation"] == 1
    assert (wine["in_flight"], wine["requests"], wine["errors"]) == (0, 9, 1)
    assert wine["replicas"]["wine-a"] == {"in_flight": 0, "requests": 9, "errors": 1, "state": "ready"}
    assert wine["revisions"]["r1"]["requests"] == 9
    assert wine["latency_ms"]["count"] == 9 and 0 < wine["latency_ms"]["p50"] <= wine["latency_ms"]["p99"]
    assert wine["latency_ms"]["p99"] >= 600


async def test_a_request_whose_caller_hung_up_is_abandoned(standin, start_router):
    router = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))))
    async with httpx.AsyncClient(headers=BEARER, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{router.url}/wine/v2/models/m/infer?sleep=5", json={})
    deadline = time.monotonic() + 2.5
    while router.stats()["deployments"]["wine"]["in_flight"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    wine = router.stats()["deployments"]["wine"]
    assert wine["replicas"]["wine-a"]["in_flight"] == 0 and wine["errors"] == 0


async def test_sigterm_finishes_requests_in_flight_then_exits_0(standin, start_router):
    router = start_router(routes(wine=deployment(revision("r1", 100, replica("wine-a", standin["fast-a"])))))
    async with httpx.AsyncClient(headers=BEARER, timeout=10) as client:
        slow = asyncio.ensure_future(client.post(f"{router.url}/wine/v2/models/m/infer?sleep=0.8", json={}))
        while router.stats()["deployments"]["wine"]["in_flight"] != 1:
            await asyncio.sleep(0.01)
        router.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{router.url}/wine/v2/health/live", headers={"Connection": "close"})
        answer = await slow
        assert answer.status_code == 200 and answer.json()["replica"] == "fast-a"
    assert await asyncio.to_thread(router.process.wait, 5) == 0


# -- one source of truth for readiness: the control plane and the router agree ----------------------


def deployment_status(factory) -> tuple[str, list[str]]:
    from fermi_extension.db import Deployment, Replica as ReplicaRow

    with factory() as session:
        d = session.get(Deployment, "wine")
        states = [r.state for r in session.query(ReplicaRow).filter_by(deployment="wine")]
        return d.status, states


async def test_an_infer_right_after_status_ready_is_never_503(wine, tmp_path):  # noqa: F811
    """The control plane turns a deployment ``ready`` only once the router's own table routes to
    a ready replica of it (asked through the router's admin API). A real router, real replicas,
    the real controller: each time the deployment becomes ready again (stopped, then started,
    so every round has a new replica the router has never seen), the very first infer sent once
    the status (or the replica's state) says ready is answered 200, never 503."""
    import mlflow.sklearn

    from fermi_extension.backends.local.serving import LocalServingBackend
    from fermi_extension.catalog.store import CatalogStore, load_catalog_file
    from fermi_extension.db import Deployment, Revision, make_session_factory
    from fermi_extension.deployments.service import DeploymentController, hash_key
    from fermi_extension.paths import shipped
    from fermi_extension.spec import runtime_spec

    factory = make_session_factory(f"sqlite:///{tmp_path / 'fermi.sqlite'}")
    catalog = CatalogStore(factory)
    catalog.seed_if_empty(load_catalog_file(shipped("hub_config") / "catalog.yaml"))
    backend = LocalServingBackend(serving_dir=str(tmp_path / "serving"), router_port=free_port())
    X, pipeline = wine
    mlflow.sklearn.save_model(pipeline, backend.model_dir("wine", "1"), input_example=X[:2],
                              pip_requirements=["scikit-learn", "skops"])
    _, image, profile = catalog.resolve(None, "cpu-small")
    with factory() as session:
        session.add(Deployment(
            name="wine", owner="ann", model="wine", engine="auto", profile="cpu-small",
            runtime=runtime_spec(image, profile).model_dump(mode="json"), min_replicas=1,
            max_replicas=1, target_concurrency=5, scale_down_delay_seconds=0, desired_replicas=1,
            status="pending", stable_revision="r1", key_hash=hash_key(KEY)))
        session.add(Revision(deployment="wine", name="r1", version="1"))
        session.commit()
    controller = DeploymentController(factory, type("Service", (), {"traffic": {}})(), backend,
                                      tracker=None, interval=0.2)
    await controller.start()
    row = [float(x) for x in X.iloc[0]]
    body = {"inputs": [{"name": "input-0", "shape": [1, 13], "datatype": "FP64", "data": row}]}
    url = f"http://127.0.0.1:{backend.router_port}/wine/v2/models/wine/infer"

    async def until(what: str, predicate, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(deployment_status(factory)):
            assert time.monotonic() < deadline, f"{what}: {deployment_status(factory)}"
            await asyncio.sleep(0.002)

    def set_stopped(stopped: bool) -> None:
        with factory() as session:
            session.get(Deployment, "wine").stopped = stopped
            session.commit()
        controller.wake()

    try:
        async with httpx.AsyncClient(timeout=10, headers=BEARER) as client:
            for round_ in range(4):
                if round_ % 2:  # the replica's state, which test_restart waits on
                    await until("a ready replica", lambda s: "ready" in s[1])
                else:
                    await until("status ready", lambda s: s[0] == "ready")
                answer = await client.post(url, json=body)
                assert answer.status_code == 200, (round_, answer.status_code, answer.text)
                assert answer.json()["outputs"][0]["data"] == [int(pipeline.predict(X.iloc[:1])[0])]
                set_stopped(True)
                await until("stopped, no replica", lambda s: s == ("stopped", []))
                set_stopped(False)
                await until("pending again", lambda s: s[0] == "pending")
    finally:
        await controller.stop(stop_all=True)


if __name__ == "__main__":
    standin_main(sys.argv[1:])
