"""The attack suite: a notebook run as a job by one user, in container mode, tries each way out
that FACTS.md found open on the embedded default before containers ("Security facts"), and
every one must fail.

One job runs all attempts (a container start is seconds; the answers land in ``attempts.json``
in its folder) and each test asserts one of them, so a regression names the way out it opened.
The notebook is given what an attacker on the machine would know: the platform's ports and
process ids, its data dir, the other user's folders and run.
"""

from __future__ import annotations

import json
import os

import psutil
import pytest

from ..platform import make_notebook
from ..test_restart import platform_processes

pytestmark = pytest.mark.hub

ATTACK = r'''
import json, os, signal, socket, urllib.request, urllib.error
targets = json.loads(TARGETS)
found = {}

def attempt(name, action):
    try:
        found[name] = {"ok": True, "got": action()}
    except Exception as error:
        found[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}

def secrets_in_environ():
    seen = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        for secret in targets["secrets"]:
            if secret in environ:
                seen[pid] = secret[:6]
    return seen
attempt("environ", secrets_in_environ)
attempt("processes", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
attempt("data_dir", lambda: os.listdir(targets["data"]))
attempt("platform_db", lambda: len(open(targets["data"] + "/fermi.sqlite", "rb").read()))
attempt("other_home", lambda: os.listdir(targets["other_home"]))
attempt("other_job", lambda: os.listdir(targets["other_job"]))
attempt("engine_socket", lambda: [p for p in ("/run/podman/podman.sock", "/var/run/docker.sock",
                                              targets["engine_socket"]) if os.path.exists(p)] or
        (_ for _ in ()).throw(FileNotFoundError("no engine socket")))

def signal_platform():
    hit = []
    for pid in targets["platform_pids"]:
        try:
            os.kill(pid, 0)
            hit.append(pid)
        except ProcessLookupError:
            pass
    if not hit:
        raise ProcessLookupError("no platform process is visible")
    return hit
attempt("signal", signal_platform)

host = "host.containers.internal"
def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()[:200].decode(errors="replace")
def hub_api_with_held_tokens():
    answers = {}
    held = {k: v for k, v in os.environ.items() if "TOKEN" in k or "KEY" in k}
    for name, token in held.items():
        for address in (targets["workload_ip"], host, "127.0.0.1"):
            try:
                answers[f"{name}@{address}"] = get(f"http://{address}:{targets['hub_port']}/hub/api/users", token)[0]
            except urllib.error.HTTPError as error:
                answers[f"{name}@{address}"] = error.code
            except OSError as error:
                answers[f"{name}@{address}"] = type(error).__name__
    return answers
attempt("hub_api", hub_api_with_held_tokens)
attempt("proxy_api", lambda: get(f"http://{targets['workload_ip']}:{targets['proxy_api_port']}/api/routes"))
attempt("tracking_direct", lambda: get(f"http://{targets['workload_ip']}:{targets['tracking_port']}/api/2.0/mlflow/experiments/search?max_results=10"))
attempt("tracking_direct_loopback", lambda: get(f"http://127.0.0.1:{targets['tracking_port']}/health"))

def other_run_through_the_platform():
    uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/runs/get?run_id={targets['other_run']}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status
attempt("other_run", other_run_through_the_platform)
json.dump(found, open("attempts.json", "w"), indent=1)
'''


@pytest.fixture(scope="module")
def attempts(container_platform):
    platform = container_platform
    alice, bob = platform.user("mallory"), platform.user("bob-victim")
    # the victim's job: a folder, a run; the victim's home
    victim = bob.submit(make_notebook("print('victim')"))
    victim = bob.wait(victim["id"], timeout=180)
    assert victim["status"] == "succeeded", victim
    (platform.data / "users" / bob.name).mkdir(parents=True, exist_ok=True)
    (platform.data / "users" / bob.name / "secret.txt").write_text("bob's")
    processes = platform_processes(platform)
    environ = {}
    for process in processes.values():
        try:
            environ.update(process.environ())
        except psutil.Error:
            pass
    secrets = [v for k, v in environ.items() if k in (
        "FERMI_ADMIN_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "JUPYTERHUB_API_TOKEN", "FERMI_PROXY_TOKEN")
        and len(v) >= 8]
    assert secrets, "the platform's processes hold no secret to look for: the test is void"
    workload_ip = environ.get("FERMI_WORKLOAD_IP")
    assert workload_ip, "container mode hands FERMI_WORKLOAD_IP to the platform"
    ports = platform.ports
    targets = {
        "secrets": secrets, "data": str(platform.data),
        "other_home": str(platform.data / "users" / bob.name),
        "other_job": str(platform.data / "jobs" / victim["id"]),
        "engine_socket": os.environ.get("FERMI_TEST_ENGINE_SOCKET", "/nonexistent"),
        "platform_pids": [p.pid for p in processes.values()],
        "workload_ip": workload_ip, "hub_port": ports["hub"], "proxy_api_port": ports["proxy_api"],
        "tracking_port": ports["tracking"], "other_run": victim.get("tracking_run_id") or "",
    }
    body = f"TARGETS = {json.dumps(json.dumps(targets))}\n" + ATTACK
    job = alice.submit(make_notebook(body))
    done = alice.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    found = json.loads((platform.data / "jobs" / job["id"] / "work" / "attempts.json").read_text())
    print(json.dumps(found, indent=1))  # each attempt's answer, for the closing note
    found["_victim_run"] = victim.get("tracking_run_id")
    return found


def test_no_platform_secret_in_any_process_the_job_can_see(attempts):
    assert attempts["environ"] == {"ok": True, "got": {}}
    assert attempts["processes"]["ok"] and len(attempts["processes"]["got"]) < 20  # its own only


def test_the_data_dir_and_the_platform_database_are_not_there(attempts):
    assert not attempts["data_dir"]["ok"], attempts["data_dir"]
    assert not attempts["platform_db"]["ok"], attempts["platform_db"]


def test_another_users_home_and_job_folder_are_not_there(attempts):
    assert not attempts["other_home"]["ok"], attempts["other_home"]
    assert not attempts["other_job"]["ok"], attempts["other_job"]


def test_the_engine_socket_is_not_there(attempts):
    assert not attempts["engine_socket"]["ok"], attempts["engine_socket"]


def test_platform_processes_cannot_be_signalled(attempts):
    assert not attempts["signal"]["ok"], attempts["signal"]


def test_the_tokens_a_job_holds_open_no_hub_api(attempts):
    answers = attempts["hub_api"]["got"]
    assert answers, "the job holds a token (its tracking token) to try"
    assert all(code in (401, 403) or isinstance(code, str) for code in answers.values()), answers


def test_the_proxy_api_and_the_tracking_servers_own_port_are_unreachable(attempts):
    for name in ("proxy_api", "tracking_direct", "tracking_direct_loopback"):
        assert not attempts[name]["ok"], (name, attempts[name])


def test_another_users_run_is_refused_through_the_platform(attempts):
    assert attempts["_victim_run"], "the victim's job has an MLflow run"
    assert not attempts["other_run"]["ok"], attempts["other_run"]
    assert "403" in attempts["other_run"]["error"] or "404" in attempts["other_run"]["error"]
