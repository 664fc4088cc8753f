"""The folder of one job: its snapshot, log, progress, outcome and executed notebook.

Written by the job process and read by the control plane; the files are the hand-off between
the two, so a job that ends while the control plane is down is still accounted for. The job's
notebook can write anywhere in this folder, so the platform reads and writes it only through
``workload_files`` (no link is followed; see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import workload_files


def write_json_atomic(path: Path, data: dict) -> None:
    workload_files.write_json(path.parent, path.name, data)


def read_json(path: Path) -> dict | None:
    return workload_files.read_json(path.parent, path.name)


@dataclass(frozen=True)
class JobFiles:
    root: Path

    @property
    def snapshot(self) -> Path:
        return self.root / "input.ipynb"

    @property
    def output(self) -> Path:
        return self.root / "output.ipynb"

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def process(self) -> Path:
        return self.root / "process.json"

    @property
    def workdir(self) -> Path:
        """The notebook's working directory: files it writes stay with the job."""
        return self.root / "work"

    # what the platform reads and writes here, never following a link the job planted
    def read(self, path: Path, *, offset: int = 0, limit: int | None = None) -> bytes:
        return workload_files.read_bytes(self.root, path.relative_to(self.root), offset=offset,
                                         limit=limit)

    def has(self, path: Path) -> bool:
        return workload_files.exists(self.root, path.relative_to(self.root))

    def size(self, path: Path) -> int:
        return workload_files.size(self.root, path.relative_to(self.root))

    def write(self, path: Path, data: bytes) -> None:
        workload_files.write_bytes(self.root, path.relative_to(self.root), data)

    def append(self, path: Path):
        return workload_files.open_for_appending(self.root, path.relative_to(self.root))

    def reset_attempt(self) -> None:
        """Clear the previous attempt's outcome before a new one starts."""
        for path in (self.result, self.process, self.progress):
            path.unlink(missing_ok=True)  # unlink removes a link itself, never its target
        if self.log.is_symlink() or (self.log.exists() and not self.has(self.log)):
            self.log.unlink()  # a link planted by an earlier attempt: the next one starts afresh
