"""Every container image Fermi names is one it builds from this repository, or one of a short
list of other projects' images, each with the reason it is not ours.

Collected from everywhere an image is named for a site to run: the chart's values and the
cluster manifests (hub_config/helm), the seed catalogue, the Dockerfiles' bases, the defaults in
fermi_extension/ and spawner/ (every string literal shaped like an image reference, so a new
default is caught without being listed here), the Kubernetes settings as they resolve, and the
install path of the docs. No engine is needed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from fermi_extension import __version__
from fermi_extension.containers.images import BASE, OFFICIAL
from fermi_extension.paths import REPOSITORY, shipped

# what `fermi images build NAME` builds from images/NAME/Dockerfile, and the base it makes from
# Debian's packages (make_base: mmdebstrap, no Dockerfile, no registry needed)
OURS = {o.repository for o in OFFICIAL.values()} | {BASE.rpartition(":")[0]}
# other projects' images, and why each is not built here
THIRD_PARTY = {
    "vllm/vllm-openai": "vLLM's own engine image for the `vllm` engine on GPU profiles: the "
                        "engine, its CUDA kernels and its OpenAI server are vLLM's, released "
                        "with the image",
    "gcr.io/kaniko-project/executor": "Kaniko, which builds users' Dockerfiles inside the "
                                      "cluster without a daemon: the builder of images is not "
                                      "one of the images it builds",
}
# a string literal shaped like HOST/PATH:TAG or PATH@sha256:… (an f-string's fields are the
# version, as in f"…:{__version__}")
IMAGE_LIKE = re.compile(r"^(?:[a-z0-9.-]+(?::\d+)?/)*[a-z0-9._-]+"
                        r"(?::[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$")


def repository(reference: str) -> str:
    name = reference.partition("@")[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name


def images_in(document, where: str) -> list[tuple[str, str]]:
    """Every ``image:`` of a YAML document: a string, or the chart's {name, tag}."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "image" and isinstance(value, str):
                found.append((where, value))
            elif key == "image" and isinstance(value, dict) and "name" in value:
                found.append((where, f"{value['name']}:{value['tag']}"))
            else:
                found += images_in(value, where)
    elif isinstance(document, list):
        for item in document:
            found += images_in(item, where)
    return found


def helm_images() -> list[tuple[str, str]]:
    found = []
    for path in sorted((shipped("hub_config") / "helm").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found += images_in(document, path.name)
    values = yaml.safe_load((shipped("hub_config") / "helm" / "values.yaml").read_text())
    found.append(("values.yaml FERMI_SERVING_IMAGE",
                  values["hub"]["extraEnv"].get("FERMI_SERVING_IMAGE", "")))
    return [(where, ref) for where, ref in found if ref]


def catalogue_images() -> list[tuple[str, str]]:
    seed = yaml.safe_load((shipped("hub_config") / "catalog.yaml").read_text())
    return [(f"catalog.yaml {image['slug']}", f"{image['reference']}:{version['tag']}")
            for image in seed["images"] for version in image["versions"]]


def dockerfile_bases() -> list[tuple[str, str]]:
    found = []
    for dockerfile in sorted((shipped("images")).glob("*/Dockerfile")):
        for line in dockerfile.read_text().splitlines():
            arg = re.match(r"ARG BASE=(\S+)", line)
            source = re.match(r"FROM (\S+)", line)
            if arg:
                found.append((str(dockerfile.relative_to(REPOSITORY)), arg.group(1)))
            elif source and source.group(1) != "${BASE}":
                found.append((str(dockerfile.relative_to(REPOSITORY)), source.group(1)))
    return found


def source_literals() -> list[tuple[str, str]]:
    found = []
    for root in (REPOSITORY / "fermi_extension", REPOSITORY / "spawner"):
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                elif isinstance(node, ast.JoinedStr):
                    text = "".join(part.value if isinstance(part, ast.Constant) else __version__
                                   for part in node.values)
                else:
                    continue
                if "/" in text and IMAGE_LIKE.match(text):
                    found.append((f"{path.relative_to(REPOSITORY)}:{node.lineno}", text))
    return found


def settings_defaults(monkeypatch) -> list[tuple[str, str]]:
    from fermi_extension.backends.kubernetes.builds import KubeImageBuilder
    from fermi_extension.backends.kubernetes.objects import Cluster
    from fermi_extension.backends.kubernetes.settings import KubernetesSettings

    monkeypatch.delenv("FERMI_SERVING_IMAGE", raising=False)
    settings, cluster = KubernetesSettings(), Cluster()
    return [("KubernetesSettings.serving_image", settings.serving_image),
            ("KubernetesSettings.vllm_image", settings.vllm_image),
            ("Cluster.serving_image", cluster.serving_image),
            ("Cluster.vllm_image", cluster.vllm_image),
            ("KubeImageBuilder.kaniko_image", KubeImageBuilder().kaniko_image)]


def docs_images() -> list[tuple[str, str]]:
    """References in code spans of the README and docs/kubernetes.md (with or without a host)."""
    found = []
    for name in ("README.md", "docs/kubernetes.md"):
        for span in re.findall(r"`([^`\n]+)`", (REPOSITORY / name).read_text()):
            for token in span.split():
                token = token.rstrip(",.;)")
                if IMAGE_LIKE.match(token) and not token.startswith(("http", "pvc", "s3")):
                    found.append((name, token))
    return found


def test_every_image_named_is_built_here_or_a_listed_third_party(monkeypatch):
    named = (helm_images() + catalogue_images() + dockerfile_bases() + source_literals()
             + settings_defaults(monkeypatch) + docs_images())
    # the collection itself works: it finds what the chart and the settings are known to name
    wheres = {where.split(" ")[0].split(":")[0] for where, _ in named}
    assert {"values.yaml", "extras.yaml", "kserve.yaml", "catalog.yaml",
            "KubernetesSettings.serving_image", "KubeImageBuilder.kaniko_image"} <= wheres
    strangers = [f"{where}: {reference}" for where, reference in named
                 if repository(reference) not in OURS | set(THIRD_PARTY)]
    assert not strangers, ("images named that are neither built from images/NAME/Dockerfile "
                           "nor listed (with a reason) in THIRD_PARTY:\n" + "\n".join(strangers))


def test_the_platform_images_run_from_the_names_the_build_gives(monkeypatch):
    """What the chart and settings run is what `fermi images build` tags, at this version:
    the push overlay and kustomizations then replace exactly these names."""
    named = dict(helm_images() + settings_defaults(monkeypatch))
    values = yaml.safe_load((shipped("hub_config") / "helm" / "values.yaml").read_text())
    built = {name: f"{o.repository}:{__version__}" for name, o in OFFICIAL.items()}
    assert f"{values['hub']['image']['name']}:{values['hub']['image']['tag']}" == built["hub"]
    assert (f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
            == built["python"])
    assert named["extras.yaml"] == built["router"]
    assert named["kserve.yaml"] == named["KubernetesSettings.serving_image"] == \
        built["model-server"]
    seed = {slug: ref for slug, ref in catalogue_images()}
    assert seed["catalog.yaml python-local"] == built["python"]
    assert seed["catalog.yaml pytorch"] == built["pytorch"]


@pytest.mark.parametrize("reference", ["quay.io/jupyter/scipy-notebook:2025-06-30",
                                       "fermi/model-server:0.1.0"])
def test_an_image_from_elsewhere_is_caught(reference):
    """Not ours: an upstream image, and a short name (Docker Hub's fermi/…, not our build)."""
    assert repository(reference) not in OURS | set(THIRD_PARTY)
