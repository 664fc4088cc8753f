"""Custom images from a Dockerfile: a real builder or a clear refusal, never a pretend build;
pulls need the container engine (tests/containers/test_custom_images.py pulls for real)."""

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


def test_pulling_an_image_without_a_container_engine_is_a_409_saying_why(admin, alice):
    assert alice.api("POST", "catalog/images/python-local/pull",
                     json={"tag": "1"}).status_code == 403
    response = admin.api("POST", "catalog/images/python-local/pull", json={"tag": "1"})
    assert response.status_code == 409, response.text
    message = response.json()["message"]
    assert "Containers are off" in message and "FERMI_CONTAINER_ENGINE=none" in message
