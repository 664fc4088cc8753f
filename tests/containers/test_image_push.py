"""`fermi images push` for real: the platform's images of this source tree (python, hub, router,
model-server) pushed through the session's engine to Debian's ``docker-registry`` on 127.0.0.1
over plain HTTP (``--insecure``: the session's engine has no registries.conf that trusts it),
their digests written where a cluster install reads them (the chart overlay, the
kustomizations, the catalogue), and each pulled back by digest through an engine that trusts
the registry as a cluster's nodes would (``registry_engine``): the very image built.

pytorch is left out: its build fetches torch's wheels (gigabytes) for minutes, and its push is
the code path python's takes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess

import httpx
import pytest
import yaml

from fermi_extension import __version__
from fermi_extension.catalog.schema import Catalog
from fermi_extension.catalog.store import CatalogStore, load_catalog_file, seed_path
from fermi_extension.cli import main
from fermi_extension.containers.images import OFFICIAL, digest_of
from fermi_extension.db import make_session_factory

from .conftest import engine_connection

PUSHED = ("python", "hub", "router", "model-server")
# the Zero to JupyterHub chart validates values against its schema (values.schema.yaml, which
# forbids unknown keys): the overlay may only set these
CHART_KEYS = {"hub.image.name", "hub.image.tag", "singleuser.image.name", "singleuser.image.tag",
              "hub.extraEnv", "hub.extraFiles.*.mountPath", "hub.extraFiles.*.stringData"}
MANIFEST_TYPES = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])


def fermi(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def install(tmp_path_factory, engine, registry, official_image, platform_images):
    """`fermi images push --registry 127.0.0.1:PORT/fermi --insecure --db-url …` into a folder,
    with a platform database seeded as a running platform's is; the folder and the URL."""
    folder = tmp_path_factory.mktemp("push")
    db_url = f"sqlite:///{folder / 'fermi.sqlite'}"
    CatalogStore(make_session_factory(db_url)).seed_if_empty(load_catalog_file(seed_path()))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FERMI_CONTAINER_ENGINE", engine.url)
        status, out, err = fermi("images", "push", "--registry", f"{registry}/fermi",
                                 "--insecure", "--out", str(folder / "out"), "--db-url", db_url,
                                 "--data-dir", str(folder / "data"))
    assert status == 0, out + err
    return folder / "out", db_url


@pytest.fixture(scope="module")
def node(registry_engine):
    """An engine that trusts the registry, as a cluster's nodes are set up to."""
    with engine_connection(registry_engine) as client:
        yield client


def named(out) -> dict[str, str]:
    """Each pushed image as the written files name it (REPOSITORY@DIGEST)."""
    values = yaml.safe_load((out / "values.yaml").read_text())
    by_name = {}
    for name, image in (("hub", values["hub"]["image"]), ("python", values["singleuser"]["image"])):
        tag, _, digest = image["tag"].partition("@")
        assert tag == __version__
        by_name[name] = f"{image['name']}@{digest}"
    by_name["model-server"] = values["hub"]["extraEnv"]["FERMI_SERVING_IMAGE"]
    for folder in ("extras", "kserve"):
        for image in yaml.safe_load((out / folder / "kustomization.yaml").read_text())["images"]:
            name = next(n for n, o in OFFICIAL.items() if o.repository == image["name"])
            assert by_name.setdefault(name, f"{image['newName']}@{image['digest']}") == \
                f"{image['newName']}@{image['digest']}"
    return by_name


def test_each_image_is_pushed_and_pulled_back_by_digest_as_the_image_built(
        install, registry, engine_client, node):
    out, _db = install
    references = named(out)
    assert sorted(references) == sorted(PUSHED)
    for name, reference in references.items():
        repository, _, digest = reference.partition("@")
        assert repository == f"{registry}/fermi/{name}" and digest.startswith("sha256:")
        # the registry serves the manifest under that digest
        path = repository.split("/", 1)[1]
        answer = httpx.get(f"http://{registry}/v2/{path}/manifests/{digest}",
                           headers={"Accept": MANIFEST_TYPES})
        assert answer.status_code == 200 and answer.headers["Docker-Content-Digest"] == digest
        built = engine_client.images.get(f"{OFFICIAL[name].repository}:{__version__}")
        engine_client.images.remove(f"{repository}:{__version__}")  # the push's local tag
        said = list(node.api.pull(reference, stream=True, decode=True))
        # the engine read the manifest from the registry: it reports each layer it names
        assert said and not [c for c in said if c.get("error")], said
        pulled = node.images.get(reference)
        assert pulled.id == built.id
        assert pulled.labels["org.fermi.image"] == name
        assert pulled.labels["org.fermi.source"] == built.labels["org.fermi.source"]


def test_the_chart_overlay_sets_only_keys_of_the_chart(install):
    out, _db = install
    values = yaml.safe_load((out / "values.yaml").read_text())

    def keys(value, path=""):
        if not isinstance(value, dict) or path.endswith("extraEnv"):
            return {path}
        found = set()
        for key, item in value.items():
            star = "*" if path == "hub.extraFiles" else key
            found |= keys(item, f"{path}.{star}" if path else star)
        return found

    assert keys(values) == CHART_KEYS
    assert set(values["hub"]["extraEnv"]) == {"FERMI_SERVING_IMAGE", "FERMI_CATALOG"}


def test_the_catalogue_pins_the_pushed_images_in_the_seed_and_the_database(install, registry):
    out, db_url = install
    references = named(out)
    values = yaml.safe_load((out / "values.yaml").read_text())
    (catalog_file,) = values["hub"]["extraFiles"].values()
    assert catalog_file["mountPath"] == values["hub"]["extraEnv"]["FERMI_CATALOG"]
    seeded = Catalog.model_validate(yaml.safe_load(catalog_file["stringData"]))
    stored = CatalogStore(make_session_factory(db_url))
    for catalog in (seeded, stored.snapshot()[0]):
        images = {image.slug: image for image in catalog.images}
        python = images["python-local"]
        assert f"{python.reference}@{python.versions[0].digest}" == references["python"]
        assert python.versions[0].tag == __version__
        assert python.versions[0].labels["framework"] == "scikit-learn"  # the seed's, kept
        # not pushed: still the name the build gives it
        assert images["pytorch"].reference == OFFICIAL["pytorch"].repository


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (its kustomize) is not installed")
def test_kustomize_renders_the_manifests_with_the_pushed_digests(install):
    out, _db = install
    references = named(out)
    for folder, name in (("extras", "router"), ("kserve", "model-server")):
        rendered = subprocess.run(["kubectl", "kustomize", str(out / folder)], check=True,
                                  capture_output=True, text=True).stdout
        images = [line.split("image:")[1].strip() for line in rendered.splitlines()
                  if line.strip().startswith("image:")]
        assert images == [references[name]], rendered


def test_refusals_say_what_to_do(engine, engine_client, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("FERMI_CONTAINER_ENGINE", engine.url)
    status, _out, err = fermi("images", "push", "--registry", f"{registry}/fermi", "router",
                              "--out", str(tmp_path), "--data-dir", str(tmp_path))
    assert status == 1 and "--insecure" in err and registry in err
    if digest_of(engine_client, f"{OFFICIAL['pytorch'].repository}:{__version__}") is None:
        status, _out, err = fermi("images", "push", "--registry", f"{registry}/fermi", "pytorch",
                                  "--out", str(tmp_path), "--data-dir", str(tmp_path))
        assert status == 1 and "`fermi images build pytorch`" in err
    status, _out, err = fermi("images", "push", "--registry", "fermi", "--out", str(tmp_path))
    assert status == 2 and "HOST[:PORT]/PREFIX" in err
