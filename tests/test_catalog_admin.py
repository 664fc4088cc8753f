"""Admins edit the catalogue while the platform runs (real hub, real control plane): the next read
and the next job submit see a change at once; non-admins are refused; conflicts, bad input and
unsafe deletions answer 4xx and write nothing; every change has a revision and an audit record;
export/import round-trips; the admin page works with the hub login cookie and the XSRF token.

The session platform is shared: every test uses its own slugs and leaves the seeded items
(cpu-small, python-local, gpu-a100-1, the cpu pool) as they are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.hub

FERMI = [sys.executable, "-m", "fermi_extension.cli"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def new_image(slug: str, **fields) -> dict:
    return {"slug": slug, "name": f"Test image {slug}", "kind": "custom",
            "reference": "registry.example.com:5000/team/trainer",
            "versions": [{"tag": "v1", "labels": {"framework": "pytorch"}}], **fields}


def new_gpu_profile(slug: str, **fields) -> dict:
    return {"slug": slug, "name": f"Test GPU {slug}", "cpu": 8, "memory": "64Gi", "gpu": 2,
            "pool": "gpu-a100", "price_per_hour": 5.0, **fields}


def catalog_version(admin) -> str:
    response = admin.api("GET", "catalog")
    assert response.status_code == 200, response.text
    return response.json()["version"]


def audit_rows(platform, target: str) -> list[tuple[str, str, str]]:
    engine = create_engine(f"sqlite:///{platform.data / 'fermi.sqlite'}")
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(
                "SELECT actor, action, target_kind FROM audit_events WHERE target_id = :t "
                "ORDER BY id"), {"t": target})]
    finally:
        engine.dispose()


def fermi(platform, *args: str, token: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FERMI, "--url", platform.url, *args], capture_output=True, text=True,
                          env={**os.environ, "FERMI_TOKEN": token}, timeout=60)


def test_admin_creates_a_gpu_profile_and_an_image_and_everyone_sees_them_at_once(
        admin, alice, tiny_notebook):
    profile, image = unique("gpu-t"), unique("img-t")
    before = alice.api("POST", "jobs", json={"notebook": tiny_notebook(), "profile": profile})
    assert before.status_code == 400 and "Unknown profile" in before.json()["message"]

    created = admin.api("POST", "catalog/profiles", json=new_gpu_profile(profile))
    assert created.status_code == 201, created.text
    assert created.json()["revision"] == 1 and created.headers["ETag"] == '"1"'
    assert admin.api("POST", "catalog/images", json=new_image(image)).status_code == 201

    offered = {p["slug"]: p for p in alice.api("GET", "catalog/profiles").json()["profiles"]}
    assert offered[profile]["gpu"] == 2 and offered[profile]["revision"] == 1
    assert offered[profile]["available"] is False  # this machine has no GPU, and says so
    images = {i["slug"]: i for i in alice.api("GET", "catalog/images").json()["images"]}
    assert images[image]["reference"] == "registry.example.com:5000/team/trainer"
    one = alice.api("GET", f"catalog/images/{image}")
    assert one.status_code == 200 and one.headers["ETag"] == '"1"'

    # the next job submit resolves the new profile without a restart (and refuses it here: no GPU)
    after = alice.api("POST", "jobs", json={"notebook": tiny_notebook(), "profile": profile})
    assert after.status_code == 422 and "no GPU" in after.json()["message"]


def test_non_admins_cannot_change_the_catalogue_and_nothing_is_written(admin, alice):
    slug = unique("img-na")
    assert admin.api("POST", "catalog/images", json=new_image(slug)).status_code == 201
    version = catalog_version(admin)
    attempts = [
        ("POST", "catalog/images", {"json": new_image(unique("img-x"))}),
        ("POST", "catalog/profiles", {"json": new_gpu_profile(unique("gpu-x"))}),
        ("POST", "catalog/pools", {"json": {"slug": unique("pool-x"), "name": "X"}}),
        ("PATCH", f"catalog/images/{slug}", {"json": {"name": "mine now", "revision": 1}}),
        ("DELETE", f"catalog/images/{slug}", {"headers": {"If-Match": '"1"'}}),
        ("POST", f"catalog/images/{slug}/revert", {"json": {"revision": 1},
                                                   "headers": {"If-Match": '"1"'}}),
        ("PUT", "catalog", {"json": {"images": [], "profiles": [], "pools": []}}),
        ("GET", "catalog", {}),
        ("GET", f"catalog/images/{slug}/history", {}),
    ]
    for method, path, kwargs in attempts:
        response = alice.api(method, path, **kwargs)
        assert response.status_code == 403, (method, path, response.text)
        assert "Only admins" in response.json()["message"]
    assert catalog_version(admin) == version
    assert alice.api("GET", f"catalog/images/{slug}").json()["name"] == f"Test image {slug}"


def test_duplicate_slug_is_a_conflict(admin):
    slug = unique("pool-d")
    body = {"slug": slug, "name": "Dup", "max_running_jobs": 1}
    assert admin.api("POST", "catalog/pools", json=body).status_code == 201
    again = admin.api("POST", "catalog/pools", json=body)
    assert again.status_code == 409 and f"already a pool '{slug}'" in again.json()["message"]
    assert admin.api("POST", "catalog/profiles", json={"slug": "cpu-small", "name": "x"}
                     ).status_code == 409


def test_stale_or_missing_revision_is_refused_and_nothing_is_written(platform, admin):
    slug = unique("img-c")
    admin.api("POST", "catalog/images", json=new_image(slug))
    first = admin.api("PATCH", f"catalog/images/{slug}", json={"description": "v2"},
                      headers={"If-Match": '"1"'})
    assert first.status_code == 200 and first.json()["revision"] == 2
    assert first.headers["ETag"] == '"2"'
    stale = admin.api("PATCH", f"catalog/images/{slug}", json={"description": "v3"},
                      headers={"If-Match": '"1"'})
    assert stale.status_code == 409, stale.text
    message = stale.json()["message"]
    assert "changed by admin at" in message
    assert "since you loaded it; reload and apply your change again" in message
    in_body = admin.api("PATCH", f"catalog/images/{slug}",
                        json={"description": "v3", "revision": 1})
    assert in_body.status_code == 409
    missing = admin.api("PATCH", f"catalog/images/{slug}", json={"description": "v3"})
    assert missing.status_code == 428 and "If-Match" in missing.json()["message"]
    stale_delete = admin.api("DELETE", f"catalog/images/{slug}", headers={"If-Match": '"1"'})
    assert stale_delete.status_code == 409
    current = admin.api("GET", f"catalog/images/{slug}").json()
    assert (current["description"], current["revision"]) == ("v2", 2)
    assert [a for _, a, _ in audit_rows(platform, slug)] == ["create", "update"]


@pytest.mark.parametrize(("kind", "body", "phrases"), [
    ("images", lambda s: new_image(s, reference="Registry.example.com/Team/Trainer"),
     ["reference", "'Team' must be lowercase"]),
    ("images", lambda s: new_image(s, reference="quay.io/x:tag:bad"), ["reference"]),
    ("profiles", lambda s: new_gpu_profile(s, gpu=16),
     ["gpu", "asks for 16 GPUs but pool 'gpu-a100' has 8"]),
    ("profiles", lambda s: new_gpu_profile(s, pool="tpu-v5"), ["pool", "'tpu-v5'"]),
    ("profiles", lambda s: new_gpu_profile(s, memory="64GB"), ["memory"]),
    ("profiles", lambda s: new_gpu_profile(s, default=True),
     ["only one profile can be the default"]),
])
def test_invalid_items_answer_400_naming_the_field_and_write_nothing(admin, kind, body, phrases):
    version = catalog_version(admin)
    slug = unique("bad")
    response = admin.api("POST", f"catalog/{kind}", json=body(slug))
    assert response.status_code == 400, response.text
    for phrase in phrases:
        assert phrase in response.json()["message"]
    assert admin.api("GET", f"catalog/{kind}/{slug}").status_code == 404
    assert catalog_version(admin) == version


def test_patch_that_breaks_the_catalogue_is_refused(admin):
    slug = unique("gpu-p")
    admin.api("POST", "catalog/profiles", json=new_gpu_profile(slug))
    too_many = admin.api("PATCH", f"catalog/profiles/{slug}", json={"gpu": 9},
                         headers={"If-Match": '"1"'})
    assert too_many.status_code == 400 and "asks for 9 GPUs" in too_many.json()["message"]
    renamed = admin.api("PATCH", f"catalog/profiles/{slug}", json={"slug": "other"},
                        headers={"If-Match": '"1"'})
    assert renamed.status_code == 400 and "cannot be renamed" in renamed.json()["message"]
    assert admin.api("GET", f"catalog/profiles/{slug}").json()["revision"] == 1


def test_history_diff_and_revert(platform, admin):
    slug = unique("img-h")
    admin.api("POST", "catalog/images", json=new_image(slug))
    changed = admin.api("PATCH", f"catalog/images/{slug}", headers={"If-Match": '"1"'},
                        json={"deprecated": True, "redirect_message": "use python-local"})
    assert changed.status_code == 200, changed.text
    history = admin.api("GET", f"catalog/images/{slug}/history").json()
    assert history["current_revision"] == 2
    assert [(r["revision"], r["action"], r["by"]) for r in history["revisions"]] == \
        [(2, "update", "admin"), (1, "create", "admin")]
    detail = admin.api("GET", f"catalog/images/{slug}/history/2").json()
    assert detail["previous_revision"] == 1
    assert detail["diff"] == {"deprecated": [False, True],
                              "redirect_message": [None, "use python-local"]}
    assert admin.api("GET", f"catalog/images/{slug}/history/7").status_code == 404

    stale = admin.api("POST", f"catalog/images/{slug}/revert", json={"revision": 1},
                      headers={"If-Match": '"1"'})
    assert stale.status_code == 409
    reverted = admin.api("POST", f"catalog/images/{slug}/revert",
                         json={"revision": 1, "current_revision": 2})
    assert reverted.status_code == 200, reverted.text
    assert (reverted.json()["deprecated"], reverted.json()["revision"]) == (False, 3)
    assert admin.api("GET", f"catalog/images/{slug}/history/3").json()["action"] == "revert"

    deleted = admin.api("DELETE", f"catalog/images/{slug}", headers={"If-Match": '"3"'})
    assert deleted.status_code == 200 and deleted.json()["revision"] == 4
    assert admin.api("GET", f"catalog/images/{slug}").status_code == 404
    restored = admin.api("POST", f"catalog/images/{slug}/revert", json={"revision": 3},
                         headers={"If-Match": '"4"'})
    assert restored.status_code == 200 and restored.json()["revision"] == 5
    assert [a for _, a, _ in audit_rows(platform, slug)] == \
        ["create", "update", "revert", "delete", "revert"]


def test_unsafe_deletions_are_refused_with_the_reason(admin, alice):
    default = admin.api("DELETE", "catalog/profiles/cpu-small", headers={"If-Match": "*"})
    assert default.status_code == 409 and "default profile" in default.json()["message"]
    pool = admin.api("DELETE", "catalog/pools/gpu-a100", headers={"If-Match": "*"})
    assert pool.status_code == 409 and "gpu-a100-1" in pool.json()["message"]
    profiles = [p["slug"] for p in alice.api("GET", "catalog/profiles").json()["profiles"]]
    assert "cpu-small" in profiles and "gpu-a100-1" in profiles


def test_export_import_round_trip(platform, admin, tmp_path):
    exported = tmp_path / "catalog.yaml"
    out = fermi(platform, "catalog", "export", "-o", str(exported), token=admin.token)
    assert out.returncode == 0, out.stderr
    raw = yaml.safe_load(exported.read_text())
    assert list(raw) == ["pools", "images", "profiles"]
    assert "cpu-small" in [p["slug"] for p in raw["profiles"]]

    version = catalog_version(admin)
    dry = fermi(platform, "catalog", "import", str(exported), "--dry-run", token=admin.token)
    assert dry.returncode == 0, dry.stderr
    assert "No changes" in dry.stdout
    assert catalog_version(admin) == version

    pool = unique("pool-i")
    raw["pools"].append({"slug": pool, "name": "Imported pool", "max_running_jobs": 3})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    dry = fermi(platform, "catalog", "import", str(changed), "--dry-run", token=admin.token)
    assert dry.returncode == 0 and f"pools: created {pool}" in dry.stdout, dry.stdout
    assert catalog_version(admin) == version
    applied = fermi(platform, "catalog", "import", str(changed), token=admin.token)
    assert applied.returncode == 0 and "Imported" in applied.stdout, applied.stderr
    assert admin.api("GET", f"catalog/pools/{pool}").json()["max_running_jobs"] == 3
    history = admin.api("GET", f"catalog/pools/{pool}/history").json()
    assert [r["action"] for r in history["revisions"]] == ["import"]
    assert ("admin", "import", "catalog") in audit_rows(platform, "catalog")

    raw["profiles"][0]["memory"] = "lots"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    refused = fermi(platform, "catalog", "import", str(bad), token=admin.token)
    assert refused.returncode == 1 and "memory" in refused.stderr and str(bad) in refused.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("images: [\n  - slug: x\nprofiles: {")
    refused = fermi(platform, "catalog", "import", str(broken), token=admin.token)
    assert refused.returncode == 1 and "not valid YAML" in refused.stderr
    assert admin.api("GET", f"catalog/pools/{pool}").status_code == 200

    # `fermi catalog images|profiles` still work
    listed = fermi(platform, "catalog", "profiles", token=admin.token)
    assert listed.returncode == 0 and "cpu-small" in listed.stdout
    put = admin.api("PUT", "catalog", content=b"images: [", params={"dry_run": "true"},
                    headers={"Content-Type": "application/yaml"})
    assert put.status_code == 400 and "not valid YAML" in put.json()["message"]


def test_admin_page_works_with_the_hub_login_and_the_xsrf_token(platform, admin, alice):
    slug = unique("img-page")
    admin.api("POST", "catalog/images", json=new_image(slug))
    password = (platform.data / "admin-password").read_text().strip()
    with httpx.Client(base_url=platform.url, follow_redirects=True, timeout=30) as browser:
        browser.get("/hub/login")
        browser.post("/hub/login", data={"username": "admin", "password": password,
                                         "_xsrf": browser.cookies.get("_xsrf", "")})
        page = browser.get("/services/fermi/admin/catalog")
        assert page.status_code == 200, page.text[:500]
        assert 'id="catalog-admin"' in page.text and "admin-catalog.js" in page.text
        assert "Catalogue" in page.text and "目录管理" not in page.text
        script = page.text.split('<script src="')[1].split('"')[0]
        js = browser.get(script)
        assert js.status_code == 200 and "X-XSRFToken" in js.text
        css = browser.get(page.text.split('<link rel="stylesheet" href="')[1].split('"')[0])
        assert css.status_code == 200
        token = browser.cookies.get("_xsrf", path="/services/fermi/")
        assert token and f'content="{token}"' in page.text

        path = f"/services/fermi/api/catalog/images/{slug}"
        forged = browser.patch(path, json={"description": "forged"}, headers={"If-Match": '"1"'})
        assert forged.status_code in (401, 403), forged.text
        patched = browser.patch(path, json={"description": "from the page"},
                                headers={"If-Match": '"1"', "X-XSRFToken": token})
        assert patched.status_code == 200, patched.text
        assert patched.json()["updated_by"] == "admin"
        listed = browser.get("/services/fermi/api/catalog",
                             headers={"X-XSRFToken": token, "Sec-Fetch-Mode": "cors"})
        assert listed.status_code == 200 and listed.json()["version"]
    assert admin.api("GET", f"catalog/images/{slug}").json()["description"] == "from the page"

    refused = alice.http.get("/services/fermi/admin/catalog")
    assert refused.status_code == 403 and "admins only" in refused.text


def test_openapi_lists_the_editing_operations(platform):
    doc = httpx.get(f"{platform.url}/services/fermi/api/openapi.json").json()
    paths = doc["paths"]
    for path, verb in (("/catalog", "get"), ("/catalog", "put"),
                       ("/catalog/images", "post"), ("/catalog/profiles", "post"),
                       ("/catalog/pools", "post"), ("/catalog/profiles/{slug}", "patch"),
                       ("/catalog/images/{slug}", "delete"),
                       ("/catalog/pools/{slug}/history", "get"),
                       ("/catalog/images/{slug}/history/{revision}", "get"),
                       ("/catalog/profiles/{slug}/revert", "post")):
        assert verb in paths[path], (path, verb)
    patch = paths["/catalog/profiles/{slug}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProfileUpdate")
    assert "403" in patch["responses"]
    assert "revision" in doc["components"]["schemas"]["ImageItem"]["properties"]
