"""Audit completeness: every mutating route of the OpenAPI document, called for real, leaves an
append-only record with who, what, when, from where, before and after.

``STEPS`` walks the routes in an order that makes each call valid (create before change before
delete). A new mutating route without a step fails ``test_every_mutating_route_is_walked``, so
no route can be added without proving it is audited.
"""

from __future__ import annotations

import uuid

import pytest
import yaml

from tests.test_catalog_admin import new_image

pytestmark = pytest.mark.hub

MUTATING = ("post", "put", "patch", "delete")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Walk:
    """State shared by the steps (ids made by earlier ones)."""

    def __init__(self, admin, alice, tiny_notebook, template, tmp_path):
        self.admin, self.alice, self.nb, self.template = admin, alice, tiny_notebook, template
        self.tmp = tmp_path
        self.image, self.pool, self.profile = unique("img-au"), unique("pool-au"), unique("prof-au")
        self.dataset = unique("ds-au")
        self.deployment = unique("dep-au")
        self.model = f"audit-{alice.name}"


def catalog_item(kind: str, slug_attr: str, body):
    def make(w: Walk):
        return w.admin, "POST", f"catalog/{kind}", {"json": body(w)}, kind[:-1], getattr(w, slug_attr)
    return make


def catalog_change(kind: str, slug_attr: str, method: str, suffix: str = ""):
    def make(w: Walk):
        slug = getattr(w, slug_attr)
        current = w.admin.api("GET", f"catalog/{kind}/{slug}").json()["revision"]
        kwargs = {"headers": {"If-Match": f'"{current}"'}}
        if method == "PATCH":
            kwargs["json"] = {"name": f"renamed {slug}"}
        if suffix == "/revert":
            kwargs["json"] = {"revision": 1}
        return w.admin, method, f"catalog/{kind}/{slug}{suffix}", kwargs, kind[:-1], slug
    return make


def catalog_import(w: Walk):
    exported = yaml.safe_load(w.admin.api("GET", "catalog?format=yaml").text)
    exported["pools"] = [*exported["pools"], {"slug": unique("pool-im"), "name": "Imported"}]
    return (w.admin, "PUT", "catalog", {"content": yaml.safe_dump(exported),
                                        "headers": {"Content-Type": "application/yaml"}},
            "catalog", "catalog")


def job_submit(w: Walk):
    return w.alice, "POST", "jobs", {"json": {"notebook": w.nb("import time; time.sleep(30)")}}, "job", None


def job_cancel(w: Walk):
    job = w.alice.api("GET", "jobs?limit=1").json()["jobs"][0]["id"]
    w.cancelled = job
    return w.alice, "POST", f"jobs/{job}/cancel", {}, "job", job


def job_retry(w: Walk):
    return w.alice, "POST", f"jobs/{w.cancelled}/retry", {}, "job", None


def schedule_create(w: Walk):
    return (w.alice, "POST", "schedules", {"json": {"notebook": w.nb(), "cron": "0 3 * * *"}},
            "schedule", None)


def schedule_delete(w: Walk):
    schedule = w.alice.api("GET", "schedules").json()["schedules"][0]["id"]
    return w.alice, "DELETE", f"schedules/{schedule}", {}, "schedule", schedule


def model_share(w: Walk):
    job = w.alice.submit(w.template, parameters={"model_name": w.model})
    assert w.alice.wait(job["id"])["status"] == "succeeded"
    return w.alice, "PATCH", f"models/{w.model}", {"json": {"groups": ["audit"]}}, "model", w.model


def deploy(w: Walk):
    return (w.alice, "POST", "deployments", {"json": {"name": w.deployment, "model": w.model,
                                                      "version": "1"}}, "deployment", w.deployment)


def deployment_update(w: Walk):
    return (w.alice, "PATCH", f"deployments/{w.deployment}", {"json": {"max_replicas": 2}},
            "deployment", w.deployment)


def deployment_delete(w: Walk):
    return w.alice, "DELETE", f"deployments/{w.deployment}", {}, "deployment", w.deployment


def quota_put(w: Walk):
    return (w.admin, "PUT", f"quotas/user/{w.alice.name}", {"json": {"running_jobs": 50}},
            "quota-user", w.alice.name)


def quota_delete(w: Walk):
    return w.admin, "DELETE", f"quotas/user/{w.alice.name}", {}, "quota-user", w.alice.name


def dataset_create(w: Walk):
    return (w.alice, "POST", "datasets", {"json": {"name": w.dataset, "location": str(w.tmp)}},
            "dataset", w.dataset)


def dataset_version(w: Walk):
    return (w.alice, "POST", f"datasets/{w.dataset}/versions", {"json": {"location": "s3://b/x"}},
            "dataset", w.dataset)


def dataset_patch(w: Walk):
    return (w.alice, "PATCH", f"datasets/{w.dataset}", {"json": {"groups": ["audit"]}},
            "dataset", w.dataset)


def dataset_delete(w: Walk):
    return w.alice, "DELETE", f"datasets/{w.dataset}", {}, "dataset", w.dataset


def workflow_create(w: Walk):
    return (w.alice, "POST", "workflows", {"json": {"name": "audited", "steps": [
        {"name": "train", "job": {"notebook": w.nb()}}]}}, "workflow", None)


def workflow_run(w: Walk):
    w.workflow = w.alice.api("GET", "workflows").json()["workflows"][0]["id"]
    return w.alice, "POST", f"workflows/{w.workflow}/runs", {}, "workflow", w.workflow


def workflow_delete(w: Walk):
    import time

    deadline = time.monotonic() + 120
    while (run := w.alice.api("GET", f"workflows/{w.workflow}").json()["runs"][0])[
            "status"] == "running":
        assert time.monotonic() < deadline, f"the workflow run never ended: {run}"
        time.sleep(0.5)
    return w.alice, "DELETE", f"workflows/{w.workflow}", {}, "workflow", w.workflow


def image_build(w: Walk):
    # no image builder on this machine: the build is refused (422) and nothing changes —
    # the step proves the refusal writes no record (tests/test_builds.py builds for real
    # where a builder exists)
    return (w.admin, "POST", "catalog/builds", {"json": {"slug": unique("built"),
            "dockerfile": "FROM python:3.11-slim\n", "name": "Built"}}, None, None)


def image_pull(w: Walk):
    # the suite's platform runs workloads as processes: a pull is refused (409, containers are
    # off) and writes nothing (tests/containers/test_custom_images.py pulls for real)
    return (w.admin, "POST", "catalog/images/python-local/pull", {"json": {"tag": "0.1.0"}},
            None, None)


# (method, OpenAPI path) → how to call it validly; in walking order
STEPS = [
    (("POST", "/catalog/pools"), catalog_item("pools", "pool", lambda w: {
        "slug": w.pool, "name": "Audit pool", "max_running_jobs": 1})),
    (("POST", "/catalog/images"), catalog_item("images", "image", lambda w: new_image(w.image))),
    (("POST", "/catalog/profiles"), catalog_item("profiles", "profile", lambda w: {
        "slug": w.profile, "name": "Audit profile", "pool": w.pool})),
    (("PATCH", "/catalog/images/{slug}"), catalog_change("images", "image", "PATCH")),
    (("POST", "/catalog/images/{slug}/revert"), catalog_change("images", "image", "POST", "/revert")),
    (("PATCH", "/catalog/profiles/{slug}"), catalog_change("profiles", "profile", "PATCH")),
    (("POST", "/catalog/profiles/{slug}/revert"), catalog_change("profiles", "profile", "POST", "/revert")),
    (("PATCH", "/catalog/pools/{slug}"), catalog_change("pools", "pool", "PATCH")),
    (("POST", "/catalog/pools/{slug}/revert"), catalog_change("pools", "pool", "POST", "/revert")),
    (("DELETE", "/catalog/profiles/{slug}"), catalog_change("profiles", "profile", "DELETE")),
    (("DELETE", "/catalog/images/{slug}"), catalog_change("images", "image", "DELETE")),
    (("DELETE", "/catalog/pools/{slug}"), catalog_change("pools", "pool", "DELETE")),
    (("PUT", "/catalog"), catalog_import),
    (("POST", "/catalog/builds"), image_build),
    (("POST", "/catalog/images/{slug}/pull"), image_pull),
    (("POST", "/jobs"), job_submit),
    (("POST", "/jobs/{job_id}/cancel"), job_cancel),
    (("POST", "/jobs/{job_id}/retry"), job_retry),
    (("POST", "/schedules"), schedule_create),
    (("DELETE", "/schedules/{schedule_id}"), schedule_delete),
    (("PATCH", "/models/{name}"), model_share),
    (("POST", "/deployments"), deploy),
    (("PATCH", "/deployments/{name}"), deployment_update),
    (("DELETE", "/deployments/{name}"), deployment_delete),
    (("PUT", "/quotas/{scope}/{subject}"), quota_put),
    (("DELETE", "/quotas/{scope}/{subject}"), quota_delete),
    (("POST", "/datasets"), dataset_create),
    (("POST", "/datasets/{name}/versions"), dataset_version),
    (("PATCH", "/datasets/{name}"), dataset_patch),
    (("DELETE", "/datasets/{name}"), dataset_delete),
    (("POST", "/workflows"), workflow_create),
    (("POST", "/workflows/{workflow_id}/runs"), workflow_run),
    (("DELETE", "/workflows/{workflow_id}"), workflow_delete),
]


def mutating_routes(admin) -> set[tuple[str, str]]:
    document = admin.api("GET", "openapi.json").json()
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in MUTATING}


def test_every_mutating_route_is_walked(admin):
    walked = {route for route, _ in STEPS}
    assert mutating_routes(admin) - walked == set(), "add a step for each new mutating route"


def latest_audit_id(admin) -> int:
    events = admin.api("GET", "audit?limit=1").json()["events"]
    return events[0]["id"] if events else 0


def test_every_change_through_the_api_is_recorded(admin, alice, tiny_notebook, template, tmp_path):
    walk = Walk(admin, alice, tiny_notebook, template, tmp_path)
    for (method, route), make in STEPS:
        since = latest_audit_id(admin)
        user, verb, path, kwargs, kind, target = make(walk)
        assert verb == method, route
        response = user.api(verb, path, **kwargs)
        new = [e for e in admin.api("GET", "audit?limit=50").json()["events"] if e["id"] > since]
        if kind is None:  # a refused request: nothing changed, nothing recorded
            assert response.status_code >= 400 and not new, (route, response.text, new)
            continue
        assert response.status_code < 300, (route, response.status_code, response.text)
        if target is None:
            target = response.json()["id"]
        mine = [e for e in new if e["target_kind"] == kind and e["target_id"] == target]
        assert mine, (route, kind, target, new)
        event = mine[0]
        assert event["actor"] == user.name and event["at"] and event["remote_addr"], event
        assert event["before"] is not None or event["after"] is not None or verb == "POST", event


def test_changes_to_users_through_the_hub_are_recorded(platform, admin):
    name = unique("audited")
    assert admin.http.post(f"/hub/api/users/{name}").status_code == 201
    assert admin.http.delete(f"/hub/api/users/{name}").status_code == 204
    events = admin.api("GET", "audit?target_kind=user&limit=200").json()["events"]
    mine = sorted((e["action"], e["actor"]) for e in events if e["target_id"] == name)
    assert mine == [("create", "(hub)"), ("delete", "(hub)")], events[:5]


def test_the_audit_page_filters_and_exports(admin, alice, tiny_notebook):
    job = alice.submit(tiny_notebook())
    mine = alice.http.get("/services/fermi/audit?target_kind=job")
    assert mine.status_code == 200 and job["id"] in mine.text and "Audit log" in mine.text
    assert 'name="actor"' not in mine.text  # users see their own actions only
    everyone = admin.http.get(f"/services/fermi/audit?actor={alice.name}&action=submit")
    assert job["id"] in everyone.text and 'name="actor"' in everyone.text
    assert "Nothing recorded" in admin.http.get("/services/fermi/audit?action=no-such").text
    csv = admin.http.get(f"/services/fermi/api/audit?actor={alice.name}&format=csv")
    assert csv.status_code == 200 and csv.text.startswith("id,") and job["id"] in csv.text
