"""What the notebook panels stand on: the dev server's /fermi/api/ routes the lab extension calls,
and the ipywidgets panels driving a real job from a real kernel."""

from __future__ import annotations

import json
import time

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.hub


def start_server(platform, user) -> str:
    hub = user.http
    assert hub.post(f"/hub/api/users/{user.name}/server").status_code in (201, 202)
    deadline = time.monotonic() + 90
    while not hub.get(f"/hub/api/users/{user.name}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, platform.log_tail()
        time.sleep(0.5)
    return f"/user/{user.name}/fermi/api"


def home(platform, user):
    path = platform.data / "users" / user.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_dev_server_routes_for_the_lab(platform, alice, bob, tiny_notebook):
    folder = home(platform, alice) / "work"
    folder.mkdir(exist_ok=True)
    notebook = tiny_notebook("y = lr * 2", parameters="lr: float = 0.5\nepochs = 3\nname = 'a'")
    (folder / "train.ipynb").write_text(json.dumps(notebook))
    base = start_server(platform, alice)
    hub = alice.http

    # the submit form's typed parameters come from the parameters cell
    found = hub.post(f"{base}/notebook/parameters", json={"path": "work/train.ipynb"})
    assert found.status_code == 200, found.text
    assert [(p["name"], p["type"], p["default"]) for p in found.json()["parameters"]] == [
        ("lr", "float", 0.5), ("epochs", "int", 3), ("name", "str", "a")]
    for bad, status in (({"path": "work/missing.ipynb"}, 404), ({"path": "../x.ipynb"}, 400),
                        ({}, 400)):
        answer = hub.post(f"{base}/notebook/parameters", json=bad)
        assert answer.status_code == status and answer.json()["message"], answer.text

    # what the misuse guard and the cost line read
    environment = hub.get(f"{base}/environment").json()
    assert environment["user"] == alice.name and environment["profile"] == "cpu-small"
    assert environment["gpus"] == 0 and environment["price_per_hour"] is not None

    # a schedule by path: checked like a submission, listed, deleted
    refused = hub.post(f"{base}/schedules", json={"path": "work/train.ipynb", "cron": "daily"})
    assert refused.status_code == 400 and "cron" in refused.json()["message"]
    made = hub.post(f"{base}/schedules", json={"path": "work/train.ipynb", "cron": "0 3 * * *",
                                               "parameters": {"epochs": 5}})
    assert made.status_code == 201, made.text
    assert made.json()["parameters"]["epochs"] == 5
    assert [s["id"] for s in hub.get(f"{base}/schedules").json()["schedules"]] == [made.json()["id"]]
    assert bob.api("GET", f"schedules/{made.json()['id']}").status_code == 404
    assert alice.api("DELETE", f"schedules/{made.json()['id']}").status_code == 204

    # "open output notebook": the executed notebook lands in the user's files
    job = hub.post(f"{base}/jobs", json={"path": "work/train.ipynb", "parameters": {"lr": 2.0}}).json()
    assert alice.wait(job["id"])["status"] == "succeeded"
    opened = hub.post(f"{base}/jobs/{job['id']}/output/open")
    assert opened.status_code == 200, opened.text
    saved = json.loads((home(platform, alice) / opened.json()["path"]).read_text())
    assert any("lr = 2.0" in "".join(c["source"]) for c in saved["cells"])
    # another user's job stays out of reach, through the dev server too
    assert bob.api("GET", f"jobs/{job['id']}/output").status_code == 404
    assert hub.post(f"{base}/jobs/nope/output/open").status_code == 404

    # every route wants the user: no token, no answer
    import httpx

    anonymous = httpx.get(f"{platform.url}{base}/environment", follow_redirects=False)
    assert anonymous.status_code in (302, 403)
    server_log = (platform.data / "logs").glob("*.log")
    assert not any("JupyterServerAuthWarning" in p.read_text(errors="replace") for p in server_log)
    hub.delete(f"/hub/api/users/{alice.name}/server")


KERNEL_CODE = """
from fermi_extension.widgets import SubmitPanel, JobWatcher, DeployPanel
panel = SubmitPanel({path!r})
panel.parameters["x"].value = 7
panel.profile.value = "cpu-small"
panel.submit_button.click()
assert panel.job_id, panel.message.value
job = panel.watcher.wait(180)
done = panel.watcher.progress
print("RESULT", job["status"], job["parameters"]["x"], done.value == done.max > 1)
bad = SubmitPanel({path!r})
bad.profile.value = "gpu-a100-1"
bad.submit_button.click()
print("REFUSED", bad.job_id, bad.message.value)
deploy = DeployPanel("no-such-model", 1)
print("DEPLOY", deploy.deploy(), deploy.message.value)
"""


def run_in_kernel(code: str, env: dict, cwd: str, timeout: float = 240) -> str:
    manager, client = start_new_kernel(kernel_name="python3", env=env, cwd=cwd)
    try:
        out = []

        def keep(message):
            if message["msg_type"] == "stream":
                out.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                out.append("\n".join(message["content"]["traceback"]))

        client.execute_interactive(code, output_hook=keep, timeout=timeout)
        return "".join(out)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_widgets_drive_a_real_job_from_a_kernel(platform, alice, tiny_notebook, tmp_path):
    import os

    (tmp_path / "nb.ipynb").write_text(json.dumps(tiny_notebook("y = x * 2")))
    env = {**os.environ, "FERMI_API_URL": f"{platform.url}/services/fermi/api",
           "JUPYTERHUB_API_TOKEN": alice.token, "FERMI_LANGUAGE": "en"}
    env.pop("FERMI_TOKEN", None)
    env.pop("FERMI_URL", None)
    output = run_in_kernel(KERNEL_CODE.format(path=str(tmp_path / "nb.ipynb")), env, str(tmp_path))
    assert "RESULT succeeded 7 True" in output, output
    # the server's own sentence, shown in the panel; no job was made
    refused = next(line for line in output.splitlines() if line.startswith("REFUSED"))
    assert refused.startswith("REFUSED None") and "GPU" in refused, output
    deploy = next(line for line in output.splitlines() if line.startswith("DEPLOY"))
    assert deploy.startswith("DEPLOY None") and "no-such-model" in deploy, output


def test_the_usage_guide_the_cards_link_to_speaks_both_languages(alice):
    english = alice.http.get("/services/fermi/guide", headers={"Accept-Language": "en"})
    chinese = alice.http.get("/services/fermi/guide", headers={"Accept-Language": "zh-CN,zh"})
    assert english.status_code == chinese.status_code == 200
    assert "<h1" in english.text and "training job" in english.text.lower()
    assert "训练任务" not in english.text  # one language at a time
    assert "训练任务" in chinese.text and 'lang="zh-CN"' in chinese.text


def test_new_from_template_copies_into_the_users_files_without_overwriting(platform, alice):
    base = start_server(platform, alice)
    hub = alice.http
    listed = hub.get(f"{base}/templates").json()["templates"]
    names = [t["name"] for t in listed]
    assert "tabular-classifier" in names and all(t.get("title") for t in listed)
    first = hub.post(f"{base}/templates", json={"name": "tabular-classifier", "folder": "new"})
    second = hub.post(f"{base}/templates", json={"name": "tabular-classifier", "folder": "new"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["path"], second.json()["path"]) == (
        "new/tabular-classifier.ipynb", "new/tabular-classifier-1.ipynb")
    assert (home(platform, alice) / "new" / "tabular-classifier-1.ipynb").exists()
    for bad, status in (({"name": "nope"}, 404), ({"name": "tabular-classifier", "folder": "../x"}, 400)):
        answer = hub.post(f"{base}/templates", json=bad)
        assert answer.status_code == status and answer.json()["message"], answer.text
    hub.delete(f"/hub/api/users/{alice.name}/server")
