"""One attempt of a training job as a process on this machine: the process's side of it (its
own session, its log, its environment), around the job entry point every backend shares
(``jobs/entry.py``).

Run in a child forked by the launcher (which paid papermill's import once) — either cold, or a
warm slot that already holds a started kernel (``kernels.py``). The process reports through
files in its job folder (see ``jobs/files.py``). Under accounts it becomes the job owner's
account first thing (the control plane handed it the job folder): the log, the work folder
and the notebook are the account's, never root's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...jobs import entry
from ...jobs.files import JobFiles, write_json_atomic
from ...processes import identity, own_session
from ...unix_accounts import become


def run(request: dict, km=None) -> int:
    """Run one attempt. Never returns to the caller's loop: the caller ``os._exit``s with it."""
    files = JobFiles(Path(request["job_dir"]))
    own_session()  # a warm slot leads one already
    if request.get("account"):
        become(request["account"])
    files.workdir.mkdir(parents=True, exist_ok=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # not the launcher's request pipe
    os.close(devnull)
    fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    write_json_atomic(files.process, {"pid": os.getpid(), "started": identity(os.getpid())})
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(files.workdir)
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.INFO)
    outcome = entry.run(files, entry.JobSpec.from_json(request["spec"]), km=km)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0 if outcome["status"] == "succeeded" else 1
