"""The GPUs of this machine, read from the NVIDIA driver (``nvidia-smi``), or given in config."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str = ""


def detect_gpus() -> list[Gpu]:
    """The machine's NVIDIA GPUs; empty where there is no driver or no GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        output = subprocess.run(
            [smi, "--query-gpu=index,name,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.strip().splitlines():
        index, name, uuid = (part.strip() for part in line.split(",", 2))
        gpus.append(Gpu(int(index), name, uuid))
    return gpus
