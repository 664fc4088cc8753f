"""Inference services end to end: a real training job registers a model, it is promoted to a
deployment of real model-server processes behind the real router, and the deployment answers
the Open Inference Protocol V2, scales with load, canaries, survives a killed replica."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx
import numpy as np
import psutil
import pytest
from sklearn.datasets import load_wine

pytestmark = pytest.mark.hub

ROWS = load_wine().data[:5]


def v2(rows) -> dict:
    rows = np.asarray(rows, dtype=float)
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.flatten().tolist()}]}


@pytest.fixture(scope="module")
def trained(platform, template):
    """Two versions of one model, registered by two real training jobs of one user."""
    owner = platform.user("modeller")
    model = "wine-e2e"
    jobs = []
    for c in (0.5, 0.01):
        job = owner.submit(template, parameters={"C": c, "model_name": model})
        jobs.append(owner.wait(job["id"], timeout=240))
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    return owner, model, jobs


def wait_ready(user, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = user.api("GET", f"deployments/{name}").json()
        if d["status"] == "ready":
            return d
        assert d["status"] != "failed" and time.monotonic() < deadline, d
        time.sleep(0.3)


def test_model_repository_lists_versions_with_lineage(platform, trained, bob):
    owner, model, jobs = trained
    listed = owner.api("GET", "models").json()["models"]
    assert model in [m["name"] for m in listed]
    described = owner.api("GET", f"models/{model}").json()
    assert described["owner"] == owner.name and described["latest_version"] == "2"
    lineage = {v["version"]: v["job"] for v in described["versions"]}
    assert lineage["1"]["id"] == jobs[0]["id"] and lineage["2"]["id"] == jobs[1]["id"]
    assert lineage["1"]["parameters"]["C"] == 0.5 and "accuracy" in lineage["1"]["metrics"]
    assert bob.api("GET", f"models/{model}").status_code == 404
    assert model not in [m["name"] for m in bob.api("GET", "models").json()["models"]]
    # sharing with a group lets its members see it
    shared = platform.user(f"{bob.name}-peer", groups=["wine-team"])
    response = owner.api("PATCH", f"models/{model}", json={"groups": ["wine-team"]})
    assert response.status_code == 200 and response.json()["groups"] == ["wine-team"]
    assert shared.api("GET", f"models/{model}").status_code == 200
    assert bob.api("PATCH", f"models/{model}", json={"groups": []}).status_code == 404


def test_deployment_bad_input_and_access(platform, trained, bob):
    owner, model, _ = trained
    base = {"name": "bad", "model": model, "version": "1"}
    for body, status, phrase in (
        ({**base, "model": "nope"}, 404, "No model 'nope'"),
        ({**base, "version": "99"}, 404, "no version '99'"),
        ({**base, "min_replicas": 3, "max_replicas": 2}, 400, "min_replicas (3) is more than"),
        ({**base, "min_replicas": 0}, 400, "min_replicas"),
        ({**base, "target_concurrency": 0}, 400, "target_concurrency"),
        ({**base, "name": "Bad_Name"}, 400, "not allowed"),
        ({**base, "engine": "vllm"}, 422, "GPU"),
        ({**base, "profile": "gpu-a100-1"}, 422, "GPU"),
    ):
        response = owner.api("POST", "deployments", json=body)
        assert response.status_code == status, (body, response.text)
        assert phrase in response.json()["message"], response.text
    assert owner.api("GET", "deployments/bad").status_code == 404
    other = bob.api("POST", "deployments", json=base)
    assert other.status_code == 404  # not shared with bob


@pytest.fixture(scope="module")
def service(platform, trained):
    owner, model, _ = trained
    response = owner.api("POST", "deployments", json={
        "name": "wine", "model": model, "version": "1", "min_replicas": 1, "max_replicas": 3,
        "target_concurrency": 2, "scale_down_delay_seconds": 6,
    })
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["api_key"] and created["url"].startswith("http")
    wait_ready(owner, "wine")
    client = httpx.Client(base_url=created["url"], timeout=30,
                          headers={"Authorization": f"Bearer {created['api_key']}"})
    yield owner, model, created, client
    client.close()


def test_promoted_model_answers_v2_with_its_predictions(platform, service, bob):
    owner, model, created, client = service
    assert httpx.get(f"{created['url']}/v2/health/ready").status_code == 200
    assert httpx.get(f"{created['url']}/v2/health/live").status_code == 200
    response = client.post(f"/v2/models/{model}/infer", json=v2(ROWS))
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"][0]
    import mlflow.sklearn

    local = mlflow.sklearn.load_model(str(platform.data / "serving/models" / model / "1"))
    frame = load_wine(as_frame=True).data.iloc[:5]  # the feature names it was trained with
    assert outputs["data"] == local.predict(frame).tolist()
    metadata = client.get(f"/v2/models/{model}").json()
    assert metadata["name"] == model
    # access: none, a wrong key, another user's token; the owner's own hub token works
    url = f"{created['url']}/v2/models/{model}/infer"
    assert httpx.post(url, json=v2(ROWS)).status_code == 401
    assert httpx.post(url, json=v2(ROWS), headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(url, json=v2(ROWS), headers={"Authorization": f"token {bob.token}"}).status_code == 403
    assert httpx.post(url, json=v2(ROWS), headers={"Authorization": f"token {owner.token}"}).status_code == 200
    assert bob.api("GET", "deployments/wine").status_code == 404
    # bad payloads: 4xx with a sentence
    for body in ({"data": [1, 2]}, v2(ROWS[:, :5])):
        bad = client.post(f"/v2/models/{model}/infer", json=body)
        assert 400 <= bad.status_code < 500 and bad.json()["error"], bad.text
    listed = owner.api("GET", "deployments").json()["deployments"]
    assert [d["name"] for d in listed] == ["wine"]


def test_a_replicas_own_address_answers_only_the_router(platform, service):
    """Every local process can reach a replica at 127.0.0.1:PORT; going there round the router
    must not skip the router's key check."""
    owner, model, created, client = service
    urls = [row[0] for row in replica_rows(platform, "SELECT url FROM replicas WHERE deployment = :d "
                                                     "AND state = 'ready'", d="wine")]
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)
    for url in urls:
        for headers in ({}, {"Authorization": f"Bearer {created['api_key']}"},
                        {"X-API-Key": created["api_key"]}, {"Authorization": f"token {owner.token}"}):
            direct = httpx.post(f"{url}/v2/models/{model}/infer", json=v2(ROWS), headers=headers)
            assert direct.status_code == 401 and direct.json()["error"], (url, headers, direct.text)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 401
    assert client.post(f"/v2/models/{model}/infer", json=v2(ROWS)).status_code == 200


def load(client, path: str, clients: int, seconds: float) -> Counter:
    outcomes: Counter = Counter()
    stop = time.monotonic() + seconds

    def worker():
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=30) as http:
            while time.monotonic() < stop:
                try:
                    response = http.post(path, json=v2(ROWS[:1]))
                    outcomes[response.status_code] += 1
                    if response.status_code == 200:
                        outcomes["v" + response.json().get("model_version", "?")] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_load_scales_up_and_quiet_scales_down_with_reasons(service):
    owner, model, _, client = service
    outcomes = load(client, f"/v2/models/{model}/infer", clients=12, seconds=12)
    assert set(k for k in outcomes if isinstance(k, int)) == {200}, outcomes
    during = owner.api("GET", "deployments/wine").json()
    assert during["desired_replicas"] >= 2
    deadline = time.monotonic() + 60
    while owner.api("GET", "deployments/wine").json()["desired_replicas"] > 1:
        assert time.monotonic() < deadline, "never scaled down"
        time.sleep(1)
    events = owner.api("GET", "deployments/wine").json()["events"]
    scaled = [e["message"] for e in events if e["kind"] == "scaled"]
    assert any("scale up" in m for m in scaled) and any("scale down" in m for m in scaled)
    counts = [h["replicas"] for h in owner.api("GET", "deployments/wine").json()["replica_history"]]
    assert counts[0] == 1 and max(counts) >= 2 and counts[-1] == 1


def test_canary_split_rollback_and_promote(service):
    owner, model, _, client = service
    response = owner.api("PATCH", "deployments/wine", json={"canary": {"version": "2", "traffic_percent": 20}})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 90
    while True:
        revisions = {r["name"]: r for r in owner.api("GET", "deployments/wine").json()["revisions"]}
        if revisions.get("r2", {}).get("traffic_percent") == 20:
            break
        assert time.monotonic() < deadline, revisions
        time.sleep(0.5)
    versions = Counter()
    for _ in range(1000):
        answer = client.post(f"/v2/models/{model}/infer", json=v2(ROWS[:1]))
        assert answer.status_code == 200
        versions[answer.json()["model_version"]] += 1
    assert 150 <= versions["2"] <= 250, versions  # 20% ± 5% of 1,000
    rolled = owner.api("PATCH", "deployments/wine", json={"action": "rollback"}).json()
    assert {r["name"]: r["traffic_percent"] for r in rolled["revisions"]}["r1"] == 100
    after = Counter(client.post(f"/v2/models/{model}/infer", json=v2(ROWS[:1])).json()["model_version"]
                    for _ in range(50))
    assert after == Counter({"1": 50})
    owner.api("PATCH", "deployments/wine", json={"canary": {"version": "2", "traffic_percent": 50}})
    promoted_ok = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        revisions = {r["name"]: r for r in owner.api("GET", "deployments/wine").json()["revisions"]}
        if any(r["role"] == "canary" and r["ready_replicas"] for r in revisions.values()):
            promoted_ok = owner.api("PATCH", "deployments/wine", json={"action": "promote"}).status_code == 200
            break
        time.sleep(0.5)
    assert promoted_ok
    final = owner.api("GET", "deployments/wine").json()
    assert final["version"] == "2"
    outcomes = Counter(client.post(f"/v2/models/{model}/infer", json=v2(ROWS[:1])).json()["model_version"]
                       for _ in range(50))
    assert outcomes == Counter({"2": 50})


def replica_rows(platform, query: str, **params) -> list:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{platform.data / 'fermi.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(text(query), params).all()
    engine.dispose()
    return rows


def replica_pid(platform, replica_id: str) -> int:
    return replica_rows(platform, "SELECT pid FROM replicas WHERE id = :id", id=replica_id)[0][0]


def test_a_replica_killed_under_load_is_replaced_without_failures(platform, service):
    owner, model, _, client = service
    owner.api("PATCH", "deployments/wine", json={"min_replicas": 2, "max_replicas": 2})
    deadline = time.monotonic() + 60
    while sum(r["state"] == "ready" for r in owner.api("GET", "deployments/wine").json()["replicas"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    victim = next(r for r in owner.api("GET", "deployments/wine").json()["replicas"] if r["state"] == "ready")
    results: Counter = Counter()
    served = owner.api("GET", "deployments/wine").json()["traffic"]["requests"]
    loader = threading.Thread(target=lambda: results.update(
        load(client, f"/v2/models/{model}/infer", clients=4, seconds=12)))
    loader.start()
    # the kill lands under load: once the router has counted requests of the loader
    deadline = time.monotonic() + 10
    while owner.api("GET", "deployments/wine").json()["traffic"]["requests"] < served + 20:
        assert time.monotonic() < deadline, "the load never reached the deployment"
        time.sleep(0.1)
    psutil.Process(replica_pid(platform, victim["id"])).send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    replaced = None
    while time.monotonic() - killed_at < 30:
        replicas = owner.api("GET", "deployments/wine").json()["replicas"]
        ids = {r["id"] for r in replicas if r["state"] == "ready"}
        if victim["id"] not in ids and len(ids) >= 2:
            replaced = time.monotonic() - killed_at
            break
        time.sleep(0.2)
    loader.join()
    total = sum(v for k, v in results.items() if not str(k).startswith("v"))
    failed = total - results[200]
    assert replaced is not None and replaced <= 10, replaced
    assert failed <= max(1, total // 1000), results  # < 0.1% (one in-flight request may be lost)
    events = owner.api("GET", "deployments/wine").json()["events"]
    assert any(e["kind"] == "replica-crashed" and victim["id"] in e["message"] for e in events)


def test_metrics_endpoint_reports_deployments(platform, service, admin):
    owner, *_ = service
    assert owner.api("GET", "../metrics").status_code == 403
    text = admin.http.get("/services/fermi/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "fermi_deployment_requests" in families and "fermi_jobs" in families
    samples = {s.labels.get("deployment"): s.value for s in families["fermi_deployment_requests"].samples}
    assert samples.get("wine", 0) > 0


def test_delete_drains_and_removes_the_service(service):
    owner, model, created, client = service
    assert owner.api("DELETE", "deployments/wine").status_code == 204
    deadline = time.monotonic() + 60
    while owner.api("GET", "deployments/wine").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while client.post(f"/v2/models/{model}/infer", json=v2(ROWS[:1])).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)
