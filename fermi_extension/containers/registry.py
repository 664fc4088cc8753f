"""Custom images: pulled from a registry through the engine, inspected, checked for what a dev
server and a job need, and pinned by digest in the catalogue.

The check runs the image itself, once, in a throwaway container with no network and small
limits (``check``): a label or a file list could claim what the image does not have, while a
real ``import papermill`` cannot. Nothing is pinned unless the check passes, so a user never
picks a version that cannot start.

The digest pinned is the registry's own (the one another machine pulling ``repo@digest`` gets):
podman lists every digest an image is known by under every name it has, so when an image is
already on the machine under another manifest (one pushed from here, say) the registry is
asked which of them it serves.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from ..errors import NotFound, Unprocessable

# what job containers run (backends/local/container_jobs.py runs the entry point with this
# interpreter) and what the dev servers' spawner starts
JOB_PYTHON = "/opt/fermi/bin/python"
SINGLEUSER = "jupyterhub-singleuser"
MODULES = ("papermill", "ipykernel", "fermi_extension.jobs.entry")
INSTALL_HINT = {
    "papermill": "pip install papermill",
    "ipykernel": "pip install ipykernel",
    "fermi_extension.jobs.entry": "pip install fermi-cluster",
    SINGLEUSER: "pip install jupyterhub",
}
CHECK_SECONDS = 120

# Finds the interpreter (the jobs' one first), then imports each module for real; sh only,
# since the image may have no Python at all.
_SCRIPT = r"""
echo "singleuser=$(command -v jupyterhub-singleuser || true)"
py=""
for candidate in {job_python} python3 python; do
  found=$(command -v "$candidate" 2>/dev/null) && {{ py=$found; break; }}
done
echo "python=$py"
[ -n "$py" ] && "$py" -c "$FERMI_CHECK" {modules}
exit 0
"""
_IMPORTS = r"""
import importlib, json, platform, sys
result = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        result[name] = None
    except BaseException as error:
        result[name] = "%s: %s" % (type(error).__name__, error)
print("modules=" + json.dumps(result))
print("version=" + platform.python_version())
"""


@dataclass
class Requirements:
    """What the check found in an image."""

    python: str = ""  # the interpreter found ("" none)
    python_version: str = ""
    singleuser: str = ""
    modules: dict[str, str | None] = field(default_factory=dict)  # name -> None | import error
    failure: str = ""  # the check itself could not run

    @property
    def missing(self) -> list[str]:
        """Each missing part, as the admin reads it, with how to add it."""
        if self.failure:
            return [self.failure]
        missing = []
        if not self.singleuser:
            missing.append(f"{SINGLEUSER} on the PATH (dev servers run it; "
                           f"`{INSTALL_HINT[SINGLEUSER]}`)")
        if not self.python:
            missing.append("a Python interpreter (python3 on the PATH)")
        elif self.python != JOB_PYTHON:
            missing.append(f"{JOB_PYTHON}, the interpreter job containers run (found "
                           f"{self.python}: add `RUN mkdir -p /opt/fermi/bin && ln -s "
                           f"{self.python} {JOB_PYTHON}`)")
        for name in MODULES:
            if not self.python:
                break
            error = self.modules.get(name, "not checked")
            if error is not None:
                missing.append(f"Python module {name} ({error.splitlines()[0][:200]}; "
                               f"`{INSTALL_HINT[name]}`)")
        return missing


def parse_check(output: str) -> Requirements:
    found = Requirements()
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "singleuser":
            found.singleuser = value.strip()
        elif key == "python":
            found.python = value.strip()
        elif key == "version":
            found.python_version = value.strip()
        elif key == "modules":
            try:
                found.modules = json.loads(value)
            except ValueError:
                pass
    if found.python and not found.modules:
        found.failure = (f"{found.python} could not run the check: "
                         f"{output.strip()[-500:] or 'no output'}")
    return found


def check(runtime, image: str, timeout: float = CHECK_SECONDS) -> Requirements:
    """Run ``image`` once with no network, 1 CPU, 512 MiB, 128 processes, and report what it
    has; the container is removed afterwards whatever happened."""
    from .runtime import KIND, ContainerRequest, Limits

    name = f"fermi-check-{uuid.uuid4().hex[:12]}"
    script = _SCRIPT.format(job_python=JOB_PYTHON, modules=" ".join(MODULES))
    try:
        container = runtime.run(ContainerRequest(
            name=name, image=image, command=["/bin/sh", "-c", script],
            limits=Limits(cpu=1, memory=512 * 2**20, pids=128), labels={KIND: "check"},
            env={"FERMI_CHECK": _IMPORTS}, network="none"))
    except Exception as error:  # noqa: BLE001 - e.g. no /bin/sh in the image
        return Requirements(failure=f"a container could not be started from it ({error}); "
                                    "the image needs /bin/sh")
    try:
        try:
            state = container.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - a read timeout of the engine's API
            return Requirements(failure=f"the check did not finish in {timeout:.0f} s")
        output = container.logs().decode(errors="replace")
        if int(state.get("StatusCode", 0)) == 137:
            return Requirements(failure="the check ran out of its 512 MiB of memory")
        return parse_check(output)
    finally:
        runtime.remove(name)


# -- pulling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled:
    repository: str
    tag: str
    digest: str
    size: int
    architecture: str
    labels: dict[str, str]

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


def _normalized(repository: str) -> str:
    """Docker Hub's short names as the engine lists them (``python`` → docker.io/library/…)."""
    first, slash, rest = repository.partition("/")
    if not slash:
        return f"docker.io/library/{repository}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{repository}"
    return repository


def pull_error(reference: str, message: str) -> Exception:
    """The registry's own words, with what to do about them."""
    lowered = message.lower()
    if "manifest unknown" in lowered or "name unknown" in lowered or "not found" in lowered:
        return NotFound(f"The registry has no {reference}: {message}. Check the image's "
                        "reference and the tag.")
    hint = "Check the reference, and that this machine reaches the registry."
    if "http response to https client" in lowered or "certificate" in lowered:
        hint = ("The registry speaks plain HTTP or has a certificate this machine does not "
                "trust: list it in $FERMI_INSECURE_REGISTRIES (host:port) and restart "
                "`fermi up`, or give it a trusted certificate.")
    elif any(w in lowered for w in ("unauthorized", "authentication required", "denied")):
        hint = ("The registry wants credentials: log the engine in to it (`podman login` or "
                "`docker login` as the account that runs the platform) and pull again.")
    return Unprocessable(f"Pulling {reference} failed: {message}. {hint}")


def _pull_stream(client, name: str, tag: str | None = None) -> tuple[list[dict], str | None]:
    """Pull through the engine; the chunks it sent and its error, if any."""
    import docker.errors

    try:
        chunks = list(client.api.pull(name, tag=tag, stream=True, decode=True))
    except docker.errors.APIError as error:
        return [], str(error.explanation or error)
    errors = [c["error"] for c in chunks if c.get("error")]
    return chunks, (errors[-1].strip() if errors else None)


def registry_digest(client, repository: str, tag: str, chunks: list[dict]) -> str:
    """The digest the registry serves ``repository:tag`` by."""
    for chunk in chunks:  # Docker says it in the pull's output
        said = re.search(r"Digest: (sha256:[0-9a-f]{64})", str(chunk.get("status", "")))
        if said:
            return said.group(1)
    image = client.images.get(f"{repository}:{tag}")
    wanted = _normalized(repository)
    candidates = []
    for repo_digest in image.attrs.get("RepoDigests") or []:
        name, _, digest = repo_digest.partition("@")
        if _normalized(name) == wanted and digest not in candidates:
            candidates.append(digest)
    if len(candidates) == 1:
        return candidates[0]
    for digest in candidates:  # only the registry's own manifest pulls by digest
        _chunks, error = _pull_stream(client, f"{repository}@{digest}")
        if error is None:
            return digest
    raise Unprocessable(f"The engine pulled {repository}:{tag} but names no digest of it the "
                        "registry serves; pull it again.")


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return str(size)


def pull(client, repository: str, tag: str) -> Pulled:
    """Pull ``repository:tag`` through the engine and inspect it."""
    reference = f"{repository}:{tag}"
    chunks, error = _pull_stream(client, repository, tag)
    if error:
        raise pull_error(reference, error)
    digest = registry_digest(client, repository, tag, chunks)
    return inspect(client, repository, tag, digest)


def inspect(client, repository: str, tag: str, digest: str) -> Pulled:
    attrs = client.images.get(f"{repository}@{digest}").attrs
    labels = {str(k): str(v)[:500] for k, v in ((attrs.get("Config") or {}).get("Labels")
                                                 or {}).items()}
    return Pulled(repository, tag, digest, int(attrs.get("Size") or 0),
                  str(attrs.get("Architecture") or ""), labels)


def version_labels(pulled: Pulled, found: Requirements) -> dict[str, str]:
    """What the catalogue shows of a version: the image's own labels, its Python, its
    architecture and size."""
    labels = dict(list(pulled.labels.items())[:40])
    if found.python_version:
        labels["python"] = ".".join(found.python_version.split(".")[:2])
    if pulled.architecture:
        labels["architecture"] = pulled.architecture
    labels["size"] = human_size(pulled.size)
    return labels


def refuse_unless_complete(reference: str, found: Requirements) -> None:
    missing = found.missing
    if missing:
        raise Unprocessable(
            f"{reference} lacks what dev servers and jobs need, so it was not added: "
            + "; ".join(missing) + ". Add these to the image (e.g. `RUN pip install jupyterhub "
            "papermill ipykernel fermi-cluster` in its Dockerfile), push it and pull again.")


def pin(store, caller, slug: str, repository: str, tag: str, digest: str,
        labels: dict[str, str]) -> tuple:
    """Pin ``repository:tag`` at ``digest`` as the first (default) version of the catalogue
    image ``slug``, as ``caller`` (an admin; audited as every catalogue change is)."""
    from ..catalog.service import ANY, CatalogEditor
    from ..errors import Conflict

    editor = CatalogEditor(store, caller)
    image = store.get("images", slug)
    if image.reference != repository:
        raise Conflict(f"Image {slug!r} has reference {image.reference!r}, not {repository!r}: "
                       "its versions are tags of its reference. Change its reference first.")
    versions = [v.model_dump(mode="json") for v in image.versions if v.tag != tag]
    versions.insert(0, {"tag": tag, "digest": digest, "labels": labels})
    return editor.update("images", slug, {"versions": versions}, expected=ANY)
