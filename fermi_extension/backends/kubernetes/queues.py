"""Kueue's objects for the catalogue's GPU pools, for an operator to apply:

    python -m fermi_extension.backends.kubernetes.queues [--catalog CATALOG.yaml]
        [--namespace fermi] [--cpu 64] [--memory 256Gi] | kubectl apply -f -

One ResourceFlavor, ClusterQueue and LocalQueue per pool (``objects.make_kueue_objects``): the
queue a job names is its profile's pool, and a pool's GPU quota is its GPU count. They are
cluster-scoped, so the control plane does not create them itself (its Role cannot).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from .objects import make_kueue_objects
from .render import catalog_from


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", help="catalogue YAML (default: the shipped one)")
    parser.add_argument("--namespace", default="fermi")
    parser.add_argument("--cpu", default="64", help="CPU quota of each pool's ClusterQueue")
    parser.add_argument("--memory", default="256Gi", help="memory quota of each ClusterQueue")
    args = parser.parse_args(argv)
    objects = make_kueue_objects(catalog_from(args.catalog), args.namespace,
                                 cpu_quota=args.cpu, memory_quota=args.memory)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


if __name__ == "__main__":
    main()
