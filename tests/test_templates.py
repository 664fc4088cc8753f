"""Each notebook template runs as a real training job on the platform and gives what it promises.

The templates make or bundle their own small data; parameters keep the runs short. The evaluation
and batch-inference templates run after the tabular template registered a model for them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.hub

TEMPLATES = Path(__file__).resolve().parent.parent / "notebooks" / "templates"


def load(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.ipynb").read_text(encoding="utf-8"))


def submit(user, name: str, parameters: dict) -> dict:
    return user.submit(load(name), name=name, parameters=parameters,
                       notebook_name=f"{name}.ipynb")


def succeeded(user, job: dict, timeout: float = 180) -> dict:
    done = user.wait(job["id"], timeout=timeout)
    if done["status"] != "succeeded":
        logs = user.api("GET", f"jobs/{job['id']}/logs").json()["text"]
        pytest.fail(f"{job['name']} {done['status']}: {done['reason']}\n{logs[-4000:]}")
    return done


def tracking(platform, endpoint: str, **params) -> dict:
    response = httpx.get(f"{platform.tracking_url}/api/2.0/mlflow/{endpoint}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def registered_versions(platform, name: str) -> list[dict]:
    return tracking(platform, "model-versions/search",
                    filter=f"name='{name}'").get("model_versions", [])


def artifact_paths(platform, run_id: str, path: str = "") -> list[str]:
    listing = tracking(platform, "artifacts/list", run_id=run_id, path=path)
    return [f["path"] for f in listing.get("files", [])]


def artifact_text(platform, run_id: str, path: str) -> str:
    run = tracking(platform, "runs/get", run_id=run_id)["run"]
    prefix = "mlflow-artifacts:/"
    root = run["info"]["artifact_uri"]
    assert root.startswith(prefix), root
    url = f"{platform.tracking_url}/api/2.0/mlflow-artifacts/artifacts/{root[len(prefix):].strip('/')}/{path}"
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return response.text


def history(platform, run_id: str, key: str) -> list[float]:
    found = tracking(platform, "metrics/get-history", run_id=run_id, metric_key=key)
    return [m["value"] for m in sorted(found.get("metrics", []), key=lambda m: m["step"])]


def tags(platform, run_id: str) -> dict:
    run = tracking(platform, "runs/get", run_id=run_id)["run"]
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def assert_registered(platform, done: dict, model_name: str) -> None:
    versions = registered_versions(platform, model_name)
    assert [v["run_id"] for v in versions] == [done["tracking_run_id"]]
    assert done["models"] == [{"name": model_name, "version": versions[0]["version"]}]


def test_pytorch_image_classifier(platform, alice):
    model_name = f"digits-{alice.name}"
    done = succeeded(alice, submit(alice, "pytorch-image-classifier",
                                   {"epochs": 4, "model_name": model_name}))
    metrics = done["metrics"]
    assert 0.5 < metrics["accuracy"] <= 1.0  # chance is 0.1
    assert 0.5 < metrics["f1_macro"] <= 1.0
    losses = history(platform, done["tracking_run_id"], "train_loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert_registered(platform, done, model_name)


def test_llm_lora_finetune(platform, alice):
    model_name = f"char-lm-{alice.name}"
    done = succeeded(alice, submit(alice, "llm-lora-finetune", {
        "max_steps": 30, "model_name": model_name, "sample_prompt": "Fermi ",
    }))
    metrics = done["metrics"]
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]  # it learned something
    assert math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-6)
    assert 0 < metrics["trainable_parameters"]
    assert len(history(platform, done["tracking_run_id"], "train_loss")) == 3  # every 10 steps
    run_id = done["tracking_run_id"]
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(
        artifact_paths(platform, run_id, "adapter"))
    assert artifact_text(platform, run_id, "sample.txt").startswith("Fermi ")
    assert_registered(platform, done, model_name)


def test_evaluation_and_batch_inference_of_a_registered_model(platform, alice, tmp_path):
    model_name = f"wine-{alice.name}"
    trained = succeeded(alice, submit(alice, "tabular-classifier", {"model_name": model_name}))
    assert_registered(platform, trained, model_name)

    # a file of the user's own: the model's input columns and an extra id column
    from sklearn.datasets import load_wine

    features = load_wine(as_frame=True).data.iloc[::6].reset_index(drop=True)
    features.insert(0, "id", [f"row-{i}" for i in range(len(features))])
    input_csv = tmp_path / "to-score.csv"
    features.to_csv(input_csv, index=False)

    evaluation = submit(alice, "evaluate-model", {"model_name": model_name, "model_version": "1"})
    generated = submit(alice, "batch-inference", {"model_name": model_name, "rows": 200})
    from_file = submit(alice, "batch-inference", {
        "model_name": model_name, "input_path": str(input_csv), "output_path": "out/scored.csv",
    })

    evaluation = succeeded(alice, evaluation)
    metrics = evaluation["metrics"]
    assert 0.8 < metrics["accuracy"] <= 1.0 and 0.8 < metrics["f1_macro"] <= 1.0
    assert 0.8 < metrics["precision_macro"] <= 1.0 and 0.8 < metrics["recall_macro"] <= 1.0
    assert metrics["rows_evaluated"] == 45  # the rows the tabular template held out
    assert evaluation["models"] == []  # it evaluates, it registers nothing
    run_id = evaluation["tracking_run_id"]
    assert tags(platform, run_id)["evaluated_version"] == "1"
    report = json.loads(artifact_text(platform, run_id, "evaluation/report.json"))
    assert math.isclose(report["accuracy"], metrics["accuracy"])
    matrix = json.loads(artifact_text(platform, run_id, "evaluation/confusion_matrix.json"))
    assert sum(map(sum, matrix["matrix"])) == 45

    generated = succeeded(alice, generated)
    assert generated["metrics"]["rows_scored"] == 200
    run_id = generated["tracking_run_id"]
    assert tags(platform, run_id)["scored_with_version"] == "1"  # "latest"
    rows = list(csv.DictReader(io.StringIO(
        artifact_text(platform, run_id, "predictions/predictions.csv"))))
    assert len(rows) == 200 and {r["prediction"] for r in rows} <= {"0", "1", "2"}
    summary = json.loads(artifact_text(platform, run_id, "predictions/summary.json"))
    assert summary["rows"] == 200 and sum(summary["predictions"].values()) == 200

    from_file = succeeded(alice, from_file)
    assert from_file["metrics"]["rows_scored"] == len(features)
    rows = list(csv.DictReader(io.StringIO(
        artifact_text(platform, from_file["tracking_run_id"], "predictions/scored.csv"))))
    assert [r["id"] for r in rows] == list(features["id"])  # the user's columns are kept
    assert {r["prediction"] for r in rows} <= {"0", "1", "2"}
