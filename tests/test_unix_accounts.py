"""Per-user Unix accounts (issue 14, point 6): run as root with no container engine, each user's
dev servers and jobs run under an account of their own, and a notebook cannot reach what is
not its user's.

The platform here is started as the suite's are (``FERMI_CONTAINER_ENGINE=none``), so it
chooses accounts by itself. Bob runs a dev server (its process is his account's) and a job that
leaves a secret in his home; then Alice's job tries each way out and writes what it got in its
work folder, which the test (root) reads: the environments of platform processes in
``/proc/PID/environ``, the data dir and its files, Bob's home and job folder, signals to the
platform's processes. A second job of Alice's takes a warm kernel, which must be hers.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from fermi_extension import unix_accounts
from fermi_extension.backends.local.jobs import LocalJobBackend
from fermi_extension.containers.engine import Isolation
from fermi_extension.spec import RuntimeSpec
from fermi_extension.unix_accounts import account_name

from .platform import Platform, User, make_notebook, start_platform

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts need root")

ADMIN_TOKEN = "accounts-admin-token"


def test_any_hub_name_maps_to_a_distinct_valid_unix_name():
    names = ["alice", "Alice", "a.b@c", "x" * 40, "x" * 41, "名前", "-lead", "bob_1"]
    accounts = [account_name(n) for n in names]
    assert accounts[0] == "fermi-alice" and accounts[-1] == "fermi-bob_1"
    assert len(set(accounts)) == len(names)
    for account in accounts:
        assert len(account) <= 32
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in account), account
        assert account == account.lower() and account.startswith("fermi-")


def test_search_permission_lets_the_group_enter_but_not_list():
    with tempfile.TemporaryDirectory() as top:  # in /tmp, which every account may enter
        folder = Path(top) / "private"
        (folder / "inner").mkdir(parents=True)
        folder.chmod(0o700)
        (folder / "inner" / "file").write_text("ok")
        Path(top).chmod(0o711)
        gid = unix_accounts.ensure_group()
        assert unix_accounts.grant_search(folder, gid)
        assert not unix_accounts.grant_search(folder, gid)  # once is enough
        assert folder.stat().st_mode & 0o7777 == 0o710  # the mask shows in the group bits
        nobody = pwd.getpwnam("nobody")

        def as_nobody(groups):
            def switch():
                os.setgroups(groups)
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            return switch

        def run(command, groups):
            return subprocess.run(command, preexec_fn=as_nobody(groups), capture_output=True,
                                  text=True).stdout.strip()

        assert run(["cat", str(folder / "inner" / "file")], [gid]) == "ok"
        assert run(["ls", str(folder)], [gid]) == ""  # enters, lists nothing
        assert run(["cat", str(folder / "inner" / "file")], []) == ""  # only that group


def test_warm_kernels_are_per_account_and_none_is_made_for_no_one():
    backend = LocalJobBackend(unix_accounts=True, warm_kernels=1)
    runtime = RuntimeSpec(image="python-local", image_reference="python-local", image_local=True,
                          kernel="python3", profile="cpu-small", pool="default", cpu=1,
                          memory="2Gi")
    assert backend._warm(runtime) is None  # a prewarm knows no owner: no kernel as root
    root, nobody = pwd.getpwnam("root"), pwd.getpwnam("nobody")
    mine, theirs = backend._warm(runtime, root), backend._warm(runtime, nobody)
    assert (mine["account"], theirs["account"]) == ("root", "nobody")
    assert mine["key"] != theirs["key"] and theirs["env"]["HOME"] == nobody.pw_dir


@pytest.fixture(scope="module")
def accounts_platform() -> Platform:
    # not in pytest's basetemp: every pytest session on this machine chmods its root to 0700,
    # which clears the ACL mask that lets the accounts enter (tests/platform.py says more)
    data = Path(tempfile.mkdtemp(prefix="fermi-accounts-"))
    running = start_platform(data, admin_token=ADMIN_TOKEN,
                             env={unix_accounts.OPT_OUT_ENV: "on"})  # the production default
    made: list[str] = []
    running.made_accounts = made
    try:
        yield running
    finally:
        running.stop()
        for name in made:  # system accounts are few (uids below 1000): give them back
            subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def users(platform: Platform) -> tuple[User, User]:
    alice, bob = (platform.user(f"{n}-{uuid.uuid4().hex[:6]}") for n in ("alice", "bob"))
    platform.made_accounts.extend(account_name(u.name) for u in (alice, bob))
    return alice, bob


def platform_processes(platform: Platform) -> list[psutil.Process]:
    """``fermi up`` and every process it started that runs as root."""
    top = psutil.Process(platform.process.pid)
    return [p for p in [top, *top.children(recursive=True)] if p.uids().real == 0]


ATTACK = """
import json, os, pwd, signal
got = {"user": pwd.getpwuid(os.getuid()).pw_name, "home": os.environ["HOME"]}

def attempt(name, action):
    try:
        got[name] = "allowed: " + repr(action())[:120]
    except OSError as error:
        got[name] = "refused: " + type(error).__name__

for pid in PIDS:
    attempt(f"environ {pid}", lambda: open(f"/proc/{pid}/environ", "rb").read(40))
    attempt(f"signal {pid}", lambda: os.kill(pid, signal.SIGCONT))
# any process at all whose environment holds the admin token, readable from here
leaks = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            if TOKEN.encode() in open(f"/proc/{entry}/environ", "rb").read():
                leaks.append(int(entry))
        except OSError:
            pass
got["token readable in"] = leaks
attempt("list data dir", lambda: os.listdir(DATA))
attempt("read platform.json", lambda: open(os.path.join(DATA, "platform.json")).read())
attempt("read hub database", lambda: open(os.path.join(DATA, "jupyterhub.sqlite"), "rb").read(16))
attempt("list users", lambda: os.listdir(os.path.join(DATA, "users")))
attempt("list jobs", lambda: os.listdir(os.path.join(DATA, "jobs")))
attempt("list other home", lambda: os.listdir(OTHER_HOME))
attempt("read other secret", lambda: open(os.path.join(OTHER_HOME, "secret.txt")).read())
attempt("list other job", lambda: os.listdir(OTHER_JOB))
attempt("read other notebook", lambda: open(os.path.join(OTHER_JOB, "input.ipynb")).read())
attempt("write own home", lambda: open(os.path.expanduser("~/mine.txt"), "w").write("x"))
with open("attacks.json", "w") as out:
    json.dump(got, out)
"""


def job_files(platform: Platform, job_id: str):
    return platform.data / "jobs" / job_id


def test_a_users_notebook_reaches_nothing_that_is_not_theirs(accounts_platform):
    platform = accounts_platform
    alice, bob = users(platform)

    # Bob: a dev server under his account, and a job that leaves a secret in his home
    response = bob.http.post(f"/hub/api/users/{bob.name}/server", json={"profile": "cpu-small"})
    assert response.status_code in (201, 202), response.text
    deadline = time.monotonic() + 90
    while True:
        server = platform.admin.http.get(f"/hub/api/users/{bob.name}").json()["servers"].get("")
        if server and server["ready"]:
            break
        assert time.monotonic() < deadline, platform.log_tail()
        time.sleep(0.3)
    bob_account = pwd.getpwnam(account_name(bob.name))
    assert psutil.Process(server["state"]["pid"]).uids().real == bob_account.pw_uid
    home = platform.data / "users" / bob.name
    assert bob_account.pw_dir == str(home)
    info = home.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (bob_account.pw_uid, 0o700)

    secret = make_notebook("import os\nopen(os.path.expanduser('~/secret.txt'), 'w')"
                           ".write('bob only')\nprint(os.getuid())")
    bob_job = bob.wait(bob.submit(secret)["id"])
    assert bob_job["status"] == "succeeded", bob_job
    assert (home / "secret.txt").stat().st_uid == bob_account.pw_uid

    # Alice tries every way out; the platform's processes are root's
    pids = [p.pid for p in platform_processes(platform)]
    assert len(pids) >= 5, pids  # fermi up, hub, proxy, control plane, tracking, launcher, …
    source = (f"PIDS = {pids!r}\nTOKEN = {ADMIN_TOKEN!r}\nDATA = {str(platform.data)!r}\n"
              f"OTHER_HOME = {str(home)!r}\n"
              f"OTHER_JOB = {str(job_files(platform, bob_job['id']))!r}\n" + ATTACK)
    job = alice.wait(alice.submit(make_notebook(source))["id"])
    assert job["status"] == "succeeded", job
    folder = job_files(platform, job["id"])
    got = json.loads((folder / "work" / "attacks.json").read_text())
    alice_account = pwd.getpwnam(account_name(alice.name))
    assert got.pop("user") == alice_account.pw_name
    assert got.pop("home") == str(platform.data / "users" / alice.name)
    assert got.pop("token readable in") == []
    assert got.pop("write own home").startswith("allowed")
    refused = {name: outcome for name, outcome in got.items() if outcome.startswith("refused")}
    assert refused == got, {k: v for k, v in got.items() if k not in refused}
    assert len(refused) == 2 * len(pids) + 9
    assert folder.stat().st_uid == alice_account.pw_uid

    # her next job takes a warm kernel made for her account (and the pool holds no root kernel)
    again = alice.wait(alice.submit(make_notebook(
        "import os, pwd\nprint(pwd.getpwuid(os.getuid()).pw_name)"))["id"])
    assert again["status"] == "succeeded", again
    log = (job_files(platform, again["id"]) / "output.ipynb").read_text()
    assert alice_account.pw_name in log
    kernels = [p for p in psutil.Process(platform.process.pid).children(recursive=True)
               if "ipykernel" in " ".join(p.cmdline())]
    assert kernels and all(p.uids().real != 0 for p in kernels), [
        (p.pid, p.uids().real) for p in kernels]


def test_fermi_up_and_the_admin_overview_say_how_workloads_run(accounts_platform):
    dashboard = accounts_platform.admin.api("GET", "dashboard")
    assert dashboard.status_code == 200, dashboard.text
    assert dashboard.json()["admin_view"]["isolation"]["mode"] == "accounts"
    said = Isolation("accounts", reason="FERMI_CONTAINER_ENGINE=none").describe()
    assert said.startswith(
        "processes under per-user Unix accounts: other users' files and the platform's secrets "
        "are out of reach; profile limits are not enforced (no containers)")
    assert Isolation("processes", reason="x").describe().startswith(
        "processes on the host — NOT isolated, for a trusted single user only")
