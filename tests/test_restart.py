"""Nothing is lost on restart: platform processes killed with -9, then the platform again.

Each test runs its own platform (it kills parts of it); the job processes live in sessions of
their own and are re-attached, or accounted for from their job folder, by the next control plane.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from fermi_extension.jobs.files import JobFiles, read_json

from .platform import make_notebook, start_platform

pytestmark = pytest.mark.hub


@pytest.fixture
def own_platform(tmp_path):
    running = start_platform(tmp_path / "data")
    yield running
    running.stop()


def command_line(process: psutil.Process | None) -> str:
    try:
        return " ".join(process.cmdline()) if process else ""
    except psutil.Error:  # a zombie, or gone meanwhile
        return ""


MARKERS = (("hub", "-m fermi_extension.start_hub -f"), ("proxy", "configurable-http-proxy"),
           ("control plane", "fermi_extension.control_plane.app"),
           ("tracking", "fermi_extension.tracking.server"),
           ("launcher", "fermi_extension.backends.local.launcher"))


def platform_processes(platform) -> dict[str, psutil.Process]:
    """The platform's own processes (not its jobs), by role."""
    found = {"up": psutil.Process(platform.process.pid)}
    for child in found["up"].children(recursive=True):
        line = command_line(child)
        for key, marker in MARKERS:
            if marker not in line:
                continue
            # job processes are forks of the launcher (the same command line): not platform ones
            if key == "launcher" and "service.app" not in command_line(child.parent()):
                continue
            found[key] = child
    return found


def job_process(platform, job_id: str) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        recorded = read_json(JobFiles(platform.data / "jobs" / job_id).process)
        if recorded:
            return psutil.Process(recorded["pid"])
        time.sleep(0.1)
    raise AssertionError("the job never recorded its process")


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_control_plane_killed_reattaches_its_running_job(own_platform):
    alice = own_platform.user("alice")
    # long enough to outlast the hub noticing the death (its service poll) and the restart
    job = alice.submit(make_notebook("import time; time.sleep(30)"))
    alice.wait(job["id"], statuses=("running",))
    process = job_process(own_platform, job["id"])
    old = platform_processes(own_platform)["control plane"]
    old.send_signal(signal.SIGKILL)
    # the hub restarts its managed service; the new control plane finds the attempt alive
    wait_until(lambda: getattr(platform_processes(own_platform).get("control plane"), "pid",
                               old.pid) != old.pid,
               what="the hub to restart the control plane")
    wait_until(lambda: alice.api("GET", f"jobs/{job['id']}").status_code == 200,
               what="the new control plane to answer")
    assert process.is_running()
    done = alice.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1  # it ran once, not twice
    assert "reattached" in [e["kind"] for e in done["events"]]


def test_a_killed_job_process_is_marked_and_retried_per_policy(own_platform):
    alice = own_platform.user("alice")
    nb = make_notebook("import time; time.sleep(4)")
    retried = alice.submit(nb, max_retries=1)
    final = alice.submit(nb, max_retries=0)
    for job in (retried, final):
        alice.wait(job["id"], statuses=("running",))
        job_process(own_platform, job["id"]).send_signal(signal.SIGKILL)
    done = alice.wait(retried["id"], timeout=90)
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert "retrying" in [e["kind"] for e in done["events"]]
    failed = alice.wait(final["id"])
    assert failed["status"] == "failed"
    assert "killed or crashed" in failed["reason"]


def test_whole_platform_killed_then_up_again_loses_nothing(tmp_path):
    data = tmp_path / "data"
    first = start_platform(data)
    alice = first.user("alice")
    long_job = alice.submit(make_notebook("import time; time.sleep(10)"), name="long")
    other = alice.submit(make_notebook("import time; time.sleep(10)"), name="other")
    alice.wait(long_job["id"], statuses=("running",))
    alice.wait(other["id"], statuses=("running",))
    queued = [alice.submit(make_notebook(), name=f"queued-{i}") for i in range(2)]
    assert all(alice.job(j["id"])["status"] == "queued" for j in queued)
    survivor = job_process(first, long_job["id"])
    # a crash: every platform process dies at once, with no chance to clean up
    for process in platform_processes(first).values():
        process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert survivor.is_running()  # jobs live in sessions of their own

    second = start_platform(data, port=first.port)
    try:
        alice.http.base_url = second.url
        for job in (long_job, other, *queued):
            done = alice.wait(job["id"], timeout=120)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 1, done  # none ran twice
        assert "reattached" in [e["kind"] for e in alice.job(long_job["id"])["events"]]
    finally:
        second.stop()


def test_ctrl_c_stops_everything_and_the_next_start_runs_interrupted_jobs(tmp_path):
    data = tmp_path / "data"
    first = start_platform(data)
    alice = first.user("alice")
    job = alice.submit(make_notebook("import time; time.sleep(30)"))
    alice.wait(job["id"], statuses=("running",))
    process = job_process(first, job["id"])
    children = platform_processes(first)
    first.stop(signal.SIGINT)
    assert first.process.returncode == 0
    gone = psutil.wait_procs([p for k, p in children.items() if k != "up"] + [process], timeout=30)[1]
    assert gone == [], f"still running after Ctrl-C: {gone}"

    second = start_platform(data, port=first.port)
    try:
        alice.http.base_url = second.url
        described = alice.job(job["id"])
        assert "requeued" in [e["kind"] for e in described["events"]]
        assert alice.wait(job["id"], statuses=("running",))["status"] == "running"
        alice.api("POST", f"jobs/{job['id']}/cancel")
    finally:
        second.stop()


TRAIN = """
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
mlflow.sklearn.log_model(LogisticRegression(max_iter=300).fit(X, y), name="model",
                         registered_model_name=model_name)
"""


def ready_replicas(user, name: str) -> set[str]:
    d = user.api("GET", f"deployments/{name}").json()
    return {r["id"] for r in d.get("replicas", []) if r["state"] == "ready"}


def test_deployments_keep_answering_through_a_crash_and_are_restored(tmp_path):
    data = tmp_path / "data"
    first = start_platform(data)
    alice = first.user("alice")
    job = alice.wait(alice.submit(make_notebook(TRAIN, parameters='model_name = "iris"'))["id"],
                     timeout=180)
    assert job["status"] == "succeeded", job
    # the notebook never called start_run: the platform still attached MLflow to the job's run
    assert job["models"] == [{"name": "iris", "version": "1"}]
    assert alice.api("GET", "models/iris").json()["versions"][0]["job"]["id"] == job["id"]
    created = alice.api("POST", "deployments", json={
        "name": "iris", "model": "iris", "version": "1", "min_replicas": 2, "max_replicas": 2})
    assert created.status_code == 201, created.text
    key, url = created.json()["api_key"], created.json()["url"]
    wait_until(lambda: len(ready_replicas(alice, "iris")) == 2, timeout=120, what="2 ready replicas")
    before = ready_replicas(alice, "iris")
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    headers = {"Authorization": f"Bearer {key}"}
    import httpx

    assert httpx.post(f"{url}/v2/models/iris/infer", json=infer, headers=headers).status_code == 200

    # a crash of the platform: the endpoint's router and replicas live on and keep answering
    for process in platform_processes(first).values():
        process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert httpx.post(f"{url}/v2/models/iris/infer", json=infer, headers=headers).status_code == 200

    second = start_platform(data, port=first.port, serving_port=first.serving_port)
    try:
        alice.http.base_url = second.url
        wait_until(lambda: alice.api("GET", "deployments/iris").json().get("status") == "ready",
                   what="the deployment to be ready again")
        assert ready_replicas(alice, "iris") == before  # adopted, not restarted
        assert httpx.post(f"{url}/v2/models/iris/infer", json=infer, headers=headers).status_code == 200
        # Ctrl-C stops every process; the next start restores the declared state
        second.stop(signal.SIGINT)
        assert second.process.returncode == 0
        try:
            refused = httpx.post(f"{url}/v2/models/iris/infer", json=infer, headers=headers, timeout=2)
            assert refused.status_code >= 500
        except httpx.HTTPError:
            pass  # nothing listens any more: expected
    finally:
        second.stop()
    third = start_platform(data, port=first.port, serving_port=first.serving_port)
    try:
        alice.http.base_url = third.url
        wait_until(lambda: len(ready_replicas(alice, "iris")) == 2, timeout=120,
                   what="2 replicas again after a restart")
        assert httpx.post(f"{url}/v2/models/iris/infer", json=infer, headers=headers).status_code == 200
    finally:
        third.stop()
