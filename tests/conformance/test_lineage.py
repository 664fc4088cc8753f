"""One job entry point on every backend: the same attempt leaves the same lineage (snapshot →
run → datasets → output), finds its datasets at the same place under the same names, reports
cell progress, and ends its MLflow run from papermill's outcome — whether it ran as a local
process or as a Kubernetes pod."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .drivers import FAILS, KubernetesDriver, LocalDriver, notebook

# what the notebook saw, written where the test can read it (its working folder)
SEES = notebook(
    "import json, os\n"
    "rows = open('datasets/wine/rows.csv').read()\n"
    "named = os.environ['FERMI_DATASET_WINE']\n"
    "json.dump({'rows': rows, 'named': os.path.relpath(named, os.getcwd()),\n"
    "           'same': os.path.samefile(named, 'datasets/wine'),\n"
    "           'run': os.environ.get('MLFLOW_RUN_ID'), 'job': os.environ.get('FERMI_JOB_ID'),\n"
    "           'tracking': os.environ.get('MLFLOW_TRACKING_URI'), 'x': x},\n"
    "          open('seen.json', 'w'))")
ROWS = "a,b\n1,2\n"
RUN = {"MLFLOW_RUN_ID": "0123456789abcdef", "MLFLOW_EXPERIMENT_ID": "7"}


class TrackingStub:
    """An HTTP server standing where MLflow would: it records what the job asks of it."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.calls.append((self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ended(self) -> list[tuple[str, str]]:
        return [(body["run_id"], body["status"]) for path, body in self.calls
                if path == "/api/2.0/mlflow/runs/update"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tracking():
    stub = TrackingStub()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def dataset_claims(monkeypatch):
    monkeypatch.setenv("FERMI_DATASET_CLAIMS", "datasets")  # the claim kubernetes datasets use


async def run_attempt(driver, runtime, tracking, nb, parameters=None):
    driver.tracking_uri = tracking.url
    wine = driver.dataset("wine", {"rows.csv": ROWS})
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, nb,
                                        runtime.model_copy(update={"datasets": [wine]}),
                                        parameters, env=RUN)
    outcome = await asyncio.wait_for(backend.wait(handle, files, None), 90)
    return outcome, files, wine


def normalised(lineage: dict) -> dict:
    """What must not differ between backends: all but ids, clocks and where the data lives."""
    out = {k: v for k, v in lineage.items()
           if k not in ("job_id", "started_at", "ended_at", "output", "warm_kernel")}
    out["datasets"] = [{k: v for k, v in d.items() if k not in ("location", "kind", "seen_as")}
                       for d in lineage["datasets"]]
    return out


async def test_lineage_datasets_progress_and_run_end_come_from_the_entry_point(
        driver, runtime, tracking):
    outcome, files, wine = await run_attempt(driver, runtime, tracking, SEES, {"x": 21})
    assert (outcome.status, outcome.lost) == ("succeeded", False), (outcome, files.log.read_text())
    seen = json.loads((files.workdir / "seen.json").read_text())
    # the dataset at datasets/NAME, named by $FERMI_DATASET_NAME, on every backend
    assert seen == {"rows": ROWS, "named": "datasets/wine", "same": True, "run": RUN["MLFLOW_RUN_ID"],
                    "job": files.root.name, "tracking": tracking.url, "x": 21}
    lineage = json.loads(files.root.joinpath("lineage.json").read_text())
    assert lineage["snapshot"] == {
        "name": "input.ipynb", "sha256": hashlib.sha256(files.snapshot.read_bytes()).hexdigest()}
    assert lineage["output"] == {
        "name": "output.ipynb", "sha256": hashlib.sha256(files.output.read_bytes()).hexdigest()}
    assert (lineage["run_id"], lineage["experiment_id"]) == (RUN["MLFLOW_RUN_ID"], "7")
    assert (lineage["status"], lineage["parameters"]) == ("succeeded", {"x": 21})
    assert [{k: d[k] for k in ("name", "version", "location", "kind", "env", "path")}
            for d in lineage["datasets"]] == [
        {"name": "wine", "version": "1", "location": wine.location, "kind": wine.kind,
         "env": "FERMI_DATASET_WINE", "path": "datasets/wine"}]
    progress = json.loads(files.progress.read_text())
    # the parameters cell, the one papermill injects, the notebook's own
    assert progress["cells_done"] == progress["cells_total"] == 3
    # ended by the job itself from papermill's outcome (MLflow would leave it as it was)
    assert tracking.ended() == [(RUN["MLFLOW_RUN_ID"], "FINISHED")]


async def test_a_failing_notebook_ends_its_run_failed_and_says_so_in_its_lineage(
        driver, runtime, tracking):
    outcome, files, _ = await run_attempt(driver, runtime, tracking, FAILS)
    assert outcome.status == "failed" and "boom" in outcome.reason, outcome
    lineage = json.loads(files.root.joinpath("lineage.json").read_text())
    assert lineage["status"] == "failed" and "ValueError: boom" in lineage["reason"]
    assert tracking.ended() == [(RUN["MLFLOW_RUN_ID"], "FAILED")]


async def test_the_same_attempt_leaves_the_same_lineage_on_both_backends(
        tmp_path, runtime, tracking):
    pytest.importorskip("kmock")
    lineages = []
    for made in (LocalDriver(tmp_path / "local"), KubernetesDriver(tmp_path / "kube",
                                                                    run_pods=True)):
        async with made as driver:
            outcome, files, _ = await run_attempt(driver, runtime, tracking, SEES, {"x": 3})
            assert outcome.status == "succeeded", (outcome, files.log.read_text())
            lineages.append(json.loads(files.root.joinpath("lineage.json").read_text()))
    local, kube = lineages
    assert normalised(local) == normalised(kube)
    assert local["snapshot"]["sha256"] == kube["snapshot"]["sha256"]
