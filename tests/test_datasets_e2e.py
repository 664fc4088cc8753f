"""A dataset registered through the API is where the docs say, inside a real job."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.hub


def test_a_job_reads_an_attached_dataset_and_access_follows_ownership(platform, alice, bob, tiny_notebook, tmp_path):
    data = tmp_path / "wine-v1"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    name = f"wine-{alice.name}"
    made = alice.api("POST", "datasets", json={"name": name, "location": str(data),
                                               "description": "two rows"})
    assert made.status_code == 201, made.text
    env = made.json()["env"]

    reader = tiny_notebook(
        "import os, csv\n"
        f"rows = list(csv.DictReader(open('datasets/{name}/rows.csv')))\n"
        f"assert len(rows) == 2 and os.environ[{env!r}].endswith('datasets/{name}')\n"
        "print('ROWS', len(rows))")
    job = alice.submit(reader, datasets=[name])
    finished = alice.wait(job["id"])
    assert finished["status"] == "succeeded", finished
    assert "ROWS 2" in alice.api("GET", f"jobs/{job['id']}/logs").json()["text"]

    # bob cannot attach or read it; bad references say what to fix; nothing is queued
    refused = bob.api("POST", "jobs", json={"notebook": reader, "datasets": [name]})
    assert refused.status_code == 404 and name in refused.json()["message"]
    assert bob.api("GET", f"datasets/{name}").status_code == 404
    assert bob.api("POST", f"datasets/{name}/versions", json={"location": str(data)}).status_code == 404
    bad = alice.api("POST", "jobs", json={"notebook": reader, "datasets": [f"{name}:7"]})
    assert bad.status_code == 404 and "no version '7'" in bad.json()["message"]
    volume = alice.api("POST", f"datasets/{name}/versions", json={"location": "pvc://claim/wine"})
    assert volume.status_code == 201
    local = alice.api("POST", "jobs", json={"notebook": reader, "datasets": [name]})
    assert local.status_code == 422 and "Kubernetes volume" in local.json()["message"]
    assert bob.api("GET", "jobs").json()["total"] == 0


def test_a_dev_environment_gets_its_datasets_at_the_same_path(platform, alice, bob, tmp_path):
    import time

    data = tmp_path / "images"
    data.mkdir()
    name = f"img-{alice.name}"
    assert alice.api("POST", "datasets", json={"name": name, "location": str(data)}).status_code == 201
    refused = bob.http.post(f"/hub/api/users/{bob.name}/server",
                            json={"profile": "cpu-small", "datasets": name})
    assert refused.status_code == 404 and name in refused.json()["message"], refused.text
    started = alice.http.post(f"/hub/api/users/{alice.name}/server",
                              json={"profile": "cpu-small", "datasets": name})
    assert started.status_code in (201, 202), started.text
    deadline = time.monotonic() + 90
    while not (server := alice.http.get(f"/hub/api/users/{alice.name}").json()["servers"].get("", {})).get("ready"):
        assert time.monotonic() < deadline, platform.log_tail()
        time.sleep(0.5)
    assert server["user_options"]["datasets"] == name
    link = platform.data / "users" / alice.name / "datasets" / name
    assert link.is_symlink() and link.resolve() == data.resolve()
    alice.http.delete(f"/hub/api/users/{alice.name}/server")
