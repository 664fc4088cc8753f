"""A small pool of warm job processes, each holding a kernel already started, one per job.

A notebook job's floor is its kernel's start (~0.9 s, FACTS.md). The launcher forks, ahead of
demand, a *slot*: a process in a session of its own that starts a kernel of one kind and
waits. When a job of that kind comes, the slot becomes the job's process (the same pid is the
job's handle, the kernel is its child, so a cancel stops both), hands the job's environment and
working folder to the kernel before any cell runs (``jobs/entry.py``), runs the job and exits.
The kernel is shut down with it: nothing a job did in its kernel reaches another job.

What determines a kernel is its key: the interpreter (image), the kernelspec, the profile and
the environment the image × profile give it. A warm kernel starts with ``workload_env()`` and
that environment only — no job's values, no platform secret. GPU jobs never take a warm kernel:
which devices a process may use is fixed when it (or, with issue 14, its container) is made.
Under per-user accounts a pool's warm dict names its ``account``: the slot switches to it
before its kernel starts (the key includes it), so a kernel serves only jobs of its account.

The key is what the pool of warm *containers* is keyed by too (``container_jobs.py``): there a
slot is a container started from the key's image within the key's profile, serving the same way
(``serve``), its one request a file the platform puts in its folder (``container_slot.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

from ...unix_accounts import become

log = logging.getLogger("fermi.jobs.warm")


def warm_key(image: str, kernel: str, profile: str, env: dict[str, str]) -> str:
    """What makes two kernels interchangeable before a job takes one."""
    digest = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:12]
    return f"{image}|{kernel}|{profile}|{digest}"


@dataclass
class Slot:
    key: str
    pid: int
    requests: int  # the write end of the pipe the slot reads its job from


class WarmPool:
    """The launcher's warm slots, by key, ``size`` per key (refilled as jobs take them)."""

    def __init__(self, start_job):
        self.start_job = start_job  # (request, km) -> exit code: what a slot runs for its job
        self.slots: dict[str, list[Slot]] = {}
        self.ended: set[int] = set()  # reaped pids (SIGCHLD)

    def fds(self) -> list[int]:
        return [s.requests for slots in self.slots.values() for s in slots]

    def fill(self, warm: dict) -> None:
        """Make ``warm["size"]`` slots of ``warm["key"]`` exist (forgetting dead ones)."""
        slots = self.slots.setdefault(warm["key"], [])
        slots[:] = [s for s in slots if s.pid not in self.ended]
        while len(slots) < int(warm.get("size", 1)):
            slots.append(self._fork(warm))

    def take(self, key: str) -> Slot | None:
        slots = self.slots.get(key) or []
        while slots:
            slot = slots.pop(0)
            if slot.pid not in self.ended:
                return slot
            os.close(slot.requests)
        return None

    def hand(self, slot: Slot, request: dict) -> bool:
        """Give the slot its job; False if it died meanwhile (the caller starts one cold)."""
        try:
            os.write(slot.requests, (json.dumps(request) + "\n").encode())
            return True
        except (BrokenPipeError, OSError):
            return False
        finally:
            os.close(slot.requests)

    def close(self, grace: float = 10.0) -> None:
        """Stop every waiting slot: each sees its pipe close, stops its kernel and exits."""
        import psutil

        from ...processes import kill_tree

        waiting = [s for slots in self.slots.values() for s in slots]
        self.slots.clear()
        processes = []
        for slot in waiting:
            os.close(slot.requests)
            try:
                processes.append(psutil.Process(slot.pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=grace)
        for process in alive:
            kill_tree(process.pid, None, 1)

    def _fork(self, warm: dict) -> Slot:
        read, write = os.pipe()
        inherited = self.fds()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(write)
                for fd in inherited:  # other slots must see their own pipe close, not ours
                    os.close(fd)
                code = serve(functools.partial(_read_pipe, read), warm, self.start_job)
            except BaseException:
                log.exception("warm slot failed")
            finally:
                os._exit(code)
        os.close(read)
        return Slot(warm["key"], pid, write)


def _pump(source: int) -> None:
    """Copy the kernel's own stdout/stderr to this process's fd 1: nowhere while the slot
    waits, the job's log once a job has taken it."""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            return
        if not chunk:
            return
        try:
            os.write(1, chunk)
        except OSError:
            pass


def _read_pipe(requests: int) -> dict | None:
    """The launcher's one request to a process slot (None: it closed the pipe: no job comes)."""
    with os.fdopen(requests, "r") as pipe:
        line = pipe.readline()
    return json.loads(line) if line.strip() else None


def serve(next_request, warm: dict, start_job) -> int:
    """Be a slot: start a kernel of ``warm["kernel"]`` with ``warm["env"]``, wait for
    ``next_request()`` (a process slot reads its launcher's pipe, a container slot a file the
    platform puts in its folder), then run ``start_job(request, km)`` on that kernel."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    from ...processes import own_session

    own_session()
    if warm.get("account"):
        become(warm["account"])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # never the launcher's pipes
        os.dup2(devnull, fd)
    os.close(devnull)
    home = tempfile.mkdtemp(prefix="fermi-warm-kernel-")
    env = {**warm["env"], "IPYTHONDIR": os.path.join(home, "ipython")}
    output, kernel_output = os.pipe()
    threading.Thread(target=_pump, args=(output,), daemon=True).start()
    km = AsyncKernelManager(kernel_name=warm["kernel"])
    try:
        run_sync(km.start_kernel)(env=env, cwd=home, stdout=kernel_output, stderr=kernel_output)
        os.close(kernel_output)
        run_sync(_until_ready)(km)
        request = next_request()
        if request is None:  # the platform is gone or stopping: no job will come
            return 0
        if not run_sync(km.is_alive)():
            km = None  # it died waiting: the job starts a kernel of its own
        return start_job(request, km)
    finally:
        if km is not None and km.has_kernel:
            try:
                run_sync(km.shutdown_kernel)(now=True)
            except Exception:
                pass
        shutil.rmtree(home, ignore_errors=True)


async def _until_ready(km) -> None:
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
    finally:
        client.stop_channels()
