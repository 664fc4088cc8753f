"""The control plane's one lifecycle: what ``FermiService.start_services`` starts (the job
launcher, the job runner, the deployment controller and router, the schedules, the workflows,
the monitor, the HTTP server), ``stop_services`` ends, leaving no task and no child process.

The service runs in this test's own process and event loop, on its own ports and data dir, with
the local backends; no hub is needed to start and stop it (its API answers without one for what
is checked here: health and unknown routes).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from fermi_extension.control_plane.app import FermiService
from fermi_extension.processes import free_port


@pytest.fixture
def service(tmp_path, monkeypatch):
    ports = {name: free_port() for name in ("service", "serving", "hub", "tracking")}
    monkeypatch.setenv("FERMI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FERMI_SERVING_PORT", str(ports["serving"]))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "lifecycle-test-token")
    monkeypatch.setenv("JUPYTERHUB_API_URL", f"http://127.0.0.1:{ports['hub']}/hub/api")
    app = FermiService(
        data_dir=str(tmp_path), backend="local",
        service_url=f"http://127.0.0.1:{ports['service']}", prefix="/services/fermi/",
        serving_url=f"http://127.0.0.1:{ports['serving']}",
        # nothing listens there: the tracker's warm-up fails fast instead of finding a server
        # some other test runs on the default port
        tracking_uri=f"http://127.0.0.1:{ports['tracking']}",
    )
    app.initialize([])
    return app


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]


async def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def test_stopping_the_control_plane_ends_every_task_and_child_process(service):
    me = asyncio.current_task()
    before_children = {p.pid for p in children()}
    await service.start_services()
    try:
        started = {t for t in asyncio.all_tasks() if t is not me}
        names = {t.get_name() for t in started}
        assert {"fermi-schedules", "fermi-workflows"} <= names
        coroutines = " ".join(repr(t.get_coro()) for t in started)
        # the runner, the controller and the monitor's evaluator and traffic sampler all run
        for part in ("JobRunner._loop", "DeploymentController._loop",
                     "Monitor._evaluate_forever", "TrafficHistory.run"):
            assert part in coroutines, part
        # the warm job launcher and the inference router are this process's children
        await wait_for(lambda: {p.pid for p in children()} - before_children,
                       "the job launcher and the router")
        base = service.service_url + "/services/fermi/api"
        async with httpx.AsyncClient(timeout=5) as http:
            health = await http.get(f"{base}/health")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
    finally:
        await service.stop_services()
    left = {t for t in asyncio.all_tasks() if t is not me and not t.done()}
    assert not left, [repr(t) for t in left]
    await wait_for(lambda: not {p.pid for p in children()} - before_children,
                   "the child processes to end", timeout=20)
    # and the port is closed: nothing answers any more
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as http:
            await http.get(service.service_url + "/services/fermi/api/health")


UNKNOWN = [("POST", "sweeps"), ("GET", "sweeps"), ("DELETE", "jobs/x/nothing"), ("GET", ""),
           ("PUT", "no/such/thing")]


async def test_an_unknown_api_path_answers_a_json_404(service):
    await service.start_services()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            answers = [(method, path, await http.request(
                method, f"{service.service_url}/services/fermi/api/{path}", json={}))
                for method, path in UNKNOWN]
    finally:
        await service.stop_services()
    for method, path, response in answers:
        assert response.status_code == 404, (method, path, response.text[:200])
        assert response.headers["Content-Type"].startswith("application/json"), (method, path)
        message = response.json()["message"]
        assert f"{method} /services/fermi/api/{path}" in message
        assert "/services/fermi/api/openapi.json" in message


async def test_stopping_ends_a_running_image_build_and_records_why(tmp_path):
    """A build is the builder's own process (here a stand-in that never finishes): the shutdown
    kills it and the build is failed with the reason, not left 'running' for ever."""
    import sys

    from fermi_extension.caller import Caller
    from fermi_extension.catalog.builds import BuildService, CreateBuild
    from fermi_extension.db import make_session_factory

    builds = BuildService(make_session_factory("sqlite://"), tmp_path / "builds",
                          command=[sys.executable, "-c", "import time; time.sleep(600)", "build"])
    before = {p.pid for p in children()}
    build = builds.start(Caller("root", admin=True), CreateBuild(
        slug="tf", dockerfile="FROM scratch\n", reference="registry.local/team/tf:1"))
    builder, = await wait_for(lambda: [p for p in children() if p.pid not in before],
                              "the builder process")
    await builds.stop()
    assert not builder.is_running() or builder.status() == psutil.STATUS_ZOMBIE
    described = builds.get(Caller("root", admin=True), build.id)
    assert described.status == "failed" and "control plane stopped" in described.reason
