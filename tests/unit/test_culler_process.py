"""The idle culler is a hub-managed process: it must end with the hub that started it.

A hub killed with -9 (a crash, or tests/test_restart.py) cannot stop its services; the culler
then lived on, parented to init, one more for every crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from fermi_extension.processes import free_port

# stands in for the hub: starts the culler as its service and waits on it
HUB = """
import subprocess, sys
culler = subprocess.Popen([sys.executable, "-m", "fermi_spawner.culler", "--timeout=3600",
                           "--cull-every=1"])
print(culler.pid, flush=True)
culler.wait()
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_culler_ends_when_the_hub_that_started_it_is_killed(tmp_path):
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": "unused",
           # nothing listens there: the culler keeps trying, as it does while a hub restarts
           "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
           "FERMI_DATA_DIR": str(tmp_path)}
    hub = subprocess.Popen([sys.executable, "-c", HUB], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    culler_pid = int(hub.stdout.readline())
    try:
        # the culler has started its loop once it reports failing to reach the hub
        deadline = time.monotonic() + 60
        for line in hub.stderr:
            if "Connection refused" in line or time.monotonic() > deadline:
                break
        assert not gone(culler_pid), "the culler did not start"
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
        deadline = time.monotonic() + 15
        while not gone(culler_pid):
            assert time.monotonic() < deadline, "the culler outlived the hub that started it"
            time.sleep(0.1)
    finally:
        if not gone(culler_pid):
            os.kill(culler_pid, signal.SIGKILL)
        hub.kill()
        hub.wait()
