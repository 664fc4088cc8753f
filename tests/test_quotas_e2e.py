"""The quota matrix through every route that starts work: submit, the queue, deploy, spawn."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.hub


def set_quota(admin, user, **limits):
    answer = admin.api("PUT", f"quotas/user/{user.name}", json=limits)
    assert answer.status_code == 200, answer.text


def test_quotas_are_enforced_at_submit_queue_deploy_and_spawn(platform, admin, alice, bob, tiny_notebook):
    # only admins set quotas; bad input is refused and writes nothing
    assert alice.api("PUT", f"quotas/user/{alice.name}", json={"gpus": 99}).status_code == 403
    bad = admin.api("PUT", f"quotas/user/{alice.name}", json={"gpus": -1})
    assert bad.status_code == 400 and "gpus" in bad.json()["message"]
    assert admin.api("PUT", f"quotas/team/{alice.name}", json={}).status_code == 400
    assert alice.api("GET", "quotas").json()["quotas"] == []

    # running jobs: the second job waits in the queue and says why, then runs
    set_quota(admin, alice, running_jobs=1)
    slow = alice.submit(tiny_notebook("import time; time.sleep(4)"))
    second = alice.submit(tiny_notebook("y = 1"))
    alice.wait(slow["id"], statuses=("running",))
    deadline = time.monotonic() + 20
    while "quota of 1 running jobs" not in (alice.job(second["id"])["reason"] or ""):
        assert time.monotonic() < deadline, alice.job(second["id"])
        assert alice.job(second["id"])["status"] == "queued"
        time.sleep(0.3)
    other = bob.submit(tiny_notebook("y = 2"))  # bob is not held back by alice's quota
    assert bob.wait(other["id"])["status"] == "succeeded"
    assert alice.wait(second["id"])["status"] == "succeeded"
    mine = alice.api("GET", "quotas/me").json()
    assert mine["limits"][0]["field"] == "running_jobs" and mine["limits"][0]["limit"] == 1

    # deployments: refused with the reason, nothing written
    set_quota(admin, alice, deployments=0)
    refused = alice.api("POST", "deployments", json={"name": f"q-{alice.name}"[:40],
                                                     "model": "any", "version": "1"})
    assert refused.status_code == 403 and "quota of 0 deployments" in refused.json()["message"]
    assert alice.api("GET", "deployments").json()["deployments"] == []

    # a spent month: no new job, no dev environment
    set_quota(admin, alice, monthly_spend=0)
    refused = alice.api("POST", "jobs", json={"notebook": tiny_notebook()})
    assert refused.status_code == 403 and "spend this month" in refused.json()["message"]
    spawn = alice.http.post(f"/hub/api/users/{alice.name}/server")
    assert spawn.status_code == 403 and "spend this month" in spawn.json()["message"], spawn.text
    assert admin.api("DELETE", f"quotas/user/{alice.name}").status_code == 204
    assert alice.api("POST", "jobs", json={"notebook": tiny_notebook()}).status_code == 201
