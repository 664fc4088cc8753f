"""The tracking server is reached only through the platform, with scoped tokens (issue 14.4).

On the real embedded platform (hub, control plane, tracking server, papermill jobs):
- the tracking proxy (``{hub}/services/fermi/tracking/``) wants ``Authorization: Bearer`` with a
  job's token or a user's hub token, and says so (401) otherwise; caller headers a client
  forges are not believed, neither by the proxy nor by the tracking server;
- a user reaches their own experiments, runs and models, never another's (403 that names what
  is not theirs), and searches show only theirs;
- a job's token reaches its own run only, and dies with its job;
- MLflow's own client, pointed at the proxy as jobs and users are, logs metrics, artifacts
  (streamed, several MB) and a registered model.
"""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest

from fermi_extension.tracking.identity import CALLER_HEADER, SIGNATURE_HEADER

from .platform import make_notebook

pytestmark = pytest.mark.hub

API = "api/2.0/mlflow"


def proxy(platform, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{platform.url}/services/fermi/tracking/", headers=headers,
                        timeout=60)


def make_run(client: httpx.Client, prefix: str) -> tuple[str, str]:
    """An experiment of the client's user and a run in it: (experiment id, run id)."""
    created = client.post(f"{API}/experiments/create",
                          json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}"})
    assert created.status_code == 200, created.text
    experiment = created.json()["experiment_id"]
    run = client.post(f"{API}/runs/create", json={"experiment_id": experiment})
    assert run.status_code == 200, run.text
    return experiment, run.json()["run"]["info"]["run_id"]


# -- who may call at all ---------------------------------------------------------------------------


def test_no_token_or_a_bad_one_is_401_saying_what_to_send(platform):
    for token in (None, "not-a-token"):
        with proxy(platform, token) as client:
            answer = client.get(f"{API}/experiments/search", params={"max_results": 5})
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        assert "Authorization: Bearer" in answer.json()["error"]
        assert "MLFLOW_TRACKING_TOKEN" in answer.json()["message"]


def test_forged_caller_headers_are_believed_by_neither_proxy_nor_tracking_server(platform, alice,
                                                                                 bob):
    _, bobs_run = make_run(proxy(platform, bob.token), "bob")
    forged = {CALLER_HEADER: "eyJuYW1lIjoiYWRtaW4iLCJhZG1pbiI6dHJ1ZX0=",
              SIGNATURE_HEADER: "1.00"}
    with proxy(platform, alice.token) as client:  # a real token, plus headers claiming admin
        answer = client.get(f"{API}/runs/get", params={"run_id": bobs_run}, headers=forged)
    assert answer.status_code == 403, answer.text
    direct = httpx.get(f"{platform.tracking_url}/{API}/runs/get", params={"run_id": bobs_run},
                       headers=forged)
    assert direct.status_code == 401, direct.text
    assert "tracking proxy" in direct.json()["message"]


# -- users: their own, never another's -------------------------------------------------------------


def test_a_user_cannot_read_search_or_log_to_another_users_runs_and_experiments(platform, alice,
                                                                                 bob, admin):
    bob_client = proxy(platform, bob.token)
    experiment, run = make_run(bob_client, "bob")
    assert bob_client.post(f"{API}/runs/log-metric", json={
        "run_id": run, "key": "loss", "value": 0.25, "timestamp": 0}).status_code == 200
    assert bob_client.get(f"{API}/runs/get", params={"run_id": run}).status_code == 200

    with proxy(platform, alice.token) as client:
        refused = {
            "get run": client.get(f"{API}/runs/get", params={"run_id": run}),
            "log metric": client.post(f"{API}/runs/log-metric", json={
                "run_id": run, "key": "loss", "value": 9.0, "timestamp": 0}),
            "set tag": client.post(f"{API}/runs/set-tag", json={
                "run_id": run, "key": "k", "value": "v"}),
            "end run": client.post(f"{API}/runs/update", json={"run_id": run,
                                                              "status": "KILLED"}),
            "metric history": client.get(f"{API}/metrics/get-history",
                                         params={"run_id": run, "metric_key": "loss"}),
            "get experiment": client.get(f"{API}/experiments/get",
                                         params={"experiment_id": experiment}),
            "search runs": client.post(f"{API}/runs/search", json={"experiment_ids": [experiment]}),
            "new run in it": client.post(f"{API}/runs/create", json={"experiment_id": experiment}),
            "list artifacts": client.get(f"{API}/artifacts/list", params={"run_id": run}),
            "upload artifact": client.put(
                f"api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/x.txt",
                content=b"planted"),
            "take bob's job experiment": client.post(f"{API}/experiments/create",
                                                     json={"name": f"fermi/{bob.name}"}),
        }
        for what, answer in refused.items():
            assert answer.status_code == 403, (what, answer.text)
            assert answer.json()["error_code"] == "PERMISSION_DENIED", what
            assert "not yours" in answer.json()["message"] or "platform" in \
                answer.json()["message"], (what, answer.text)
        assert run in refused["get run"].json()["message"]

        searched = client.get(f"{API}/experiments/search", params={"max_results": 1000})
        assert searched.status_code == 200, searched.text
        assert experiment not in {e["experiment_id"] for e in searched.json().get("experiments", [])}
        mine, _ = make_run(client, "alice")
        searched = client.get(f"{API}/experiments/search", params={"max_results": 1000}).json()
        assert mine in {e["experiment_id"] for e in searched["experiments"]}
        for shown in searched["experiments"]:
            tags = {t["key"]: t["value"] for t in shown.get("tags", [])}
            assert tags.get("fermi.owner") == alice.name or shown["name"] == f"fermi/{alice.name}"

    metrics = bob_client.get(f"{API}/runs/get", params={"run_id": run}).json()["run"]["data"]
    assert metrics["metrics"] == [{"key": "loss", "value": 0.25, "timestamp": 0, "step": 0}]
    with proxy(platform, admin.token) as client:  # an admin sees everything
        assert client.get(f"{API}/runs/get", params={"run_id": run}).status_code == 200


def test_mlflows_own_client_logs_metrics_and_streamed_artifacts_through_the_proxy(
        platform, alice, bob, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", alice.token)
    client = MlflowClient(tracking_uri=f"{platform.url}/services/fermi/tracking")
    experiment = client.create_experiment(f"alice-sdk-{uuid.uuid4().hex[:6]}")
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "accuracy", 0.9)
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(6 << 20))  # several chunks through the proxy, both ways
    client.log_artifact(run, str(big))
    assert client.get_run(run).data.metrics == {"accuracy": 0.9}
    assert [f.path for f in client.list_artifacts(run)] == ["weights.bin"]
    back = client.download_artifacts(run, "weights.bin", str(tmp_path / "back"))
    assert open(back, "rb").read() == big.read_bytes()

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", bob.token)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="not yours"):
        client.get_run(run)
    with pytest.raises(MlflowException, match="not yours"):
        client.log_metric(run, "accuracy", 0.1)


# -- jobs: their own run, with MLflow's own calls; models their owner's ----------------------------

JOB = """
import json, os, urllib.error, urllib.request
import mlflow
from sklearn.linear_model import LogisticRegression

mlflow.log_metric("score", 0.75)
with open("note.txt", "w") as f:
    f.write("from the job")
mlflow.log_artifact("note.txt")
model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
mlflow.sklearn.log_model(model, name="model", registered_model_name=model_name,
                         pip_requirements=["scikit-learn"])

def call(path, body=None):
    request = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"] + path, data=json.dumps(body).encode() if body else None,
        headers={"Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"],
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, None

def status(path, body=None):
    return call(path, body)[0]

_, found = call("/api/2.0/mlflow/runs/search",
                {"experiment_ids": [os.environ["MLFLOW_EXPERIMENT_ID"]]})
print("SEARCHED=" + json.dumps([r["info"]["run_id"] for r in found.get("runs", [])]))

codes = {
    "own run": status("/api/2.0/mlflow/runs/get?run_id=" + os.environ["MLFLOW_RUN_ID"]),
    "other run": status("/api/2.0/mlflow/runs/get?run_id=" + other_run),
    "log to other": status("/api/2.0/mlflow/runs/log-metric",
                           {"run_id": other_run, "key": "x", "value": 1.0, "timestamp": 0}),
    "search other": status("/api/2.0/mlflow/runs/search", {"experiment_ids": [other_experiment]}),
    "new run": status("/api/2.0/mlflow/runs/create",
                      {"experiment_id": os.environ["MLFLOW_EXPERIMENT_ID"]}),
    "other artifacts": status("/api/2.0/mlflow-artifacts/artifacts?path=" + other_experiment
                              + "/" + other_run + "/artifacts"),
}
print("CODES=" + json.dumps(codes))
print("TOKEN=" + os.environ["MLFLOW_TRACKING_TOKEN"])
"""


def test_a_job_reaches_its_own_run_only_and_its_models_are_its_owners(platform, alice, bob):
    group = f"readers-{uuid.uuid4().hex[:6]}"
    carol = platform.user(f"carol-{uuid.uuid4().hex[:6]}", groups=[group])
    other_experiment, other_run = make_run(proxy(platform, bob.token), "bob")
    # alice's job experiment, made by herself, with a run that is not the job's
    with proxy(platform, alice.token) as client:
        made = client.post(f"{API}/experiments/create", json={"name": f"fermi/{alice.name}"})
        assert made.status_code == 200, made.text
        assert client.post(f"{API}/runs/create", json={
            "experiment_id": made.json()["experiment_id"]}).status_code == 200
    model_name = f"alice-model-{uuid.uuid4().hex[:6]}"
    job = alice.submit(make_notebook(JOB, parameters=(
        f"model_name = {model_name!r}\nother_run = {other_run!r}\n"
        f"other_experiment = {other_experiment!r}")))
    done = alice.wait(job["id"], timeout=240)
    log = alice.api("GET", f"jobs/{job['id']}/logs").json()["text"]
    assert done["status"] == "succeeded", (done, log[-3000:])
    codes = json.loads(log.split("CODES=", 1)[1].splitlines()[0])
    assert codes == {"own run": 200, "other run": 403, "log to other": 403, "search other": 403,
                     "new run": 403, "other artifacts": 403}, codes
    # its experiment holds alice's other run too; the job's token finds its own run only
    assert json.loads(log.split("SEARCHED=", 1)[1].splitlines()[0]) == [done["tracking_run_id"]]

    # what the job logged through the proxy is in its run, and its model was registered
    run = httpx.get(f"{platform.tracking_url}/{API}/runs/get",
                    params={"run_id": done["tracking_run_id"]}).json()["run"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]}["score"] == 0.75
    artifacts = httpx.get(f"{platform.tracking_url}/{API}/artifacts/list",
                          params={"run_id": done["tracking_run_id"]}).json()
    assert "note.txt" in {f["path"] for f in artifacts.get("files", [])}
    assert [m["name"] for m in done["models"]] == [model_name]

    # the job's token ended with the job
    token = log.split("TOKEN=", 1)[1].splitlines()[0].strip()
    with proxy(platform, token) as client:
        assert client.get(f"{API}/runs/get",
                          params={"run_id": done["tracking_run_id"]}).status_code == 401

    # the model is alice's: bob neither reads nor finds it; alice does
    with proxy(platform, bob.token) as client:
        got = client.get(f"{API}/registered-models/get", params={"name": model_name})
        assert got.status_code == 403 and model_name in got.json()["message"], got.text
        assert client.get(f"{API}/model-versions/get", params={
            "name": model_name, "version": "1"}).status_code == 403
        found = client.get(f"{API}/registered-models/search", params={"max_results": 1000})
        assert model_name not in {m["name"] for m in found.json().get("registered_models", [])}
        versions = client.get(f"{API}/model-versions/search",
                              params={"filter": f"name='{model_name}'"})
        assert versions.status_code == 200 and versions.json().get("model_versions", []) == []
        assert client.get(f"{API}/runs/get", params={
            "run_id": done["tracking_run_id"]}).status_code == 403
    with proxy(platform, alice.token) as client:
        assert client.get(f"{API}/registered-models/get",
                          params={"name": model_name}).status_code == 200
        found = client.get(f"{API}/registered-models/search", params={"max_results": 1000})
        assert model_name in {m["name"] for m in found.json()["registered_models"]}
        assert client.get(f"{API}/runs/get", params={
            "run_id": done["tracking_run_id"]}).status_code == 200

    # shared with carol's group: she reads the model and its files (in alice's experiment);
    # bob still does not
    shared = alice.api("PATCH", f"models/{model_name}", json={"groups": [group]})
    assert shared.status_code == 200, shared.text
    with proxy(platform, carol.token) as client:
        assert client.get(f"{API}/registered-models/get",
                          params={"name": model_name}).status_code == 200
        uri = client.get(f"{API}/model-versions/get-download-uri",
                         params={"name": model_name, "version": "1"})
        assert uri.status_code == 200, uri.text
        folder = uri.json()["artifact_uri"][len("mlflow-artifacts:/"):].strip("/")
        listed = client.get("api/2.0/mlflow-artifacts/artifacts", params={"path": folder})
        assert listed.status_code == 200, listed.text
        assert "MLmodel" in {f["path"] for f in listed.json()["files"]}
        mlmodel = client.get(f"api/2.0/mlflow-artifacts/artifacts/{folder}/MLmodel")
        assert mlmodel.status_code == 200 and b"flavors" in mlmodel.content
        assert client.put(f"api/2.0/mlflow-artifacts/artifacts/{folder}/MLmodel",
                          content=b"replaced").status_code == 403
        assert client.get(f"{API}/runs/get", params={  # the model, not the run behind it
            "run_id": done["tracking_run_id"]}).status_code == 403
    with proxy(platform, bob.token) as client:
        assert client.get("api/2.0/mlflow-artifacts/artifacts",
                          params={"path": folder}).status_code == 403


# -- model servers: the one version they serve, as their storage initializer fetches it --------

REGISTERS_TWO = """
import mlflow
from sklearn.linear_model import LogisticRegression

model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
for name in (served, other):
    mlflow.sklearn.log_model(model, name=name, registered_model_name=name,
                             pip_requirements=["scikit-learn"])
"""


def test_a_model_servers_token_fetches_its_one_version_and_reaches_nothing_else(
        platform, alice, tmp_path):
    """On Kubernetes a revision's storage initializer fetches ``models:/NAME/VERSION`` through
    the tracking proxy with the token the deployment controller issued for it
    (``DeploymentController._fetch_token``): here the same token, the same proxy and the same
    fetch command (``python -m fermi_extension.serving.fetch``, as the init container runs it)."""
    import subprocess
    import sys

    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from fermi_extension import workload_tokens

    served, other = (f"alice-{what}-{uuid.uuid4().hex[:6]}" for what in ("served", "other"))
    job = alice.submit(make_notebook(REGISTERS_TWO, parameters=(
        f"served = {served!r}\nother = {other!r}")))
    done = alice.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    factory = sessionmaker(create_engine(f"sqlite:///{platform.data / 'fermi.sqlite'}"))
    token = workload_tokens.issue(factory, kind="replica", owner=alice.name,
                                  deployment="served", model=f"models:/{served}/1")
    tracking = f"{platform.url}/services/fermi/tracking"

    fetched = subprocess.run(
        [sys.executable, "-m", "fermi_extension.serving.fetch", f"models:/{served}/1",
         str(tmp_path / "model")], capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "MLFLOW_TRACKING_URI": tracking,
             "MLFLOW_TRACKING_TOKEN": token})
    assert fetched.returncode == 0, fetched.stderr
    assert "flavors" in (tmp_path / "model" / "MLmodel").read_text()

    with proxy(platform, alice.token) as owner:  # what its owner reaches, it does not
        other_folder = owner.get(f"{API}/model-versions/get-download-uri", params={
            "name": other, "version": "1"}).json()["artifact_uri"].split(":/", 1)[1]
    run_folder = f"{other_folder.split('/')[0]}/{done['tracking_run_id']}/artifacts"
    with proxy(platform, token) as client:
        refused = {
            "another model of its owner": client.get(f"{API}/model-versions/get-download-uri",
                                                     params={"name": other, "version": "1"}),
            "that model's files": client.get("api/2.0/mlflow-artifacts/artifacts",
                                             params={"path": other_folder}),
            "the run behind it": client.get(f"{API}/runs/get",
                                            params={"run_id": done["tracking_run_id"]}),
            "the run's files": client.get("api/2.0/mlflow-artifacts/artifacts",
                                          params={"path": run_folder}),
            "a search": client.get(f"{API}/registered-models/search"),
            "a new run": client.post(f"{API}/runs/create", json={"experiment_id": "0"}),
            "a new version": client.post(f"{API}/model-versions/create", json={
                "name": served, "source": f"models:/{served}/1"}),
        }
        for what, answer in refused.items():
            assert answer.status_code == 403, (what, answer.text)
            assert "reads that model version's files only" in answer.json()["message"], what

    workload_tokens.revoke(factory, deployment="served")  # the deployment stopped serving it
    again = subprocess.run(
        [sys.executable, "-m", "fermi_extension.serving.fetch", f"models:/{served}/1",
         str(tmp_path / "again")], capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "MLFLOW_TRACKING_URI": tracking,
             "MLFLOW_TRACKING_TOKEN": token})
    assert again.returncode == 1 and "not valid here" in again.stderr, again.stderr
