"""The official images: built from ``images/NAME/Dockerfile`` by the engine, pinned by digest.

No registry is reachable on some sites (and on this kind of machine), so nothing here pulls a
base image: the default base is made from Debian's packages with ``mmdebstrap`` and imported
into the engine (``localhost/fermi/base:bookworm``, its tar kept in a cache folder, ~25 s once).
A site with a registry passes its own base (``--base``), any Debian-like image with python3 and
python3-venv.

Python packages enter an image from a wheel folder in its build context, fetched on the host
with the site's own pip settings (index, extra indexes, CA bundle, as ``pip config`` has them)
for the image's Python, so the build itself needs neither network nor credentials, and a
second build reuses the folder.

An image built here has a manifest digest in the engine (``RepoDigests``); the catalogue's
version records it, and every container starts from ``reference@digest`` (``spec.runtime_spec``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..paths import REPOSITORY, shipped

BASE = "localhost/fermi/base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# the Python of the base (Debian bookworm): wheels are chosen for it, not for the host's
IMAGE_PYTHON = "3.11.2"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "linux_x86_64")


@dataclass(frozen=True)
class Official:
    name: str  # the folder under images/
    slug: str | None  # the catalogue image it is a version of (None: a platform image)
    repository: str
    base: str  # the default BASE build argument
    packages: tuple[str, ...]  # what the wheel folder must hold ("fermi" = this Fermi's wheel)


OFFICIAL = {
    # the seed catalogue's CPU image kept its first slug: jobs and servers name it
    "python": Official("python", "python-local", "localhost/fermi/python", BASE, ("fermi",)),
    "pytorch": Official("pytorch", "pytorch", "localhost/fermi/pytorch",
                        "localhost/fermi/python:latest", ("torch",)),
    # the platform's own images: thin layers on the python image, no catalogue entry
    "hub": Official("hub", None, "localhost/fermi/hub", "localhost/fermi/python:latest",
                    ("psycopg[binary]>=3.1",)),
    "router": Official("router", None, "localhost/fermi/router",
                       "localhost/fermi/python:latest", ()),
    "model-server": Official("model-server", None, "localhost/fermi/model-server",
                             "localhost/fermi/python:latest", ()),
}
# what `fermi images build` builds without names (pytorch is big: only when named)
PLATFORM = ("python", "hub", "router", "model-server")


@dataclass(frozen=True)
class Built:
    name: str
    slug: str | None
    repository: str
    tag: str
    digest: str  # sha256:… of the image's manifest

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


class BuildFailed(RuntimeError):
    pass


Log = Callable[[str], None]


def dockerfiles() -> Path:
    return shipped("images")


def digest_of(client, reference: str) -> str | None:
    """The manifest digest the engine knows ``reference`` by (None: not there)."""
    import docker.errors

    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    for repo_digest in image.attrs.get("RepoDigests") or []:
        _, _, digest = repo_digest.partition("@")
        if digest:
            return digest
    return image.id  # an engine that records no manifest digest: the config digest


def make_base(client, cache: Path, log: Log = print, reference: str = BASE) -> str:
    """``reference`` made from Debian's packages (mmdebstrap), unless the engine has it."""
    if digest_of(client, reference):
        return reference
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / "base-bookworm.tar"
    if not tar.exists():
        if not shutil.which("mmdebstrap"):
            raise BuildFailed("making the base image needs mmdebstrap (apt-get install mmdebstrap), "
                              "or give a base image from your registry with --base")
        log(f"Making the base image from Debian's packages (mmdebstrap, ~30 s) into {tar} …")
        partial = tar.with_suffix(".partial")
        # --format: mmdebstrap guesses it from the name's end, and ".partial" would make a folder
        result = subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                                 "--format=tar", "--quiet", "bookworm", str(partial)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BuildFailed(f"mmdebstrap failed: {result.stderr.strip()[-2000:]}")
        partial.rename(tar)
    log(f"Importing the base image as {reference} …")
    answer = client.api.import_image_from_file(str(tar))
    image_id = re.search(r"sha256:[0-9a-f]{64}", str(answer))
    if image_id is None:
        raise BuildFailed(f"the engine did not import {tar}: {answer}")
    repository, _, tag = reference.rpartition(":")
    client.images.get(image_id.group(0)).tag(repository, tag)
    return reference


def _pip(*args: str, log: Log) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        log(result.stderr.strip()[-3000:])
    return result


def fermi_wheel(folder: Path, log: Log = print) -> Path:
    """This Fermi as a wheel: built from the source checkout, or the released one from the
    index when installed from a wheel."""
    for old in folder.glob("fermi_cluster-*.whl"):
        old.unlink()
    if (REPOSITORY / "pyproject.toml").exists():
        log("Building Fermi's wheel from the source checkout …")
        result = _pip("wheel", "-q", "--no-deps", "-w", str(folder), str(REPOSITORY), log=log)
    else:
        result = _pip("download", "-q", "--no-deps", "-d", str(folder),
                      f"fermi-cluster=={__version__}", log=log)
    wheels = list(folder.glob("fermi_cluster-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BuildFailed("Fermi's wheel could not be made (see the pip output above)")
    return wheels[0]


_NO_WHEEL = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")


def wheelhouse(folder: Path, requirements: list[str], log: Log = print) -> None:
    """Wheels of ``requirements`` and everything they need, for the image's Python, into
    ``folder``. A requirement published only as source is built into a wheel here first (pure
    Python ones are; anything else belongs in the base image)."""
    folder.mkdir(parents=True, exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for _ in range(10):
        result = _pip("download", "-q", "-d", str(folder), "--find-links", str(folder),
                      "--only-binary=:all:", "--python-version", IMAGE_PYTHON,
                      "--implementation", "cp", "--abi", "cp311", *platform_args,
                      *requirements, log=lambda _text: None)
        if result.returncode == 0:
            return
        missing = _NO_WHEEL.search(result.stderr)
        if missing is None:
            log(result.stderr.strip()[-3000:])
            raise BuildFailed("the image's Python packages could not be fetched (see above)")
        log(f"{missing.group(1)} has no wheel: building one …")
        if _pip("wheel", "-q", "--no-deps", "-w", str(folder), missing.group(1),
                log=log).returncode != 0:
            raise BuildFailed(f"{missing.group(1)} could not be built into a wheel")
    raise BuildFailed("too many packages without wheels")


def source_digest() -> str:
    """A hash of the Fermi that would go into an image: this package's files (and the
    spawner's) as installed, the official Dockerfiles included."""
    import hashlib

    from ..paths import PACKAGE

    digest = hashlib.sha256()
    roots = [PACKAGE, dockerfiles()]
    spawner = PACKAGE.parent / "spawner"
    if spawner.is_dir():
        roots.append(spawner)
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_official(client, name: str, cache: Path, *, base: str | None = None,
                    same_source: bool = False, log: Log = print) -> Built:
    """The official image ``name`` of this Fermi version: the engine's if it has it (with
    ``same_source``, only if built from this very source tree, as the tests want), else built
    now. `fermi images build` rebuilds it whatever the engine has."""
    official = OFFICIAL[name]
    reference = f"{official.repository}:{__version__}"
    digest = digest_of(client, reference)
    if digest:
        labels = client.images.get(reference).labels or {}
        if not same_source or labels.get("org.fermi.source") == source_digest():
            return Built(name, official.slug, official.repository, __version__, digest)
    return build_official(client, name, cache, base=base, log=log)


def build_official(client, name: str, cache: Path, *, base: str | None = None,
                   log: Log = print) -> Built:
    """Build the official image ``name`` with the engine; its digest."""
    official = OFFICIAL.get(name)
    if official is None:
        raise BuildFailed(f"no official image {name!r}; there are: {', '.join(OFFICIAL)}")
    base = base or official.base
    if base == BASE:
        make_base(client, cache, log)
    elif not digest_of(client, base) and base.startswith("localhost/fermi/"):
        dependency = next(o for o in OFFICIAL.values() if base.startswith(o.repository))
        build_official(client, dependency.name, cache, log=log)
    wheels = cache / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = list(official.packages)
    if "fermi" in requirements:
        requirements[requirements.index("fermi")] = str(fermi_wheel(wheels, log))
    if requirements:
        log(f"Fetching the Python packages of {name} for Python {IMAGE_PYTHON} into {wheels} …")
        wheelhouse(wheels, requirements, log)
    tag = __version__
    with tempfile.TemporaryDirectory(prefix=f"fermi-image-{name}-") as context:
        shutil.copy(dockerfiles() / name / "Dockerfile", Path(context) / "Dockerfile")
        shutil.copytree(wheels, Path(context) / "wheels", copy_function=_link_or_copy)
        log(f"Building {official.repository}:{tag} from images/{name}/Dockerfile (BASE={base}) …")
        stream(client.api.build(path=context, tag=f"{official.repository}:{tag}",
                                buildargs={"BASE": base, "SOURCE": source_digest()}, rm=True,
                                decode=True), log)
    client.images.get(f"{official.repository}:{tag}").tag(official.repository, "latest")
    digest = digest_of(client, f"{official.repository}:{tag}")
    log(f"Built {official.repository}:{tag} ({digest})")
    return Built(name, official.slug, official.repository, tag, digest)


def stream(chunks, log: Log) -> None:
    """Show a build's log as the engine sends it; raise with its error."""
    for chunk in chunks:
        if "stream" in chunk:
            text = chunk["stream"].rstrip("\n")
            if text:
                log(text)
        if "error" in chunk:
            raise BuildFailed(chunk["error"].strip())


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def pinned(image, built: Built) -> dict:
    """The change that makes ``built`` the catalogue image's first version (its default): the
    image points at the built repository and gets (or updates) the version ``built.tag`` with
    the digest, keeping the labels that version had."""
    # versions of another repository (the seed's upstream reference) do not name this image
    kept = image.versions if image.reference == built.repository else []
    versions = [v.model_dump(mode="json") for v in kept if v.tag != built.tag]
    labels = next((v.labels for v in image.versions if v.tag == built.tag), {"python": "3.11"})
    versions.insert(0, {"tag": built.tag, "digest": built.digest, "labels": dict(labels)})
    return {"reference": built.repository, "versions": versions}


def record(session_factory, built: Built, by: str = "fermi images build") -> None:
    """Pin ``built`` in the platform database's catalogue (``pinned``), as an audited change."""
    from ..caller import Caller
    from ..catalog.service import ANY, CatalogEditor
    from ..catalog.store import CatalogStore
    from ..errors import NotFound

    if built.slug is None:  # a platform image (hub, router, model-server): not in the catalogue
        return
    store = CatalogStore(session_factory)
    editor = CatalogEditor(store, Caller(by, admin=True))
    try:
        image = store.get("images", built.slug)
    except NotFound:
        raise BuildFailed(f"the catalogue has no image {built.slug!r} to pin the build to") from None
    editor.update("images", built.slug, pinned(image, built), expected=ANY)
