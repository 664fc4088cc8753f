"""The storage initializer of a model-server pod: copy a model version's files into a folder.

`python -m fermi_extension.serving.fetch models:/NAME/VERSION /mnt/models` — from the MLflow
tracking server at $MLFLOW_TRACKING_URI (the same download the local backend does).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ..tracking.tracker import Tracker


async def fetch(uri: str, target: Path) -> None:
    if not uri.startswith("models:/") or uri.count("/") != 2:
        raise SystemExit(f"expected models:/NAME/VERSION, got {uri!r}")
    name, version = uri[len("models:/"):].split("/")
    tracker = Tracker(os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    try:
        staged = target.parent / f".{target.name}-{version}"
        await tracker.download_model(name, version, staged)
        target.mkdir(parents=True, exist_ok=True)
        for item in staged.iterdir():
            item.rename(target / item.name)
        staged.rmdir()
    finally:
        await tracker.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(fetch(sys.argv[1], Path(sys.argv[2])))
