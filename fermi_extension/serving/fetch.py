"""The storage initializer of a model-server pod: copy a model version's files into a folder.

    python -m fermi_extension.serving.fetch models:/NAME/VERSION /mnt/models [URI FOLDER ...]

from the MLflow tracking server at $MLFLOW_TRACKING_URI (the same download the local backend
does), with $MLFLOW_TRACKING_TOKEN where it is set: in a pod, the URI is the control plane's
tracking proxy and the token the revision's own, which reads that one version and nothing else.
Two callers, one contract: the init container ``fetch-model`` of the Kubernetes backend's
revisions (``make_serving_objects``), and KServe, for which the ClusterStorageContainer of
``make_cluster_storage_container`` names this module as the command of its storage initializer.
KServe starts that container with the pairs ``URI FOLDER`` as its arguments (one pair,
``/mnt/models``, for a predictor's ``storageUri``; more when a predictor names several) and the
ClusterStorageContainer's environment, which carries $MLFLOW_TRACKING_URI. A non-zero exit with
the reason on stderr fails the pod's start, and the kubelet shows the reason (the container's
termination message).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ..tracking.tracker import Tracker, TrackingError

PREFIX = "models:/"
USAGE = ("usage: python -m fermi_extension.serving.fetch models:/NAME/VERSION FOLDER "
         "[models:/NAME/VERSION FOLDER ...]")


def model_uri(name: str, version: str) -> str:
    """A registered model version as MLflow names it, and as a revision's storageUri."""
    return f"{PREFIX}{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/NAME/VERSION``; a ValueError says what is wrong."""
    parts = uri[len(PREFIX):].split("/") if uri.startswith(PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected a model version as models:/NAME/VERSION, got {uri!r}")
    return parts[0], parts[1]


def parse_pairs(args: list[str]) -> list[tuple[str, str, Path]]:
    """(name, version, folder) per ``URI FOLDER`` pair of the command line."""
    if not args or len(args) % 2:
        raise ValueError(f"{USAGE}\n(got {len(args)} argument(s): {' '.join(args)!r})")
    return [(*parse_model_uri(uri), Path(folder)) for uri, folder in zip(args[::2], args[1::2])]


async def fetch_into(tracker: Tracker, name: str, version: str, target: Path) -> None:
    # staged inside the target: in a pod the target is a volume the (non-root) user may
    # write, its parent (/mnt) is the image's and is not
    target.mkdir(parents=True, exist_ok=True)
    staged = target / f".fetching-{version}"
    await tracker.download_model(name, version, staged)
    for item in staged.iterdir():
        item.rename(target / item.name)
    staged.rmdir()


async def fetch_all(pairs: list[tuple[str, str, Path]], tracking_uri: str,
                    token: str = "") -> None:
    tracker = Tracker(tracking_uri, token=token)
    try:
        for name, version, target in pairs:
            await fetch_into(tracker, name, version, target)
            print(f"fetched models:/{name}/{version} into {target}", flush=True)
    finally:
        await tracker.close()


def main(argv: list[str] | None = None) -> int:
    try:
        pairs = parse_pairs(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    try:
        asyncio.run(fetch_all(pairs, tracking_uri, os.environ.get("MLFLOW_TRACKING_TOKEN", "")))
    except TrackingError as e:
        print(f"cannot fetch from the tracking server at {tracking_uri}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
