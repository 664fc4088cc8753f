"""The folder of one job: its snapshot, log, progress, outcome and executed notebook.

Written by the job process and read by the control plane; the files are the hand-off between
the two, so a job that ends while the control plane is down is still accounted for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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

    def reset_attempt(self) -> None:
        """Clear the previous attempt's outcome before a new one starts."""
        for path in (self.result, self.process, self.progress):
            path.unlink(missing_ok=True)
