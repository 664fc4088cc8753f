"""A warm launcher for job processes: papermill is imported once, each job is a fork.

``import papermill`` costs about 2 s (FACTS.md) — twice the kernel start that is the floor of a
notebook job. The control plane starts this process once; it reads one JSON request per line on
stdin, forks a child that runs the job, and answers with the child's pid. It exits when stdin
closes (the control plane is gone); the jobs it forked live on in their own sessions.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _reap(_signum, _frame) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    from ...processes import skip_optional_imports

    skip_optional_imports()
    from . import job_process  # the expensive imports, paid once

    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the platform to handle
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = job_process.run(request)
            finally:
                os._exit(code)
        out.write(json.dumps({"job_id": request["job_id"], "pid": pid}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
