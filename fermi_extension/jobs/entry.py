"""The one entry point of a training job, wherever it runs: a process on this machine (forked
from the local backend's launcher), a container, a Kubernetes pod
(``python -m fermi_extension.jobs.entry FOLDER --spec JSON``).

One attempt, in order:

1. the job's datasets appear at ``datasets/NAME`` in its working folder (``datasets/mounts.py``);
2. its kernel gets the job's environment (MLflow run and tracking URI, job id, datasets, GPUs),
   the working folder as its cwd, and the start-up that attaches MLflow to the job's run
   (``attach_run.py``) — before any cell of the notebook runs, whether the kernel was started
   for this job or taken warm from a pool (``backends/local/kernels.py``);
3. papermill runs the snapshot with the cell-progress engine (``progress.json``);
4. the MLflow run is ended from papermill's outcome (MLflow itself leaves a failed notebook's
   run FINISHED and a killed one RUNNING);
5. ``lineage.json`` (snapshot → run → datasets → output) and ``result.json`` are written.

Everything lands in the job folder through ``jobs/files.py`` (no link the notebook planted is
followed), which is the hand-off to the control plane on every backend.

The platform's environment never reaches here: whoever starts this process gives it the job's
environment only (``workload_env``). This module imports papermill only when it runs a job, so
the Kubernetes object builders can import ``entry_command`` for free.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..datasets.mounts import link_datasets
from .files import JobFiles, read_json, write_json_atomic

log = logging.getLogger("fermi.job")

LINEAGE = "lineage.json"


@dataclass(frozen=True)
class DatasetRef:
    """An attached dataset version, as the job sees it (``spec.DatasetMount``'s fields)."""

    name: str
    version: str
    location: str
    kind: str  # path | volume | s3
    env: str


@dataclass(frozen=True)
class JobSpec:
    """What the control plane decided about one attempt, handed to the entry point as JSON.
    The environment travels as the process's own environment, not in here."""

    job_id: str
    kernel: str
    parameters: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[DatasetRef, ...] = ()
    attempt: int = 1

    @classmethod
    def from_json(cls, data: dict) -> "JobSpec":
        return cls(job_id=str(data["job_id"]), kernel=str(data["kernel"]),
                   parameters=dict(data.get("parameters") or {}),
                   datasets=tuple(DatasetRef(**d) for d in data.get("datasets") or ()),
                   attempt=int(data.get("attempt", 1)))

    @classmethod
    def of(cls, job_id: str, runtime, parameters: dict | None = None,
           attempt: int = 1) -> "JobSpec":
        """From a ``spec.RuntimeSpec`` (what every backend launches from)."""
        return cls(job_id=job_id, kernel=runtime.kernel, parameters=dict(parameters or {}),
                   datasets=tuple(DatasetRef(m.name, m.version, m.location, m.kind, m.env)
                                  for m in runtime.datasets or ()),
                   attempt=attempt)

    def to_json(self) -> dict:
        data = asdict(self)
        data["datasets"] = [asdict(d) for d in self.datasets]
        return data


def entry_command(folder: str, spec: JobSpec, *, python: str = "python",
                  snapshot: str | None = None, output: str | None = None) -> list[str]:
    """The command a container or pod runs for one attempt. ``snapshot``/``output``: where
    papermill reads and writes the notebook when that is not the folder (an s3:// URL)."""
    command = [python, "-m", "fermi_extension.jobs.entry", folder,
               "--spec", json.dumps(spec.to_json(), sort_keys=True)]
    if snapshot:
        command += ["--snapshot", snapshot]
    if output:
        command += ["--output", output]
    return command


# -- the kernel's hand-over -------------------------------------------------------------------

def handover_code(env: dict[str, str], workdir: Path) -> str:
    """What the kernel runs before the notebook: the job's environment and cwd (a warm kernel
    started with neither), then MLflow attached to the job's run."""
    attach = (Path(__file__).with_name("attach_run.py")).read_text()
    return (f"import os as _fermi_os\n"
            f"_fermi_os.environ.update({dict(env)!r})\n"
            f"_fermi_os.chdir({str(workdir)!r})\n"
            f"exec(compile({attach!r}, 'fermi-attach-run', 'exec'), "
            f"{{'__name__': 'fermi_attach_run'}})\n"
            f"del _fermi_os\n")


@functools.cache
def _engine():
    """papermill's nbclient engine, reporting cell progress and handing the kernel over first.
    Built on first use: papermill costs seconds to import."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.utils import merge_kwargs, remove_args
    from traitlets import Unicode

    class JobNotebookClient(PapermillNotebookClient):
        handover = Unicode("", help="code the kernel runs before the notebook's first cell")

        def papermill_execute_cells(self):
            if self.handover:
                reply = self.wait_for_reply(self.kc.execute(
                    self.handover, silent=True, store_history=False, allow_stdin=False))
                content = (reply or {}).get("content", {})
                if content.get("status") != "ok":
                    raise RuntimeError("the kernel refused the job's environment: "
                                       f"{content.get('ename')}: {content.get('evalue')}")
            return super().papermill_execute_cells()

    class ProgressEngine(NBClientEngine):
        progress_path: Path | None = None
        on_progress: Callable[[], None] | None = None  # after each write of progress_path

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False,
                                     stdout_file=None, stderr_file=None, start_timeout=60,
                                     execution_timeout=None, **kwargs):
            total = sum(1 for c in nb_man.nb.cells if c.cell_type == "code")
            done = {"n": 0}
            start, complete = nb_man.cell_start, nb_man.cell_complete

            def report(current: int | None) -> None:
                if cls.progress_path is not None:
                    write_json_atomic(cls.progress_path, {
                        "cells_total": total, "cells_done": done["n"], "current_cell": current,
                        "updated_at": time.time()})
                    if cls.on_progress is not None:
                        cls.on_progress()

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
            # NBClientEngine's own hand-off to its client, with ours in its place
            kwargs = remove_args(["timeout", "startup_timeout", "input_path"], **kwargs)
            final = merge_kwargs(kwargs, timeout=execution_timeout or kwargs.get("timeout"),
                                 startup_timeout=start_timeout, kernel_name=kernel_name,
                                 log=logging.getLogger("papermill"), log_output=log_output,
                                 stdout_file=stdout_file, stderr_file=stderr_file)
            return JobNotebookClient(nb_man, **final).execute()

    papermill_engines.register("fermi", ProgressEngine)
    return ProgressEngine


# -- one attempt ------------------------------------------------------------------------------

def _sha256(files: JobFiles, path: Path) -> str | None:
    try:
        return hashlib.sha256(files.read(path)).hexdigest()
    except (OSError, ValueError):
        return None


def end_tracking_run(status: str) -> None:
    """End the job's MLflow run (``MLFLOW_RUN_ID`` at ``MLFLOW_TRACKING_URI``) as ``status``.
    The control plane ends it again when it records the attempt (as KILLED for a cancel): this
    one makes it right even while the control plane is away."""
    run_id, uri = os.environ.get("MLFLOW_RUN_ID"), os.environ.get("MLFLOW_TRACKING_URI", "")
    if not run_id or not uri.startswith(("http://", "https://")):
        return
    body = json.dumps({"run_id": run_id, "status": status,
                       "end_time": int(time.time() * 1000)}).encode()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")  # the job's own, for the tracking proxy
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/runs/update", data=body,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token
                                                 else {})})
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except OSError as error:  # the platform ends it anyway; the job's outcome stands
        log.warning("could not end MLflow run %s: %s", run_id, error)


def rank() -> int:
    """This process's rank in a distributed job (an indexed Kubernetes Job's pods): 0 alone."""
    return int(os.environ.get("RANK") or os.environ.get("JOB_COMPLETION_INDEX") or 0)


# a container's own memory cgroup (v2, then v1): its limit, and how often the kernel's OOM
# killer struck inside it — the kernel it kills is the notebook's, not this process, so this
# process is the one that sees it and says so (podman here does not, FACTS.md)
MEMORY_CGROUPS = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.events"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                   "/sys/fs/cgroup/memory/memory.oom_control"))


def memory_kills() -> int | None:
    """Out-of-memory kills so far in this container's memory cgroup; None outside a container
    with a memory limit (a host's root cgroup counts everyone's)."""
    for limit_path, events_path in MEMORY_CGROUPS:
        try:
            limit = Path(limit_path).read_text().strip()
            events = Path(events_path).read_text().split("\n")
        except OSError:
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**62:
            return None
        for line in events:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None
    return None


def run(files: JobFiles, spec: JobSpec, *, km=None, snapshot: str | None = None,
        output: str | None = None) -> dict:
    """Run one attempt in this process; returns (and records) its outcome. ``km``: a started
    kernel manager to use (a warm kernel), shut down afterwards; None: papermill starts one.
    The process's environment is the job's."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    engine = _engine()
    files.workdir.mkdir(parents=True, exist_ok=True)
    own_rank = rank()
    if "WORLD_SIZE" in os.environ:  # a distributed job: torch.distributed reads RANK beside it
        os.environ["RANK"] = str(own_rank)
    os.environ.setdefault("IPYTHONDIR", str(files.root / "ipython"))
    started = time.time()
    kills = memory_kills()
    outcome: dict = {"status": "failed", "reason": None}
    lineage: dict = {}
    # a job folder in a bucket (storage 's3'): the attempt runs in this pod's own folder as on
    # every backend, and what it leaves there (output, lineage, progress, result) goes back
    # beside the snapshot, where the control plane collects it (backends/kubernetes/storage.py)
    remote = output if output and _is_url(output) else None
    progress_sender: Debounced | None = None
    try:
        os.environ.update(link_datasets(files.workdir, spec.datasets))
        lead = own_rank == 0  # every rank runs the notebook; rank 0 speaks for the job
        if snapshot and _is_url(snapshot):
            files.write(files.snapshot, _remote_io().read(snapshot).encode())
            snapshot = None
        snapshot = snapshot or str(files.snapshot)
        if not output or remote:
            output = str(files.output if lead else files.root / f"output-rank-{own_rank}.ipynb")
        if lead:
            lineage = {
                "job_id": spec.job_id, "attempt": spec.attempt,
                "snapshot": {"name": Path(snapshot).name,
                             "sha256": _sha256(files, files.snapshot)},
                "run_id": os.environ.get("MLFLOW_RUN_ID"),
                "experiment_id": os.environ.get("MLFLOW_EXPERIMENT_ID"),
                "kernel": spec.kernel, "parameters": spec.parameters,
                "datasets": [{**asdict(d), "path": f"datasets/{d.name}",
                              "seen_as": os.environ.get(d.env)} for d in spec.datasets],
                "warm_kernel": km is not None, "started_at": started,
            }
            write_json_atomic(files.root / LINEAGE, lineage)
            engine.progress_path = files.progress
            if remote:  # the control plane reads it from the bucket while the job runs
                progress_sender = Debounced(PROGRESS_EVERY, functools.partial(
                    send_back, files, remote.rsplit("/", 1)[0], None, (files.progress.name,)))
                engine.on_progress = progress_sender
        log.info("Job %s attempt %s: running %s with kernel %s%s", spec.job_id, spec.attempt,
                 Path(snapshot).name, spec.kernel, " (warm)" if km is not None else "")
        papermill.execute_notebook(
            snapshot, output, parameters=spec.parameters, kernel_name=spec.kernel,
            engine_name="fermi", log_output=True, progress_bar=False, cwd=str(files.workdir),
            km=km, handover=handover_code(dict(os.environ), files.workdir),
        )
        outcome = {"status": "succeeded", "reason": None}
    except PapermillExecutionError as error:
        outcome["reason"] = f"Cell {error.exec_count} raised {error.ename}: {error.evalue}".strip()
    except BaseException as error:  # the job's outcome must be written whatever happened
        traceback.print_exc()
        outcome["reason"] = f"{error.__class__.__name__}: {error}"
    finally:
        if km is not None:  # a warm kernel serves one job, then goes
            _shutdown(km)
        engine.on_progress = None
        if progress_sender is not None:  # send_back below sends the last progress itself
            progress_sender.cancel()
    if outcome["status"] == "failed" and kills is not None and (memory_kills() or 0) > kills:
        outcome["out_of_memory"] = True  # the backend names the profile and a larger one
    log.info("Job %s %s%s", spec.job_id, outcome["status"],
             f": {outcome['reason']}" if outcome["reason"] else "")
    if own_rank == 0:
        end_tracking_run("FINISHED" if outcome["status"] == "succeeded" else "FAILED")
        if lineage:
            lineage.update(status=outcome["status"], reason=outcome["reason"], ended_at=time.time(),
                           output={"name": files.output.name,
                                   "sha256": _sha256(files, files.output)})
            write_json_atomic(files.root / LINEAGE, lineage)
        write_json_atomic(files.result, outcome)  # last: the control plane reads it as "ended"
        if remote:
            send_back(files, remote.rsplit("/", 1)[0], Path(remote).name)
    return outcome


RETURNED = ("lineage.json", "progress.json", "result.json")  # result last: it says "ended"


def _is_url(where: str) -> bool:
    return "://" in where


def _remote_io():
    from papermill.iorw import papermill_io  # s3://, gs://, abfs://: papermill's handlers

    return papermill_io


def send_back(files: JobFiles, folder: str, output_name: str | None,
              names: tuple[str, ...] = RETURNED) -> None:
    """The attempt's files, from this pod's folder to the job's folder in the bucket: its
    output as ``output_name`` (None: not now) and ``names``."""
    io = _remote_io()
    sent = ((files.output, output_name),) if output_name else ()
    for local, name in (*sent, *((files.root / n, n) for n in names)):
        if files.has(local):
            io.write(files.read(local).decode(), f"{folder}/{name}")


# how often, at most, a job on bucket storage sends its cell progress while it runs
PROGRESS_EVERY = 2.0


class Debounced:
    """Calls ``action`` when called, at most once per ``seconds``; a call in between is made
    at the end of that interval, so the last state always goes out (a long cell that starts
    just after a send is shown as running within ``seconds``). A failing send is logged,
    never the job's failure."""

    def __init__(self, seconds: float, action: Callable[[], None]):
        self.seconds, self.action = seconds, action
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # cancel waits for a send under way
        self._last = float("-inf")
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self.seconds - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._fire()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        with self._sending:
            try:
                self.action()
            except Exception as error:
                log.warning("could not send the job's progress: %s", error)

    def cancel(self) -> None:
        """No more sends: a pending one is dropped, one under way is waited for."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.action = lambda: None
        with self._sending:
            pass


def _shutdown(km) -> None:
    """Discard a kernel this job was handed: killed with what it started (its own process
    group), not asked to shut down — nothing in it is kept, and asking costs half a second."""
    import signal

    from jupyter_core.utils import run_sync

    process = getattr(getattr(km, "provisioner", None), "process", None)
    try:
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
        run_sync(km.shutdown_kernel)(now=True)
    except Exception as error:
        log.warning("could not stop the job's kernel: %s", error)


def preload() -> None:
    """Pay, once in a process that forks jobs, what each job would pay on its first notebook:
    papermill's import and nbformat's schema validators (compiled on first use, ~0.4 s)."""
    import nbformat

    _engine()
    for minor in (4, 5):
        nb = nbformat.v4.new_notebook()
        nb.nbformat_minor = minor
        nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))


def lineage_of(files: JobFiles) -> dict | None:
    """The lineage an attempt recorded (None before it started)."""
    return read_json(files.root / LINEAGE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fermi_extension.jobs.entry",
        description="Run one attempt of a Fermi training job in its folder.")
    parser.add_argument("folder", type=Path, help="the job folder (input.ipynb is there)")
    parser.add_argument("--spec", help="the attempt as JSON; default: FOLDER/spec.json")
    parser.add_argument("--snapshot", help="read the notebook here instead (e.g. s3://...)")
    parser.add_argument("--output", help="write the executed notebook here instead")
    args = parser.parse_args(argv)
    from ..processes import skip_optional_imports

    skip_optional_imports()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.INFO)
    files = JobFiles(args.folder.resolve())
    files.root.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.spec) if args.spec else read_json(files.root / "spec.json")
    if data is None:
        parser.error(f"no --spec and no spec.json in {files.root}")
    outcome = run(files, JobSpec.from_json(data), snapshot=args.snapshot, output=args.output)
    return 0 if outcome["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
