"""`fermi images push`: the official images into a site's registry, and their digests written
where a cluster install reads them.

Each image the engine built (``images.py``) is tagged ``REGISTRY/PREFIX/NAME:VERSION`` and
pushed through the engine's API, so the engine's own credentials apply (`podman login`,
`docker login`); the digest is the one the registry stored the manifest under, as the engine
reports it at the end of the push. Then one folder gets:

- ``values.yaml``, an overlay for the Zero to JupyterHub chart given after
  hub_config/helm/values.yaml: ``hub.image`` and ``singleuser.image`` by digest (the chart
  writes ``NAME:TAG``, so the digest rides in the tag: ``0.1.0@sha256:…``, which Kubernetes
  pulls by digest), ``FERMI_SERVING_IMAGE`` for model-server pods, and the seed catalogue with
  the catalogue's images pinned (``hub.extraFiles``, read through ``FERMI_CATALOG``) for the
  platform's first start;
- ``extras/`` and ``kserve/``: kustomizations of hub_config/helm/extras.yaml and kserve.yaml
  whose ``images:`` put the pushed digests in place of the names `fermi images build` gives
  (``kubectl apply -k``). Kustomize reads only files under its own folder, so each holds a copy
  of this Fermi's file beside its kustomization.

A platform already running keeps its catalogue in its database: ``--db-url`` pins the pushed
catalogue images there too (``images.record``), as an audited change.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from .. import __version__
from .images import OFFICIAL, PLATFORM, Built, Log, digest_of, pinned

# where the chart mounts the pinned seed catalogue in the hub pod (hub.extraFiles)
CATALOG_MOUNT = "/usr/local/etc/fermi/catalog.yaml"
# the cluster manifests with images of ours, and the folder each kustomization goes to
MANIFESTS = {"extras": "extras.yaml", "kserve": "kserve.yaml"}
# where images are in kinds kustomize does not know (it replaces images only in pod specs)
IMAGE_FIELDS = {"kserve.yaml": [{"kind": "ClusterStorageContainer",
                                  "path": "spec/container/image"}]}
KUSTOMIZE_CONFIG = "kustomizeconfig.yaml"
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


class PushFailed(RuntimeError):
    pass


class _Dumper(yaml.SafeDumper):
    """YAML whose multi-line strings (the catalogue in the overlay) are blocks, as written."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def check_registry(registry: str) -> str:
    """``HOST[:PORT][/PREFIX]``, the start of the pushed repositories, or why not."""
    from ..catalog.schema import check_reference

    registry = registry.strip().rstrip("/")
    host = registry.split("/", 1)[0]
    # as the engine reads a name: without a host in front, a push would go to Docker Hub
    if not ("." in host or ":" in host or host == "localhost"):
        raise PushFailed(f"--registry {registry!r} must start with the registry's host: "
                         "HOST[:PORT]/PREFIX, e.g. registry.example.org/fermi, "
                         "127.0.0.1:5000/fermi or docker.io/ORGANISATION")
    try:
        check_reference(f"{registry}/python")
    except ValueError as error:
        raise PushFailed(f"--registry {registry!r}: {error}") from None
    return registry


def built_here(client, names: list[str] | None) -> list[str]:
    """The images to push: ``names``, or the platform set (with pytorch where it was built);
    each must be built already, else the error says how to build it."""
    wanted = names or [*PLATFORM, *(["pytorch"] if _built(client, "pytorch") else [])]
    unknown = [n for n in wanted if n not in OFFICIAL]
    if unknown:
        raise PushFailed(f"no official image {', '.join(unknown)}; there are: "
                         f"{', '.join(OFFICIAL)}")
    missing = [n for n in wanted if not _built(client, n)]
    if missing:
        raise PushFailed(f"this engine has no {', '.join(missing)} image of Fermi {__version__}: "
                         f"build it first with `fermi images build {' '.join(missing)}`")
    return wanted


def _built(client, name: str) -> bool:
    return digest_of(client, f"{OFFICIAL[name].repository}:{__version__}") is not None


def push(client, name: str, registry: str, *, insecure: bool = False, log: Log = print) -> Built:
    """Push the built image ``name`` as ``registry/NAME:VERSION``; the pushed image, with the
    digest the registry serves it by."""
    official = OFFICIAL[name]
    repository = f"{registry}/{name}"
    log(f"Pushing {official.repository}:{__version__} to {repository}:{__version__} …")
    digest = push_image(client, f"{official.repository}:{__version__}", repository, __version__,
                        insecure=insecure)
    return Built(name, official.slug, repository, __version__, digest)


def push_image(client, source: str, repository: str, tag: str, *,
               insecure: bool = False) -> str:
    """Tag the engine's image ``source`` as ``repository:tag`` and push it; the digest the
    registry stored its manifest under."""
    import docker.errors

    client.images.get(source).tag(repository, tag)
    # podman's Engine API takes tlsVerify on a push (Docker's has no such switch and ignores
    # it); docker-py's push() has no argument for it, so it rides on the session's parameters
    client.api.params = {"tlsVerify": "false"} if insecure else {}
    try:
        said = list(client.api.push(repository, tag=tag, stream=True, decode=True))
    except docker.errors.APIError as error:
        raise PushFailed(push_error(f"{repository}:{tag}", str(error.explanation or error),
                                    insecure)) from None
    finally:
        client.api.params = {}
    errors = [c["error"] for c in said if c.get("error")]
    if errors:
        raise PushFailed(push_error(f"{repository}:{tag}", errors[-1].strip(), insecure))
    # the engine's last word: "TAG: digest: sha256:… size: N" (Docker's and podman's alike)
    digests = [m.group(1) for c in said for m in [_DIGEST.search(str(c.get("status", "")))] if m]
    if not digests:
        raise PushFailed(f"the engine pushed {repository}:{tag} but did not say its digest: "
                         f"{said[-3:]}")
    return digests[-1]


def push_error(target: str, message: str, insecure: bool) -> str:
    """The registry's refusal, with what to do about it."""
    lowered = message.lower()
    host = target.split("/", 1)[0]
    if not insecure and ("http response to https client" in lowered or "certificate" in lowered
                         or "tls" in lowered):
        hint = (f"{host} speaks plain HTTP or has a certificate this machine does not trust: "
                "pass --insecure (podman; Docker wants it in its daemon's insecure-registries), "
                "or give the registry a trusted certificate")
    elif any(w in lowered for w in ("unauthorized", "authentication required", "denied")):
        hint = (f"{host} wants credentials: log the engine in (`podman login {host}` or "
                f"`docker login {host}`, as the account that runs the engine) and push again")
    else:
        hint = f"check that this machine reaches {host} and that the path is yours to push to"
    return f"pushing {target} failed: {message}. {hint}."


def pinned_catalog(catalog, pushed: list[Built]):
    """``catalog`` with each pushed catalogue image pinned (``images.pinned``)."""
    from ..catalog.schema import Image

    by_slug = {b.slug: b for b in pushed if b.slug}
    images = [Image.model_validate({**image.model_dump(mode="json"),
                                    **pinned(image, by_slug[image.slug])})
              if image.slug in by_slug else image for image in catalog.images]
    return catalog.model_copy(update={"images": images})


def chart_values(pushed: list[Built], catalog_yaml: str | None) -> dict:
    """The Zero to JupyterHub overlay naming the pushed images by digest (only keys of the
    chart's schema: ``*.image.name``/``tag``, ``hub.extraEnv``, ``hub.extraFiles``)."""
    by_name = {b.name: b for b in pushed}
    hub: dict = {}
    values: dict = {}
    if "hub" in by_name:
        hub["image"] = _name_and_tag(by_name["hub"])
    if "python" in by_name:
        # the fallback image of dev servers (the catalogue's choice replaces it per spawn)
        values["singleuser"] = {"image": _name_and_tag(by_name["python"])}
    env = {}
    if "model-server" in by_name:
        env["FERMI_SERVING_IMAGE"] = by_name["model-server"].reference
    if catalog_yaml is not None:
        env["FERMI_CATALOG"] = CATALOG_MOUNT
        hub["extraFiles"] = {"fermi-catalog": {"mountPath": CATALOG_MOUNT,
                                               "stringData": catalog_yaml}}
    if env:
        hub["extraEnv"] = env
    return {"hub": hub, **values} if hub else values


def _name_and_tag(built: Built) -> dict:
    return {"name": built.repository, "tag": f"{built.tag}@{built.digest}"}


def kustomization(manifest: str, text: str, pushed: list[Built]) -> dict:
    """A kustomization of ``manifest`` (whose content is ``text``) with the pushed images it
    names by digest."""
    images = [{"name": OFFICIAL[b.name].repository, "newName": b.repository, "digest": b.digest}
              for b in pushed if f"{OFFICIAL[b.name].repository}:" in text]
    document = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [manifest], "images": images}
    if manifest in IMAGE_FIELDS:
        document["configurations"] = [KUSTOMIZE_CONFIG]
    return document


def pinned_seed(pushed: list[Built]):
    """The seed catalogue (``$FERMI_CATALOG`` or hub_config/catalog.yaml) with the pushed
    catalogue images pinned; None when none of them was pushed."""
    from ..catalog.store import load_catalog_file, seed_path

    if not any(b.slug for b in pushed):
        return None
    return pinned_catalog(load_catalog_file(seed_path()), pushed)


def write_install(out: Path, registry: str, pushed: list[Built], catalog) -> list[Path]:
    """The chart overlay (with ``catalog`` as the seed, if any) and the kustomizations for
    ``pushed`` into ``out``; the paths written."""
    from ..catalog.service import export_yaml
    from ..paths import shipped

    header = (f"# Written by `fermi images push --registry {registry}` (Fermi {__version__}): "
              "the images pushed there, by digest.\n")
    out.mkdir(parents=True, exist_ok=True)
    values = out / "values.yaml"
    values.write_text(header + "# Give it after hub_config/helm/values.yaml: helm upgrade "
                      "--install … --values hub_config/helm/values.yaml --values "
                      f"{values} --values my-secrets.yaml\n"
                      + yaml.dump(chart_values(pushed, catalog and export_yaml(catalog)),
                                  Dumper=_Dumper, sort_keys=False, width=100,
                                  allow_unicode=True))
    written = [values]
    for folder, manifest in MANIFESTS.items():
        source = shipped("hub_config") / "helm" / manifest
        target = out / folder
        target.mkdir(exist_ok=True)
        shutil.copy(source, target / manifest)
        if manifest in IMAGE_FIELDS:
            (target / KUSTOMIZE_CONFIG).write_text(
                yaml.safe_dump({"images": IMAGE_FIELDS[manifest]}))
        path = target / "kustomization.yaml"
        path.write_text(header + f"# {manifest} is a copy of hub_config/helm/{manifest}: "
                        "kustomize reads only files under this folder.\n"
                        + yaml.safe_dump(kustomization(manifest, source.read_text(), pushed),
                                         sort_keys=False))
        written.append(path)
    return written


def record_pushed(db_url: str, pushed: list[Built], catalog) -> None:
    """Pin the pushed catalogue images in the platform database at ``db_url`` (a platform
    already running); an empty one is seeded with ``catalog`` first, as its first start would."""
    from ..catalog.store import CatalogStore
    from ..db import make_session_factory
    from .images import record

    sessions = make_session_factory(db_url)
    if catalog is not None:
        CatalogStore(sessions).seed_if_empty(catalog)
    for built in pushed:
        record(sessions, built, by="fermi images push")
