"""Workflows: train → evaluate → promote if a metric clears a bar, run by the control plane."""

from __future__ import annotations

import time

import pytest

from tests.platform import make_notebook

pytestmark = pytest.mark.hub

EVALUATE = make_notebook(
    "import mlflow, mlflow.sklearn\n"
    "from sklearn.datasets import load_wine\n"
    "X, y = load_wine(return_X_y=True)\n"
    "model = mlflow.sklearn.load_model(f'models:/{model_name}/{model_version}')\n"
    "mlflow.log_metric('accuracy', float((model.predict(X) == y).mean()))",
    parameters="model_name = ''\nmodel_version = ''",
)


def wait_run(user, workflow_id, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        workflow = user.api("GET", f"workflows/{workflow_id}").json()
        run = workflow["runs"][0]
        if run["status"] != "running":
            return run
        assert time.monotonic() < deadline, workflow
        time.sleep(1)


def steps(template, model_name, bar, deployment):
    return [
        {"name": "train", "job": {"notebook": template, "parameters": {"model_name": model_name}}},
        {"name": "evaluate", "job": {"notebook": EVALUATE, "parameters": {
            "model_name": "${train.model.name}", "model_version": "${train.model.version}"}}},
        {"name": "promote", "promote": {"model_from": "train", "deployment": deployment,
                                        "when": {"metric": "evaluate.accuracy", "op": ">=",
                                                 "value": bar}}},
    ]


def test_a_workflow_trains_evaluates_and_promotes_only_past_the_bar(alice, bob, template):
    model_name = f"wf-{alice.name}"
    deployment = f"wf-{alice.name}"[:40]
    made = alice.api("POST", "workflows", json={
        "name": "nightly", "steps": steps(template, model_name, 0.8, deployment)})
    assert made.status_code == 201, made.text
    workflow = made.json()
    assert bob.api("GET", f"workflows/{workflow['id']}").status_code == 404
    assert bob.api("POST", f"workflows/{workflow['id']}/runs").status_code == 404

    assert alice.api("POST", f"workflows/{workflow['id']}/runs").status_code == 201
    run = wait_run(alice, workflow["id"])
    assert run["status"] == "succeeded", run
    train, evaluate, promote = run["steps"]
    assert train["model"]["name"] == model_name and evaluate["metrics"]["accuracy"] >= 0.8
    assert promote["status"] == "succeeded" and promote["deployment"] == deployment
    served = alice.api("GET", f"deployments/{deployment}").json()
    assert served["revisions"][0]["version"] == str(train["model"]["version"])

    # the same workflow with a bar no model clears: nothing is deployed, and it says why
    high = alice.api("POST", "workflows", json={
        "name": "strict", "steps": steps(template, model_name, 1.01, f"{deployment}-x"[:40])}).json()
    alice.api("POST", f"workflows/{high['id']}/runs")
    run = wait_run(alice, high["id"])
    assert run["status"] == "succeeded" and run["steps"][2]["status"] == "skipped"
    assert "Not promoted: evaluate.accuracy" in run["reason"]
    assert alice.api("GET", f"deployments/{deployment}-x"[:40]).status_code == 404
    alice.api("DELETE", f"deployments/{deployment}")


def test_a_failing_step_stops_the_run_with_its_reason(alice, tiny_notebook):
    made = alice.api("POST", "workflows", json={"name": "broken", "steps": [
        {"name": "train", "job": {"notebook": tiny_notebook("raise RuntimeError('no data')")}},
        {"name": "evaluate", "job": {"notebook": tiny_notebook("y = 1")}},
    ]}).json()
    alice.api("POST", f"workflows/{made['id']}/runs")
    run = wait_run(alice, made["id"], timeout=120)
    assert run["status"] == "failed" and "Step 'train' failed" in run["reason"], run
    assert "no data" in run["reason"]
    assert run["steps"][1]["status"] == "pending" and run["steps"][1]["job_id"] is None


@pytest.mark.parametrize("body, says", [
    ({"name": "x", "steps": [{"name": "a", "job": {"notebook": "{}"}, "promote": {
        "model_from": "a", "deployment": "d"}}]}, "exactly one of"),
    ({"name": "x", "steps": [{"name": "promote", "promote": {"model_from": "train",
                                                             "deployment": "d"}}]}, "earlier job step"),
    ({"name": "x", "steps": []}, "steps"),
])
def test_bad_workflows_say_what_to_fix_and_write_nothing(alice, body, says):
    answer = alice.api("POST", "workflows", json=body)
    assert answer.status_code == 400 and says in answer.json()["message"], answer.text
    assert alice.api("GET", "workflows").json()["workflows"] == []


def test_each_job_step_is_checked_like_a_submission(alice, tiny_notebook):
    answer = alice.api("POST", "workflows", json={"name": "typo", "steps": [
        {"name": "train", "job": {"notebook": tiny_notebook(), "parameters": {"epochs": 3}}}]})
    assert answer.status_code == 400 and "Step 'train'" in answer.json()["message"], answer.text
