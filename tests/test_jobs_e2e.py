"""Training jobs end to end on the real embedded platform: hub, control plane, papermill, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from fermi_extension.jobs.files import JobFiles

pytestmark = pytest.mark.hub


def registered_versions(platform, name: str) -> list[dict]:
    response = httpx.get(
        f"{platform.tracking_url}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name='{name}'"},
    )
    return response.json().get("model_versions", [])


def test_template_job_is_tracked_and_registers_its_model(platform, alice, template):
    model_name = f"wine-{alice.name}"
    job = alice.submit(template, name="wine", parameters={"C": 0.5, "model_name": model_name},
                       notebook_name="tabular-classifier.ipynb")
    assert job["status"] == "queued" and job["owner"] == alice.name
    done = alice.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert 0.5 < done["metrics"]["accuracy"] <= 1.0
    assert done["parameters"] == {"C": 0.5, "model_name": model_name}
    assert done["progress"]["cells_done"] == done["progress"]["cells_total"] > 0
    assert [e["kind"] for e in done["events"]][:2] == ["queued", "started"]

    output = alice.api("GET", f"jobs/{job['id']}/output")
    assert output.status_code == 200
    executed = output.json()
    assert "C = 0.5" in json.dumps([c["source"] for c in executed["cells"]])  # the injected cell
    logs = alice.api("GET", f"jobs/{job['id']}/logs").json()
    assert "accuracy=" in logs["text"] and logs["complete"]

    # the model version's lineage leads back to this job's run
    versions = registered_versions(platform, model_name)
    assert [v["run_id"] for v in versions] == [done["tracking_run_id"]]
    assert done["models"] == [{"name": model_name, "version": versions[0]["version"]}]
    run = httpx.get(f"{platform.tracking_url}/api/2.0/mlflow/runs/get",
                    params={"run_id": done["tracking_run_id"]}).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["fermi.job_id"] == job["id"] and tags["fermi.user"] == alice.name
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]}["C"] == "0.5"
    artifacts = httpx.get(f"{platform.tracking_url}/api/2.0/mlflow/artifacts/list",
                          params={"run_id": done["tracking_run_id"]}).json()
    assert "output.ipynb" in [f["path"] for f in artifacts.get("files", [])]


def test_failing_notebook_fails_with_the_cell_error(alice, tiny_notebook):
    job = alice.submit(tiny_notebook("raise ValueError('bad data in column 3')"))
    done = alice.wait(job["id"])
    assert done["status"] == "failed"
    assert "ValueError" in done["reason"] and "bad data in column 3" in done["reason"]
    assert done["attempt"] == 1  # a notebook error is not retried automatically


def test_parameters_reach_the_notebook(alice, tiny_notebook):
    nb = tiny_notebook("assert x == 41, x", parameters="x = 1")
    done = alice.wait(alice.submit(nb, parameters={"x": 41})["id"])
    assert done["status"] == "succeeded", done["reason"]


def job_processes(files: JobFiles) -> list[psutil.Process]:
    """Every process working in the job's folder: the job process and its kernel."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        try:
            if process.info["cwd"] and process.info["cwd"].startswith(str(files.root)):
                found.append(process)
        except psutil.Error:
            pass
    return found


def test_cancel_stops_the_whole_process_tree(platform, alice, tiny_notebook):
    job = alice.submit(tiny_notebook("import time; time.sleep(120)"))
    alice.wait(job["id"], statuses=("running",))
    files = JobFiles(platform.data / "jobs" / job["id"])
    deadline = time.monotonic() + 30
    while len(job_processes(files)) < 2 and time.monotonic() < deadline:  # job + its kernel
        time.sleep(0.2)
    assert len(job_processes(files)) >= 2
    response = alice.api("POST", f"jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert job_processes(files) == []
    assert alice.job(job["id"])["status"] == "cancelled"
    again = alice.api("POST", f"jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["message"]


def test_timeout_stops_a_job(alice, tiny_notebook):
    job = alice.submit(tiny_notebook("import time; time.sleep(120)"), timeout_seconds=3)
    done = alice.wait(job["id"], timeout=60)
    assert done["status"] == "failed" and "Timed out" in done["reason"]


def test_queue_holds_jobs_past_capacity_and_respects_priority(platform, alice, tiny_notebook):
    sleeper = tiny_notebook("import time; time.sleep(60)")
    # the CPU pool runs two jobs at once (hub_config/catalog.yaml)
    running = [alice.submit(sleeper, name=f"hold-{i}") for i in range(2)]
    for job in running:
        alice.wait(job["id"], statuses=("running",))
    low = alice.submit(tiny_notebook(), name="low", priority=0)
    high = alice.submit(tiny_notebook(), name="high", priority=5)
    try:
        time.sleep(1)
        assert alice.job(low["id"])["status"] == "queued"
        assert alice.job(high["id"])["queue_position"] == 1
        assert alice.job(low["id"])["queue_position"] == 2
        alice.api("POST", f"jobs/{running[0]['id']}/cancel")
        assert alice.wait(high["id"])["status"] == "succeeded"
        high_started = alice.job(high["id"])["started_at"]
        alice.api("POST", f"jobs/{running[1]['id']}/cancel")
        low_done = alice.wait(low["id"])
        assert low_done["status"] == "succeeded" and high_started <= low_done["started_at"]
    finally:
        for job in (*running, low, high):
            alice.api("POST", f"jobs/{job['id']}/cancel")


def test_retry_runs_the_same_snapshot_again(alice, tiny_notebook):
    first = alice.wait(alice.submit(tiny_notebook("raise SystemExit(3)"))["id"])
    assert first["status"] == "failed"
    response = alice.api("POST", f"jobs/{first['id']}/retry")
    assert response.status_code == 201
    second = response.json()
    assert second["id"] != first["id"] and second["retry_of"] == first["id"]
    assert alice.wait(second["id"])["status"] == "failed"


def test_listing_is_scoped_filtered_and_paginated(admin, alice, bob, tiny_notebook):
    ids = [alice.submit(tiny_notebook(), name=f"list-{i}")["id"] for i in range(3)]
    bob_job = bob.submit(tiny_notebook())["id"]
    page = alice.api("GET", "jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["jobs"]) == 2
    assert {j["owner"] for j in page["jobs"]} == {alice.name}
    rest = alice.api("GET", "jobs", params={"limit": 2, "offset": 2}).json()
    assert {j["id"] for j in page["jobs"] + rest["jobs"]} == set(ids)
    for job_id in ids:
        alice.wait(job_id)
    assert alice.api("GET", "jobs", params={"status": "succeeded"}).json()["total"] == 3
    assert alice.api("GET", "jobs", params={"status": "queued"}).json()["total"] == 0
    everyone = admin.api("GET", "jobs", params={"limit": 500}).json()
    assert {alice.name, bob.name} <= {j["owner"] for j in everyone["jobs"]}
    assert admin.api("GET", "jobs", params={"owner": bob.name}).json()["jobs"][0]["id"] == bob_job
    bad = alice.api("GET", "jobs", params={"status": "done"})
    assert bad.status_code == 400 and "queued" in bad.json()["message"]


def test_cli_submits_waits_and_shows(platform, alice, template, tmp_path):
    path = tmp_path / "train.ipynb"
    path.write_text(json.dumps(template))
    env = {**os.environ, "FERMI_URL": platform.url, "FERMI_TOKEN": alice.token}
    run = subprocess.run(
        [sys.executable, "-m", "fermi_extension.cli", "jobs", "submit", str(path),
         "-p", "C", "2", "-p", "model_name", "", "--wait"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "succeeded" in run.stdout and "accuracy=" in run.stdout
    assert "registered model" not in run.stdout  # model_name "" skips registration
    job_id = run.stdout.split()[2]
    assert alice.job(job_id)["parameters"] == {"C": 2.0, "model_name": ""}
    listing = subprocess.run([sys.executable, "-m", "fermi_extension.cli", "jobs", "list"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert job_id in listing.stdout
    logs = subprocess.run([sys.executable, "-m", "fermi_extension.cli", "jobs", "logs", job_id],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "accuracy=" in logs.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "fermi_extension.cli", "jobs", "submit", str(path), "-p", "epochs", "3"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1 and "Unknown parameter 'epochs'" in bad.stderr


def test_dev_server_submits_a_notebook_by_path_and_jobs_outlive_it(platform, alice, template, tiny_notebook):
    home = platform.data / "users" / alice.name
    home.mkdir(parents=True, exist_ok=True)
    (home / "slow.ipynb").write_text(json.dumps(tiny_notebook("import time; time.sleep(6)", "z = 3")))
    hub = alice.http
    assert hub.post(f"/hub/api/users/{alice.name}/server").status_code in (201, 202)
    deadline = time.monotonic() + 90
    while not hub.get(f"/hub/api/users/{alice.name}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, platform.log_tail()
        time.sleep(0.5)
    base = f"/user/{alice.name}/fermi/api"
    response = hub.post(f"{base}/jobs", json={"path": "slow.ipynb", "parameters": {"x": 5}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["owner"] == alice.name and job["notebook_name"] == "slow.ipynb"
    for bad, status in (({"path": "../etc/passwd.ipynb"}, 400), ({"path": "/etc/x.ipynb"}, 400),
                        ({"path": "missing.ipynb"}, 404), ({"path": "slow.ipynb", "parameters": {"nope": 1}}, 400)):
        answer = hub.post(f"{base}/jobs", json=bad)
        assert answer.status_code == status, answer.text
        assert answer.json()["message"]
    listed = hub.get(f"{base}/jobs").json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    # stopping the dev server never stops its jobs
    alice.wait(job["id"], statuses=("running",))
    assert hub.delete(f"/hub/api/users/{alice.name}/server").status_code in (202, 204)
    assert alice.wait(job["id"])["status"] == "succeeded"
