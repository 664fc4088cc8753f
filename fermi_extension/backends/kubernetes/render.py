"""Dry runs: the objects a submission or a deployment would create on Kubernetes, rendered
from a catalogue file with no cluster and no running platform (for review and GitOps)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ...catalog.access import PLATFORM, choose_image, choose_profile
from ...catalog.schema import Catalog
from ...catalog.store import load_catalog_file
from ...errors import InvalidInput
from ...jobs.models import CreateJob
from ...jobs.service import check_submission
from ...paths import shipped
from ...spec import runtime_spec
from .objects import Cluster, ServingRevision, make_inference_service, make_job, make_serving_objects


def catalog_from(path: str | None) -> Catalog:
    return load_catalog_file(path or shipped("hub_config") / "catalog.yaml")


def render_job(notebook_path: Path, parameters: dict, *, catalog: Catalog, image: str | None,
               profile: str | None, owner: str = "you", nodes: int = 1,
               timeout_seconds: int | None = None, cluster: Cluster | None = None) -> list[dict]:
    # the submission's own checks (jobs.service.check_submission), stopped before the platform
    ready = check_submission(catalog, PLATFORM, CreateJob(
        notebook=notebook_path.read_text(), parameters=parameters, image=image, profile=profile,
        nodes=nodes, timeout_seconds=timeout_seconds))
    return make_job("dry-run", owner, ready.spec, cluster or Cluster(), parameters=ready.parameters,
                    timeout_seconds=timeout_seconds, nodes=nodes)


def render_deployment(model: str, version: str, *, catalog: Catalog, name: str,
                      profile: str | None, engine: str = "auto", min_replicas: int = 1,
                      max_replicas: int = 1, target_concurrency: float = 4, kserve: bool = False,
                      owner: str = "you", cluster: Cluster | None = None) -> list[dict]:
    chosen_image, chosen_profile = choose_image(catalog, None), choose_profile(catalog, PLATFORM,
                                                                               profile)
    if engine == "vllm" and not chosen_profile.gpu:
        raise InvalidInput(
            f"The vllm engine needs a GPU profile; {chosen_profile.slug!r} has no GPU.")
    runtime = runtime_spec(chosen_image, chosen_profile)
    revision = ServingRevision(name, owner, model, str(version), "r1",
                               f"models:/{model}/{version}", engine)
    cluster = cluster or Cluster()
    if kserve:
        return [make_inference_service(revision, runtime, cluster, min_replicas=min_replicas,
                                       max_replicas=max_replicas,
                                       target_concurrency=target_concurrency)]
    return make_serving_objects(revision, runtime, cluster, min_replicas=min_replicas,
                                max_replicas=max_replicas, target_concurrency=target_concurrency)


def dump(objects: list[dict], output: str) -> str:
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2)
    return yaml.safe_dump_all(objects, sort_keys=False)
