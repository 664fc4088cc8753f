"""A dataset registered through the API is where the docs say, inside a real job; where it may
be is the admin's (the session platform allows the tests' temporary folders and claim "claim")."""

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
    # only the claims the admin lists for datasets (here "claim"), on registration as well
    for path, body in (("datasets", {"name": f"home-{alice.name}"}),
                       (f"datasets/{name}/versions", {})):
        other = alice.api("POST", path, json={**body, "location": "pvc://claim-bob/home"})
        assert other.status_code == 422 and "FermiService.dataset_claims" in other.json()["message"]
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


def test_registering_tells_nothing_about_paths_outside_the_dataset_folders(platform, alice,
                                                                          tmp_path):
    """Security review, hole B: registering answered 422 "Nothing at …" or 201, so any user
    could learn what exists on the machine (``/``, the data dir, the cookie secret)."""
    secret = platform.data / "jupyterhub_cookie_secret"
    assert secret.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "link").symlink_to(platform.data)  # inside an allowed folder, pointing out
    name = f"probe-{alice.name}"
    existing = ["/", "/etc", str(platform.data), str(secret), str(platform.data / "fermi.sqlite"),
                str(tmp_path / "link")]
    missing = ["/no-such-folder-for-fermi", str(platform.data / "no-such-file"),
               str(tmp_path / "link" / "no-such-file")]
    answers = [alice.api("POST", "datasets", json={"name": name, "location": location})
               for location in existing + missing]
    assert {a.status_code for a in answers} == {422}
    assert len({a.content for a in answers}) == 1, [a.text for a in answers]  # byte-identical
    message = answers[0].json()["message"]
    assert "FermiService.dataset_roots" in message and str(platform.data) not in message
    assert alice.api("GET", f"datasets/{name}").status_code == 404

    # adding a version answers the same; inside an allowed folder a missing path says so
    made = alice.api("POST", "datasets", json={"name": name, "location": str(tmp_path / "mine")})
    assert made.status_code == 201, made.text
    for location in (str(secret), "/no-such-folder-for-fermi"):
        version = alice.api("POST", f"datasets/{name}/versions", json={"location": location})
        assert (version.status_code, version.content) == (422, answers[0].content)
    inside = alice.api("POST", f"datasets/{name}/versions",
                       json={"location": str(tmp_path / "missing")})
    assert inside.status_code == 422 and "Nothing at" in inside.json()["message"]
    assert [v["version"] for v in alice.api("GET", f"datasets/{name}").json()["versions"]] == ["1"]


def test_a_dataset_whose_link_now_points_outside_is_not_attached(platform, alice, tmp_path,
                                                                 tiny_notebook):
    """Attaching checks again: a link inside an allowed folder, registered while it pointed at
    data, then pointed at the platform's data dir, reaches neither a job nor a dev server."""
    (tmp_path / "real").mkdir()
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "real")
    name = f"moved-{alice.name}"
    made = alice.api("POST", "datasets", json={"name": name, "location": str(link)})
    assert made.status_code == 201, made.text
    link.unlink()
    link.symlink_to(platform.data)
    job = alice.api("POST", "jobs", json={"notebook": tiny_notebook(), "datasets": [name]})
    assert job.status_code == 422 and "cannot be attached" in job.json()["message"], job.text
    server = alice.http.post(f"/hub/api/users/{alice.name}/server",
                             json={"profile": "cpu-small", "datasets": name})
    assert server.status_code == 422, server.text
    assert "cannot be attached" in server.json()["message"]
    assert not alice.http.get(f"/hub/api/users/{alice.name}").json()["servers"]
