"""A warm job container's process: a kernel started ahead of demand, then one job.

``python -m fermi_extension.backends.local.container_slot /job KERNEL`` runs in a container the
local backend starts from an image within a profile (``container_jobs.py``), before any job is
known. It pays papermill's import and the kernel's start, then waits for the platform to move a
job's folder in as ``/job`` (a rename on the host: the bind mount follows the folder) and to
write ``/job/request.json`` (the job's spec and environment, as the launcher sends a process
slot). Then the job runs on that kernel exactly as in a process slot (``kernels.serve``,
``job_process.run``): its environment reaches the kernel before the first cell, and nothing of
the container outlives the job. The container's own environment is the image × profile's, no
job's values and no platform secret.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REQUEST = "request.json"
POLL_SECONDS = 0.01


def wait_for_request(folder: Path) -> dict | None:
    """The job's request, once the platform wrote it (atomically: a rename into place)."""
    path = folder / REQUEST
    while True:
        try:
            request = json.loads(path.read_text())
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)
            continue
        path.unlink(missing_ok=True)  # the job's token is in it: not left in the folder
        return request


def main() -> None:
    from ...processes import skip_optional_imports

    skip_optional_imports()
    from ...jobs import entry
    from . import job_process
    from .kernels import serve

    folder, kernel = Path(sys.argv[1]), sys.argv[2]
    entry.preload()
    code = serve(lambda: wait_for_request(folder), {"kernel": kernel, "env": dict(os.environ)},
                 job_process.run)
    os._exit(code)


if __name__ == "__main__":
    main()
