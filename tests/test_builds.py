"""Custom images from a Dockerfile: a real builder or a clear refusal, never a pretend build."""

from __future__ import annotations

import pytest

from fermi_extension.catalog.builds import detect_builder

pytestmark = pytest.mark.hub

BUILD = {"slug": "custom-torch", "dockerfile": "FROM python:3.11\n",
         "reference": "registry.example.org/team/custom-torch:1"}


def test_builds_are_for_admins_and_refused_clearly_without_a_builder(admin, alice):
    refused = alice.api("POST", "catalog/builds", json=BUILD)
    assert refused.status_code == 403
    bad = admin.api("POST", "catalog/builds", json={**BUILD, "reference": "Not A Ref"})
    assert bad.status_code == 400 and "reference" in bad.json()["message"]
    if detect_builder() is not None:
        pytest.skip("this machine has an image builder; the refusal applies where none is")
    response = admin.api("POST", "catalog/builds", json=BUILD)
    assert response.status_code == 422
    assert "No image builder is installed" in response.json()["message"]
    assert admin.api("GET", "catalog/builds/anything").status_code == 404
