"""The control plane's contract: bad input answers 4xx with a sentence and writes nothing;
nobody reaches another user's jobs; the OpenAPI document describes what is served."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.hub


def job_count(admin) -> int:
    return admin.api("GET", "jobs", params={"limit": 1}).json()["total"]


def bad_requests(nb: dict) -> list[tuple[str, dict | str, int, str]]:
    no_kernel = json.loads(json.dumps(nb))
    del no_kernel["metadata"]["kernelspec"]
    broken = json.loads(json.dumps(nb))
    broken["cells"][0]["cell_type"] = "spreadsheet"
    huge = json.loads(json.dumps(nb))
    huge["cells"][1]["source"] = "# " + "x" * (17 * 1024 * 1024)
    return [
        ("malformed notebook JSON", {"notebook": "{not json"}, 400, "not valid JSON"),
        ("not a notebook", {"notebook": {"hello": 1}}, 400, "not a Jupyter notebook"),
        ("invalid nbformat", {"notebook": broken}, 400, "nbformat"),
        ("no kernelspec", {"notebook": no_kernel}, 400, "kernel"),
        ("unknown parameter", {"notebook": nb, "parameters": {"epochs": 3}}, 400, "Unknown parameter 'epochs'"),
        ("wrong parameter type", {"notebook": nb, "parameters": {"x": "ten"}}, 400, "Parameter 'x' must be of type int"),
        ("unknown image", {"notebook": nb, "image": "tensorflow-99"}, 400, "Unknown image 'tensorflow-99'"),
        ("unknown profile", {"notebook": nb, "profile": "huge"}, 400, "Unknown profile 'huge'"),
        ("non-ASCII name", {"notebook": nb, "name": "训练任务"}, 400, "ASCII"),
        ("name with a slash", {"notebook": nb, "name": "../x"}, 400, "not allowed"),
        ("unknown field", {"notebook": nb, "gpus": 8}, 400, "gpus"),
        ("negative timeout", {"notebook": nb, "timeout_seconds": -1}, 400, "timeout_seconds"),
        ("GPU profile without a GPU", {"notebook": nb, "profile": "gpu-a100-1"}, 422, "no GPU"),
        ("oversized notebook", {"notebook": huge}, 413, "limit"),
        ("body not an object", "[1, 2]", 400, "JSON object"),
    ]


def test_bad_input_answers_4xx_with_a_sentence_and_writes_nothing(admin, alice, tiny_notebook):
    nb = tiny_notebook()
    before = job_count(admin)
    for label, body, status, phrase in bad_requests(nb):
        if isinstance(body, str):
            response = alice.api("POST", "jobs", content=body)
        else:
            response = alice.api("POST", "jobs", json=body)
        assert response.status_code == status, (label, response.text[:300])
        message = response.json()["message"]
        assert phrase in message, (label, message)
    raw = alice.api("POST", "jobs", content=b"{]")
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["message"]
    assert job_count(admin) == before


def test_no_user_reaches_another_users_jobs(platform, alice, bob, tiny_notebook):
    job = alice.wait(alice.submit(tiny_notebook())["id"])
    for method, path in (("GET", ""), ("GET", "/logs"), ("GET", "/output"),
                         ("POST", "/cancel"), ("POST", "/retry")):
        response = bob.api(method, f"jobs/{job['id']}{path}")
        assert response.status_code == 404, (method, path, response.text)
        assert "not yours" in response.json()["message"]
    assert job["id"] not in [j["id"] for j in bob.api("GET", "jobs").json()["jobs"]]
    assert bob.api("GET", "jobs", params={"owner": alice.name}).json()["total"] == 0


def test_requests_without_a_valid_token_are_refused(platform):
    for headers in ({}, {"Authorization": "token not-a-real-token"}):
        for method, path in (("GET", "jobs"), ("POST", "jobs"), ("GET", "catalog/images")):
            response = httpx.request(method, f"{platform.url}/services/fermi/api/{path}",
                                     headers=headers, json={})
            assert response.status_code in (401, 403), (headers, path, response.status_code)
            assert "token" in response.json()["message"]


def test_catalogue_lists_images_and_profiles_with_gpu_availability(alice):
    images = alice.api("GET", "catalog/images").json()["images"]
    assert any(i["slug"] == "python-local" and i["kind"] == "official" for i in images)
    profiles = {p["slug"]: p for p in alice.api("GET", "catalog/profiles").json()["profiles"]}
    assert profiles["cpu-small"]["default"] and profiles["cpu-small"]["available"]
    gpu = profiles["gpu-a100-1"]
    assert gpu["available"] is False and "no GPU" in gpu["unavailable_reason"]
    assert alice.api("GET", "catalog/images/nope").status_code == 404


def test_openapi_document_describes_every_route(platform):
    doc = httpx.get(f"{platform.url}/services/fermi/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path, verb in (("/jobs", "post"), ("/jobs", "get"), ("/jobs/{job_id}", "get"),
                       ("/jobs/{job_id}/logs", "get"), ("/jobs/{job_id}/output", "get"),
                       ("/jobs/{job_id}/cancel", "post"), ("/jobs/{job_id}/retry", "post"),
                       ("/catalog/images", "get"), ("/catalog/profiles", "get")):
        assert verb in doc["paths"][path], (path, verb)
    create = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["$ref"].endswith("/CreateJob")
    assert "notebook" in doc["components"]["schemas"]["CreateJob"]["properties"]


def test_hub_login_cookie_reaches_the_control_plane(platform):
    """A person logs into the hub (NativeAuthenticator, hashed password) and the control plane
    accepts them through the hub's OAuth cookie; cookie-authenticated writes need the XSRF token."""
    password = (platform.data / "admin-password").read_text().strip()
    with httpx.Client(base_url=platform.url, follow_redirects=True, timeout=30) as browser:
        browser.get("/hub/login")
        wrong = browser.post("/hub/login", data={"username": "admin", "password": "nope",
                                                 "_xsrf": browser.cookies.get("_xsrf", "")})
        assert "Invalid" in wrong.text or wrong.status_code in (401, 403)
        browser.post("/hub/login", data={"username": "admin", "password": password,
                                         "_xsrf": browser.cookies.get("_xsrf", "")})
        page = browser.get("/services/fermi/")
        assert page.status_code == 200 and "Signed in as <b>admin</b>" in page.text
        listed = browser.get("/services/fermi/api/jobs")
        assert listed.status_code == 200 and "jobs" in listed.json()
        forged = browser.post("/services/fermi/api/jobs", json={"notebook": {}})
        # without the XSRF token the cookie does not count: a cross-site form cannot submit jobs
        assert forged.status_code in (401, 403)


def test_usage_and_audit_are_recorded_and_scoped(admin, alice, bob, tiny_notebook):
    job = alice.wait(alice.submit(tiny_notebook())["id"])
    assert job["status"] == "succeeded"
    mine = alice.api("GET", "usage").json()
    jobs = [r for r in mine["rows"] if r["kind"] == "job"]
    assert jobs and all(r["user"] == alice.name for r in mine["rows"])
    assert jobs[0]["cost"] == pytest.approx(jobs[0]["seconds"] / 3600 * 0.05, rel=1e-6)
    assert bob.api("GET", "usage").json()["rows"] == []
    assert alice.name in {r["user"] for r in admin.api("GET", "usage").json()["rows"]}
    csv_text = admin.api("GET", "usage", params={"format": "csv"}).text
    assert csv_text.startswith("user,kind,month") and alice.name in csv_text
    trail = alice.api("GET", "audit").json()["events"]
    assert any(e["action"] == "submit" and e["target_id"] == job["id"] for e in trail)
    assert all(e["actor"] == alice.name for e in trail)
    assert admin.api("GET", "audit", params={"actor": alice.name}).json()["events"]
    assert alice.api("GET", "usage", params={"month": "last"}).status_code == 400


def test_an_unknown_api_path_answers_a_json_404_on_the_control_plane_and_the_dev_server(
        platform, alice):
    from tests.test_notebook_panels import start_server

    for method in ("POST", "GET", "DELETE"):
        response = alice.api(method, "sweeps", json={})
        assert response.status_code == 404, (method, response.text[:200])
        assert response.headers["Content-Type"].startswith("application/json")
        assert "openapi.json" in response.json()["message"]
    base = start_server(platform, alice)
    try:
        for method, path in (("POST", "sweeps"), ("GET", "no/such/thing"), ("GET", "")):
            response = alice.http.request(method, f"{base}/{path}", json={})
            assert response.status_code == 404, (method, path, response.text[:200])
            assert response.headers["Content-Type"].startswith("application/json"), (method, path)
            assert "No API route" in response.json()["message"], (method, path)
    finally:
        alice.http.delete(f"/hub/api/users/{alice.name}/server")
