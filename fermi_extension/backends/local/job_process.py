"""One attempt of a training job, inside its own process: papermill with progress and outcome.

Imported once by the launcher (which pays papermill's import cost once) and run in a forked
child per job. The child starts its own session, so the whole job is one process group, and it
reports through files in its job folder (see ``jobs/files.py``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import papermill
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError

from ...jobs.files import JobFiles, write_json_atomic
from ...processes import identity

log = logging.getLogger("fermi.job")


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine that also reports cell-by-cell progress to the job folder."""

    progress_path: Path | None = None

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        code_cells = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
        total = len(code_cells)
        done = {"n": 0}
        start, complete = nb_man.cell_start, nb_man.cell_complete

        def report(current: int | None) -> None:
            if cls.progress_path is not None:
                write_json_atomic(
                    cls.progress_path,
                    {"cells_total": total, "cells_done": done["n"], "current_cell": current,
                     "updated_at": time.time()},
                )

        def cell_start(cell, cell_index=None, **kw):
            if cell.cell_type == "code":
                report(cell_index)
            return start(cell, cell_index, **kw)

        def cell_complete(cell, cell_index=None, **kw):
            result = complete(cell, cell_index, **kw)
            if cell.cell_type == "code":
                done["n"] += 1
                report(None)
            return result

        nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        report(None)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register("fermi", ProgressEngine)


def install_kernel_startup(ipython_dir: Path) -> None:
    """The job's kernel gets its own IPython profile whose start-up file attaches MLflow to the
    job's run (see jobs/attach_run.py)."""
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parents[2] / "jobs" / "attach_run.py"
    (startup / "00-fermi-attach-run.py").write_text(source.read_text())
    os.environ["IPYTHONDIR"] = str(ipython_dir)


def run(request: dict) -> int:
    """Run one attempt. Never returns to the caller's loop: the caller ``os._exit``s with it."""
    files = JobFiles(Path(request["job_dir"]))
    os.setsid()
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
    install_kernel_startup(files.root / "ipython")
    os.chdir(files.workdir)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, force=True,
        format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
    )
    logging.getLogger("papermill").setLevel(logging.INFO)
    ProgressEngine.progress_path = files.progress
    log.info("Job %s attempt %s: running %s with kernel %s",
             request["job_id"], request.get("attempt", 1), files.snapshot.name, request["kernel"])
    outcome: dict = {"status": "failed", "reason": None}
    try:
        papermill.execute_notebook(
            str(files.snapshot),
            str(files.output),
            parameters=request["parameters"],
            kernel_name=request["kernel"],
            engine_name="fermi",
            log_output=True,
            progress_bar=False,
            cwd=str(files.workdir),
        )
        outcome = {"status": "succeeded", "reason": None}
    except PapermillExecutionError as error:
        outcome["reason"] = (
            f"Cell {error.exec_count} raised {error.ename}: {error.evalue}".strip()
        )
    except BaseException as error:  # the job's outcome must be written whatever happened
        traceback.print_exc()
        outcome["reason"] = f"{error.__class__.__name__}: {error}"
    log.info("Job %s %s%s", request["job_id"], outcome["status"],
             f": {outcome['reason']}" if outcome["reason"] else "")
    write_json_atomic(files.result, outcome)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0 if outcome["status"] == "succeeded" else 1
