"""Where an attached dataset appears inside a job or a dev environment: ``datasets/NAME`` in its
working folder, and ``$FERMI_DATASET_NAME`` naming it. One function, used wherever a workload
starts (the job entry point on every backend, the local spawner), so a notebook finds its data
the same way everywhere.

Kept apart from ``service.py`` (the registry of datasets, with its database) so that a job's
process, which runs in the user's image, pays for no database import to find its data.
"""

from __future__ import annotations

from pathlib import Path


def link_datasets(folder: Path, datasets) -> dict[str, str]:
    """Make each dataset reachable at ``datasets/NAME`` in ``folder``; returns the environment
    naming where each one is. ``datasets``: ``DatasetMount``-like (``name``, ``kind``,
    ``location``, ``env``).

    - ``path`` (a folder on this machine): linked there;
    - ``volume``: the orchestrator mounted it there before the workload started (a Kubernetes
      pod's volumeMount), so it is only named — and refused if the mount is missing, rather than
      leaving the notebook to find an empty folder;
    - ``s3``: only named (the notebook reads the bucket itself).
    """
    env = {}
    for mount in datasets:
        place = folder / "datasets" / mount.name
        if mount.kind == "path":
            place.parent.mkdir(parents=True, exist_ok=True)
            if place.is_symlink() or place.exists():
                place.unlink()
            place.symlink_to(mount.location)
            env[mount.env] = str(place)
        elif mount.kind == "volume":
            if not place.is_dir():
                raise FileNotFoundError(
                    f"dataset {mount.name!r} ({mount.location}) is not mounted at {place}; "
                    "the workload's volume mounts are missing")
            env[mount.env] = str(place)
        else:
            env[mount.env] = mount.location
    return env
