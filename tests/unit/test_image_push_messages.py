"""What `fermi images push` says when the registry argument or the registry itself is wrong:
the fix, not only the failure (the push itself runs for real in
tests/containers/test_image_push.py)."""

from __future__ import annotations

import pytest

from fermi_extension.containers.push import PushFailed, check_registry, push_error


@pytest.mark.parametrize("registry", ["registry.example.org/fermi", "127.0.0.1:5000/fermi",
                                      "localhost:5000", "docker.io/team/fermi/"])
def test_a_registry_with_its_host_is_taken(registry):
    assert check_registry(registry) == registry.rstrip("/")


@pytest.mark.parametrize("registry, says", [
    ("fermi", "must start with the registry's host"),  # would go to Docker Hub's fermi/…
    ("team/fermi", "must start with the registry's host"),
    ("registry.example.org/Fermi", "must be lowercase"),
    ("registry.example.org:http/fermi", r"is not host\[:port\]"),
])
def test_a_registry_without_a_host_or_with_a_bad_path_is_refused(registry, says):
    with pytest.raises(PushFailed, match=says):
        check_registry(registry)


def test_a_refusal_names_the_fix():
    target = "registry.example.org/fermi/hub:0.1.0"
    plain = push_error(target, "http: server gave HTTP response to HTTPS client", insecure=False)
    assert "--insecure" in plain and target in plain
    # with --insecure given already, it is not suggested again
    assert "--insecure" not in push_error(target, "x509: certificate signed by unknown "
                                                  "authority", insecure=True)
    denied = push_error(target, "unauthorized: authentication required", insecure=False)
    assert "podman login registry.example.org" in denied
