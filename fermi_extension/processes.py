"""Process utilities shared by `fermi up`, the hub services and the local backend."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time
from contextlib import closing

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` when our parent dies.

    A hub-managed service would otherwise outlive a hub killed with -9 and hold its port
    when the hub comes back. Best effort: a no-op where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent is already gone
        os.kill(os.getpid(), sig)


def own_session() -> None:
    """Lead a session of our own (a kill of the job's session stops all it started), unless we
    already do, or cannot: a container's first process is a group leader already, and its
    container is what holds everything it starts."""
    if os.getsid(0) == os.getpid():
        return
    try:
        os.setsid()
    except PermissionError:
        pass


def identity(pid: int) -> float | None:
    """The process's start time: with the pid, it names one process across pid reuse."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def kill_tree(pid: int, started: float | None = None, grace: float = 3.0) -> None:
    """Stop ``pid`` and every process below it (a kernel runs in a session of its own, so
    a process-group kill would miss it): SIGTERM, then SIGKILL after ``grace`` seconds."""
    if not is_alive(pid, started):
        return
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def skip_optional_imports() -> None:
    """Leave out jsonschema's optional IRI format checker (``rfc3987_syntax``), which compiles a
    grammar at import: ~1 s and ~16 MB in every Jupyter process that imports jupyter-events or
    nbformat's validator (FACTS.md). jsonschema then skips the IRI formats, which no schema
    Fermi's processes validate against relies on."""
    import sys

    sys.modules.setdefault("rfc3987_syntax", None)
