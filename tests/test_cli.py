"""The `fermi` command as a user types it: a real process against the session's platform.

`--version`; a reader that leaves the pipe early (`fermi jobs show ID | head`) ends the command
quietly; `fermi jobs output` never overwrites a file without being told to; the audit CSV's
before/after columns are JSON that a script can read back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import uuid
from importlib.metadata import version

import pytest

from .platform import FERMI

pytestmark = pytest.mark.hub


def fermi(*args: str, user=None, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if user is not None:
        env.update(FERMI_URL=user.base, FERMI_TOKEN=user.token)
    return subprocess.run([*FERMI, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_version_is_the_installed_distributions():
    done = fermi("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fermi {version('fermi-cluster')}"


@pytest.fixture(scope="module")
def finished_job(platform):
    user = platform.user(f"cli-{uuid.uuid4().hex[:6]}")
    from .platform import make_notebook

    job = user.submit(make_notebook("print('hello from the job')"))
    done = user.wait(job["id"])
    assert done["status"] == "succeeded", done
    return user, done


def test_a_pipe_closed_early_ends_the_command_without_a_traceback(finished_job):
    user, job = finished_job
    env = {**os.environ, "FERMI_URL": user.base, "FERMI_TOKEN": user.token}
    process = subprocess.Popen([*FERMI, "jobs", "show", job["id"], "--json"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # `| head` that has read what it wanted, before anything came
    stderr = process.stderr.read()
    assert process.wait(60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_jobs_output_never_overwrites_without_being_told(finished_job, tmp_path):
    user, job = finished_job
    mine = tmp_path / "output.ipynb"
    mine.write_text("my own notes")

    refused = fermi("jobs", "output", job["id"], user=user, cwd=tmp_path)
    assert refused.returncode == 2
    assert "--force" in refused.stderr and "-o PATH" in refused.stderr, refused.stderr
    assert mine.read_text() == "my own notes"

    elsewhere = fermi("jobs", "output", job["id"], "-o", "executed.ipynb", user=user, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    assert "hello from the job" in json.dumps(executed["cells"])
    assert mine.read_text() == "my own notes"

    forced = fermi("jobs", "output", job["id"], "--force", user=user, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(mine.read_text()) == executed


def test_the_audit_csv_writes_before_and_after_as_json(admin):
    slug = f"cli-{uuid.uuid4().hex[:6]}"
    created = admin.api("POST", "catalog/profiles", json={
        "slug": slug, "name": "CLI test", "cpu": 1, "memory": "1Gi", "price_per_hour": 0.01,
        "allowed_groups": ["nobody-has-this-group"]})
    assert created.status_code == 201, created.text
    try:
        patched = admin.api("PATCH", f"catalog/profiles/{slug}",
                            json={"description": "it's \"quoted\"",
                                  "revision": created.json()["revision"]})
        assert patched.status_code == 200, patched.text
        response = admin.api("GET", "audit", params={"actor": "admin", "format": "csv",
                                                     "limit": 200})
        assert response.status_code == 200, response.text
        rows = [r for r in csv.DictReader(io.StringIO(response.text)) if r["target_id"] == slug]
        update = next(r for r in rows if r["before"] and r["after"])
        before, after = json.loads(update["before"]), json.loads(update["after"])
        assert after["description"] == "it's \"quoted\"" and before.get("description") != \
            after["description"]
    finally:
        admin.api("DELETE", f"catalog/profiles/{slug}")
