"""The security review's attacks, replayed on the real embedded platform (issue 12).

Each test plays a normal user attacking another user or the admin, as the review did, and
asserts what the platform now guarantees. Unit-level replays of the same holes are in
``tests/unit/test_workload_files.py`` and ``tests/unit/test_workload_env.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import uuid

import httpx
import psutil
import pytest

from fermi_extension.workload_env import WORKLOAD_ENV_ALLOWED

from .platform import make_notebook, start_platform

pytestmark = pytest.mark.hub

# a model registered the way users do it, with MLflow's own call (pip requirements named, so
# MLflow does not spend seconds inferring them)
REGISTER = """
import mlflow
from sklearn.linear_model import LogisticRegression
model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
mlflow.sklearn.log_model(model, name="model", registered_model_name=model_name,
                         pip_requirements=["scikit-learn"])
"""


def register(user, name: str) -> dict:
    job = user.submit(make_notebook(REGISTER, parameters=f"model_name = {name!r}"))
    return user.wait(job["id"], timeout=180)


def mlflow_versions(platform, name: str) -> list[dict]:
    """What the MLflow registry underneath holds, asked directly."""
    response = httpx.get(f"{platform.tracking_url}/api/2.0/mlflow/model-versions/search",
                         params={"filter": f"name='{name}'"})
    return response.json().get("model_versions", [])


# -- 1. model names are not taken over ------------------------------------------------------------


def test_a_job_cannot_add_a_version_to_another_users_model(platform, alice, bob):
    name = f"bobs-model-{uuid.uuid4().hex[:6]}"
    first = register(alice, name)  # alice takes the name first, as in the review
    assert first["status"] == "succeeded", first

    second = register(bob, name)
    assert second["status"] == "failed"
    assert f"model name '{name}' belongs to another user; choose another name" in second["reason"]
    assert second["models"] == []
    # nothing of bob's landed anywhere: not in Fermi's view, not in MLflow's registry
    assert [v["run_id"] for v in mlflow_versions(platform, name)] == [first["tracking_run_id"]]
    model = alice.api("GET", f"models/{name}").json()
    assert [v["version"] for v in model["versions"]] == ["1"]
    assert model["owner"] == alice.name
    assert bob.api("GET", f"models/{name}").status_code == 404


def test_a_model_shared_for_writing_takes_versions_from_the_groups_jobs(platform):
    group = f"lab-{uuid.uuid4().hex[:6]}"
    alice = platform.user(f"alice-{uuid.uuid4().hex[:6]}", groups=[group])
    bob = platform.user(f"bob-{uuid.uuid4().hex[:6]}", groups=[group])
    name = f"shared-{uuid.uuid4().hex[:6]}"
    assert register(alice, name)["status"] == "succeeded"
    # seeing is not writing
    shared = alice.api("PATCH", f"models/{name}", json={"groups": [group]})
    assert shared.status_code == 200, shared.text
    assert register(bob, name)["status"] == "failed"
    shared = alice.api("PATCH", f"models/{name}", json={"groups": [group],
                                                        "writer_groups": [group]})
    assert shared.status_code == 200 and shared.json()["writer_groups"] == [group]
    done = register(bob, name)
    assert done["status"] == "succeeded", done
    assert done["models"] == [{"name": name, "version": "2"}]
    assert alice.api("GET", f"models/{name}").json()["owner"] == alice.name


def test_the_registry_underneath_refuses_versions_that_are_not_a_jobs(platform, alice):
    """A notebook (or anything else on the machine) that calls the tracking server itself gets
    the same answer: a version needs a job's run, and the job's owner must own the model."""
    name = f"direct-{uuid.uuid4().hex[:6]}"
    first = register(alice, name)
    assert first["status"] == "succeeded", first
    url = f"{platform.tracking_url}/api/2.0/mlflow/model-versions/create"
    source = mlflow_versions(platform, name)[0]["source"]
    orphan = httpx.post(url, json={"name": name, "source": source})
    assert orphan.status_code == 403
    assert orphan.json()["error_code"] == "PERMISSION_DENIED"
    renamed = httpx.post(f"{platform.tracking_url}/api/2.0/mlflow/registered-models/rename",
                         json={"name": name, "new_name": f"{name}-mine"})
    assert renamed.status_code == 403
    assert len(mlflow_versions(platform, name)) == 1


# -- 2. no file is read through a link a job planted ----------------------------------------------


def test_a_planted_link_in_a_job_folder_is_not_followed(platform, alice, bob):
    secret = "bob's private notebook " + uuid.uuid4().hex
    bobs = bob.wait(bob.submit(make_notebook(f"note = {secret!r}"))["id"])
    mine = alice.wait(alice.submit(make_notebook())["id"])
    assert bobs["status"] == mine["status"] == "succeeded"
    jobs = platform.data / "jobs"
    target = jobs / bobs["id"] / "input.ipynb"
    assert secret in target.read_text()
    # what a job running as the platform's account can do to its own folder
    for name in ("output.ipynb", "job.log"):
        planted = jobs / mine["id"] / name
        planted.unlink()
        planted.symlink_to(target)

    output = alice.api("GET", f"jobs/{mine['id']}/output")
    assert output.status_code == 409 and secret not in output.text
    assert "link" in output.json()["message"]
    logs = alice.api("GET", f"jobs/{mine['id']}/logs")
    assert secret not in logs.text

    # a hard link is refused the same way
    planted = jobs / mine["id"] / "output.ipynb"
    planted.unlink()
    os.link(target, planted)
    output = alice.api("GET", f"jobs/{mine['id']}/output")
    assert output.status_code == 409 and secret not in output.text
    assert bob.api("GET", f"jobs/{bobs['id']}/output").status_code == 200


# -- 4. no platform secret in a job's environment -------------------------------------------------


def control_plane_environment(platform) -> dict[str, str]:
    for process in psutil.process_iter(["cmdline"]):
        if "fermi_extension.control_plane.app" in " ".join(process.info["cmdline"] or ()):
            try:
                env = process.environ()
            except psutil.Error:
                continue
            if env.get("FERMI_DATA_DIR") == str(platform.data):
                return env
    raise AssertionError("the control plane of the test platform was not found")


def test_a_job_gets_none_of_the_platforms_secrets(platform, alice):
    platform_env = control_plane_environment(platform)
    # the review's token: JupyterHub's legacy copy of the service token is there to be leaked
    assert platform_env.get("JPY_API_TOKEN")
    secrets = {k: v for k, v in platform_env.items()
               if re.search(r"TOKEN|SECRET|PASSWORD|KEY", k) and len(v) >= 8}
    assert {"JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN", "FERMI_ADMIN_TOKEN"} <= set(secrets)

    job = alice.submit(make_notebook("import json, os\nprint('ENV=' + json.dumps(dict(os.environ)))"))
    done = alice.wait(job["id"])
    assert done["status"] == "succeeded", done
    text = alice.api("GET", f"jobs/{job['id']}/logs").json()["text"]
    job_env = json.loads(text.split("ENV=", 1)[1].splitlines()[0])
    leaked = [k for k, v in secrets.items() if any(v in value for value in job_env.values())]
    assert leaked == []
    # everything the job has is allowed by name, or is the job's own (its run, its id, its GPUs)
    own = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID",
           "MLFLOW_EXPERIMENT_ID", "FERMI_JOB_ID",
           "FERMI_JOB_USER", "CUDA_VISIBLE_DEVICES", "IPYTHONDIR"}
    kernel = {"JPY_PARENT_PID", "PYDEVD_USE_FRAME_EVAL", "MPLBACKEND", "CLICOLOR",
              "CLICOLOR_FORCE", "FORCE_COLOR", "PAGER", "GIT_PAGER", "TERM", "JPY_SESSION_NAME"}
    threads = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    unexpected = set(job_env) - set(WORKLOAD_ENV_ALLOWED) - own - kernel - threads
    assert unexpected == set()


# -- 5. the audit CSV runs no formula -------------------------------------------------------------


def test_a_user_named_like_a_formula_is_a_plain_cell_in_the_audit_csv(platform, admin):
    name = f"=1+2-{uuid.uuid4().hex[:4]}"
    with httpx.Client(base_url=platform.url, follow_redirects=True) as anonymous:
        form = anonymous.get("/hub/signup")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        password = "a-long-enough-password-" + uuid.uuid4().hex[:6]
        signed_up = anonymous.post("/hub/signup", data={
            "username": name, "signup_password": password,
            "signup_password_confirmation": password, **({"_xsrf": xsrf.group(1)} if xsrf else {})})
        assert signed_up.status_code == 200, signed_up.text
    exported = admin.api("GET", "audit", params={"format": "csv", "target_kind": "user",
                                                 "limit": 1000})
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    cells = [cell for row in rows for cell in row.values() if cell and name in cell]
    assert cells, "the sign-up was not in the audit log"
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows
               for cell in row.values() if cell)
    assert f"'{name}" in cells


# -- 6. a hidden image is not readable by its slug ------------------------------------------------


def test_a_hidden_image_is_unknown_to_users_by_its_slug(platform, admin, alice):
    slug = f"secret-{uuid.uuid4().hex[:6]}"
    created = admin.api("POST", "catalog/images", json={
        "slug": slug, "name": "Internal", "reference": "registry.internal/team/secret",
        "hidden": True, "pull_secret": "team-registry", "versions": [{"tag": "1"}]})
    assert created.status_code == 201, created.text
    assert admin.api("GET", f"catalog/images/{slug}").status_code == 200
    hidden = alice.api("GET", f"catalog/images/{slug}")
    missing = alice.api("GET", f"catalog/images/{slug}-nothing")
    assert hidden.status_code == missing.status_code == 404
    assert "registry.internal" not in hidden.text and "team-registry" not in hidden.text
    assert hidden.json()["message"] == missing.json()["message"].replace(f"{slug}-nothing", slug)
    assert slug not in alice.api("GET", "catalog/images").text


# -- 8. the data dir is private -------------------------------------------------------------------


def test_the_data_dir_and_its_files_are_readable_by_this_account_only(tmp_path):
    """On a platform of its own: the session's platform holds files the tests themselves write
    (notebooks put in users' homes, links planted above), which are not the platform's."""
    own = start_platform(tmp_path / "data")
    try:
        alice = own.user("alice")
        assert alice.wait(alice.submit(make_notebook())["id"])["status"] == "succeeded"
        assert stat.S_IMODE(own.data.stat().st_mode) == 0o700
        for name in ("jupyterhub.sqlite", "fermi.sqlite", "logs/hub.log", "platform.json"):
            assert (own.data / name).exists(), name
        readable = []
        for folder, dirs, files in os.walk(own.data):
            for entry in [*dirs, *files]:
                path = os.path.join(folder, entry)
                info = os.lstat(path)
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                    readable.append(f"{oct(stat.S_IMODE(info.st_mode))} {path}")
        assert readable == []
    finally:
        own.stop()
