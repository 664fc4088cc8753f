"""A warm launcher for job processes: papermill is imported once, each job is a fork.

``import papermill`` costs about 2 s (FACTS.md) — twice the kernel start that is the floor of a
notebook job. The control plane starts this process once; it reads one JSON request per line on
stdin and answers each with one line:

- ``{"op": "run", "job_dir": …, "spec": …, "env": …, "warm": WARM|null}`` starts a job: in a
  warm slot of ``WARM["key"]`` if one waits (``kernels.py``), else in a fresh fork; answers the
  job process's pid. A ``WARM`` pool is refilled after the job has started.
- ``{"op": "warm", "warm": {"key", "kernel", "env", "size"}}`` fills that pool ahead of demand.

It exits when stdin closes (the control plane is gone), stopping the slots that wait; the jobs
it started live on in their own sessions.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from .kernels import WarmPool


def main() -> None:
    from ...processes import skip_optional_imports

    skip_optional_imports()
    from ...jobs import entry
    from . import job_process  # the expensive imports, paid once

    entry.preload()

    pool = WarmPool(job_process.run)

    def reap(_signum, _frame) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            pool.ended.add(pid)

    def fork_job(request: dict) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in pool.fds():
                    os.close(fd)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = job_process.run(request)
            finally:
                os._exit(code)
        return pid

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the platform to handle
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            warm = request.get("warm")
            if request.get("op") == "warm":
                pool.fill(warm)
                out.write(json.dumps({"warm": warm["key"]}) + "\n")
                out.flush()
                continue
            slot = pool.take(warm["key"]) if warm else None
            if slot is not None and pool.hand(slot, request):
                pid, warmed = slot.pid, True
            else:
                pid, warmed = fork_job(request), False
            out.write(json.dumps({"job_id": request["job_id"], "pid": pid, "warm": warmed}) + "\n")
            out.flush()
            if warm:
                pool.fill(warm)
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pool.close()


if __name__ == "__main__":
    main()
