"""Workloads in containers on one machine, over the Docker Engine API (Docker, or podman's
``podman system service``).

- ``engine.py``: which engine this machine has, and podman's service started by the platform
  when no engine runs (with the configuration file of the platform's own that this kind of
  machine needs); what isolation the platform runs with.
- ``runtime.py``: one container from a neutral request (image pinned by digest, the profile's
  limits, mounts, labels, network), found again by its labels, and why it ended (an
  out-of-memory kill told apart by the platform itself).
- ``images.py``: the official images, built from the Dockerfiles in ``images/`` on a base made
  from Debian's packages where no registry can be reached.
"""
