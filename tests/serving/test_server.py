"""The model server of a replica, run as the control plane runs it: a real process, real HTTP.

Models are built the way Fermi's training jobs build them: ``mlflow.sklearn.save_model`` of a
StandardScaler + LogisticRegression pipeline fitted on the wine DataFrame, with an input example
(so the MLmodel has a column signature), in the default skops format and as cloudpickle. Variants
of it are made by hand: one that takes seconds to unpickle (to see live before ready), one that is
corrupt, and one that only scores DataFrames (to see the server restart itself with pandas).

As the platform runs them, replicas have a key (``FERMI_REPLICA_KEY``) and answer only requests
that show it; the cloudpickle replica runs without one, as a server run by hand does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest
import yaml

from fermi_extension.processes import free_port, wait_for
from fermi_extension.serving import server, v2
from fermi_extension.serving.replica_key import replica_key

ROOT = Path(__file__).resolve().parents[2]
NAME, VERSION = "wine", "3"


class Replica:
    """``python -m fermi_extension.serving.server`` on a free port (or at ``url``, an address as
    the router reads it), stderr kept in a file; with ``keyed``, its key derived as the control
    plane derives it (from the url as written), and the client shows it."""

    def __init__(self, model_dir: Path, log_dir: Path, name: str = NAME, version: str = VERSION,
                 keyed: bool = False, url: str | None = None):
        self.url = url or f"http://127.0.0.1:{free_port()}"
        address = urlsplit(self.url)
        host, self.port = address.hostname, address.port or 80  # http://HOST is port 80
        self.log = log_dir / f"replica-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "FERMI_REPLICA_KEY"}
        self.key = replica_key("admin-secret", self.url) if keyed else None
        headers = {}
        if self.key:
            env["FERMI_REPLICA_KEY"] = self.key
            headers["Authorization"] = f"Bearer {self.key}"
        with open(self.log, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fermi_extension.serving.server",
                 "--model-dir", str(model_dir), "--model-name", name,
                 "--model-version", version, "--host", host, "--port", str(self.port)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env,
            )
        self.client = httpx.Client(base_url=self.url, timeout=10, headers=headers)

    def status(self, path: str) -> int | None:
        try:
            return self.client.get(path).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 30) -> None:
        ready = wait_for(lambda: self.process.poll() is not None
                         or self.status("/v2/health/ready") == 200, timeout, 0.05)
        assert ready and self.process.poll() is None, self.stderr()

    def infer(self, payload, path: str = f"/v2/models/{NAME}/infer") -> httpx.Response:
        if isinstance(payload, (dict, list)):
            return self.client.post(path, json=payload)
        return self.client.post(path, content=payload)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def tensor(rows: np.ndarray, nested: bool = False) -> dict:
    data = rows.tolist() if nested else rows.ravel().tolist()
    return {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": data}


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(wine, tmp_path_factory) -> dict:
    """Model directories: skops, cloudpickle, slow (1.5 s to unpickle), broken, frames (only
    scores DataFrames); and ``frames_model``, the pipeline in ``frames``."""
    import mlflow.sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, pipeline = wine
    root = tmp_path_factory.mktemp("models")
    # Naming the requirements skips mlflow's inference of them (~10 s a model); the server reads
    # neither requirements.txt nor conda.yaml.
    save = functools.partial(mlflow.sklearn.save_model, pip_requirements=["scikit-learn", "skops"])
    warnings.filterwarnings("ignore", module="mlflow")  # schema hints about integer columns
    dirs = {"skops": root / "skops", "cloudpickle": root / "cloudpickle"}
    save(pipeline, dirs["skops"], input_example=X[:2])
    save(pipeline, dirs["cloudpickle"], input_example=X[:2], serialization_format="cloudpickle")

    dirs["slow"] = root / "slow"
    shutil.copytree(dirs["cloudpickle"], dirs["slow"])
    mlmodel = yaml.safe_load((dirs["slow"] / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "pickle"
    (dirs["slow"] / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (dirs["slow"] / "model.pkl").write_bytes(pickle.dumps(_SlowToUnpickle(pipeline, 1.5)))

    dirs["broken"] = root / "broken"
    shutil.copytree(dirs["cloudpickle"], dirs["broken"])
    (dirs["broken"] / "model.pkl").write_bytes(b"this is not a pickle")

    # String column selectors only work on DataFrames: the lean (pandas-free) process cannot
    # score this one and must restart itself with pandas.
    frames_only = make_pipeline(
        ColumnTransformer([("scaled", StandardScaler(), ["alcohol", "proline", "hue"])]),
        LogisticRegression(max_iter=500),
    ).fit(X, pipeline.predict(X))
    dirs["frames"] = root / "frames"
    save(frames_only, dirs["frames"], input_example=X[:2])
    dirs["frames_model"] = frames_only
    return dirs


class _SlowToUnpickle:
    """Unpickles (with stdlib callables only) to ``model`` after sleeping ``seconds``."""

    def __init__(self, model, seconds: float):
        self.model, self.seconds = model, seconds

    def __reduce__(self):
        import operator

        return operator.getitem, ((_Sleep(self.seconds), self.model), 1)


class _Sleep:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __reduce__(self):
        return time.sleep, (self.seconds,)


@pytest.fixture(scope="module")
def replicas(models, tmp_path_factory):
    """The skops, the cloudpickle and the frames-only model, each served by a replica (started
    together: loading is mostly waiting on imports). The skops and frames replicas have a key
    (the frames one keeps it across its restart with pandas); the cloudpickle one has none."""
    logs = tmp_path_factory.mktemp("logs")
    running = {kind: Replica(models[kind], logs, keyed=kind != "cloudpickle")
               for kind in ("skops", "cloudpickle", "frames")}
    try:
        for replica in running.values():
            replica.wait_ready()
        yield running
    finally:
        for replica in running.values():
            replica.stop()


@pytest.fixture(params=["skops", "cloudpickle"])
def replica(request, replicas) -> Replica:
    return replicas[request.param]


@pytest.fixture
def skops_replica(replicas) -> Replica:
    return replicas["skops"]


# -- scoring --------------------------------------------------------------------------------------


def test_a_2d_tensor_flat_or_nested_scores_like_the_pipeline(replica, wine):
    X, pipeline = wine
    rows = X.iloc[[0, 60, 130, 177]].to_numpy()
    for nested in (False, True):
        response = replica.infer({"id": "req-1", "inputs": [tensor(rows, nested)]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == NAME and body["model_version"] == VERSION
        assert body["id"] == "req-1"
        v2.InferenceResponse.model_validate(body)  # the protocol's type, field for field
        [output] = body["outputs"]
        assert output["name"] == "predict" and output["datatype"] == "INT64"
        assert output["shape"] == [4]
        assert output["data"] == pipeline.predict(X.iloc[[0, 60, 130, 177]]).tolist()
        assert set(output["data"]) == {0, 1, 2}


def test_one_tensor_per_column_named_after_the_signature(replica, wine):
    X, pipeline = wine
    picked = X.iloc[[5, 70, 140]]
    inputs = [{"name": column, "shape": [3], "datatype": "FP64", "data": picked[column].tolist()}
              for column in reversed(X.columns)]  # order does not matter, names do
    response = replica.infer({"inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == pipeline.predict(picked).tolist()
    assert response.json()["id"]  # one is made up when the request has none


def test_integer_datatypes_are_accepted_and_probabilities_can_be_asked_for(skops_replica, wine):
    X, pipeline = wine
    rows = X.iloc[[10, 100]].round().astype(np.int64)
    response = skops_replica.infer({
        "inputs": [{"name": "input-0", "shape": [2, 13], "datatype": "INT64",
                    "data": rows.to_numpy().ravel().tolist()}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    })
    assert response.status_code == 200, response.text
    predict, proba = response.json()["outputs"]
    assert predict["data"] == pipeline.predict(rows).tolist()
    assert proba["name"] == "predict_proba" and proba["datatype"] == "FP64"
    assert proba["shape"] == [2, 3]
    assert np.allclose(proba["data"], pipeline.predict_proba(rows).ravel())


def test_concurrent_requests_each_get_their_own_answer(skops_replica, wine):
    """Requests arriving together are scored in one call; the answers must not mix, and one bad
    request must not spoil its neighbours."""
    X, pipeline = wine
    expected = pipeline.predict(X)

    async def burst():
        async with httpx.AsyncClient(base_url=skops_replica.url, timeout=10,
                                     headers=skops_replica.client.headers) as client:
            async def one(i):
                rows = X.iloc[[i, (i * 7) % len(X)][: 1 + i % 2]].to_numpy()
                payload = tensor(rows)
                if i == 13:
                    payload["data"][0] = None  # a NaN: sklearn refuses the whole call
                response = await client.post(f"/v2/models/{NAME}/infer",
                                             json={"id": str(i), "inputs": [payload]})
                return i, rows, response
            return await asyncio.gather(*(one(i) for i in range(80)))

    for i, rows, response in asyncio.run(burst()):
        if i == 13:
            assert response.status_code == 400
            assert "could not score this input" in error_of(response)
            continue
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == str(i)
        want = [expected[i], expected[(i * 7) % len(X)]][: len(rows)]
        assert body["outputs"][0]["data"] == [int(v) for v in want]


def test_pipelined_chunked_and_expect_continue_requests_are_answered_in_order(skops_replica, wine):
    X, _ = wine
    body = json.dumps({"inputs": [tensor(X.iloc[[0]].to_numpy())]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:20], body[20:]))
    auth = f"Authorization: Bearer {skops_replica.key}\r\n".encode()
    infer = f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\n".encode() + auth
    wire = (infer + b"Content-Length: %d\r\n\r\n" % len(body) + body
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
            + infer + b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
            + b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n")
    with socket.create_connection(("127.0.0.1", skops_replica.port), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 4
    assert b'"model_name":"wine"' in answers[0] and b'"live":true' in answers[1]
    assert b'"model_name":"wine"' in answers[2] and b"fermi-model-server" in answers[3]

    with socket.create_connection(("127.0.0.1", skops_replica.port), timeout=10) as sock:
        sock.sendall(infer + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


# -- metadata and health --------------------------------------------------------------------------


def test_server_and_model_metadata(skops_replica, wine):
    X, _ = wine
    client = skops_replica.client
    server = client.get("/v2").json()
    assert server["name"] == "fermi-model-server"
    assert server["extensions"] == ["binary_tensor_data"]  # as Triton names it
    assert server["version"]
    model = client.get(f"/v2/models/{NAME}").json()
    assert model == client.get(f"/v2/models/{NAME}/versions/{VERSION}").json()
    assert model["name"] == NAME and model["versions"] == [VERSION]
    assert model["platform"] == "sklearn"
    [input_0] = model["inputs"]
    assert input_0["name"] == "input-0" and input_0["datatype"] == "FP64"
    assert input_0["shape"] == [-1, 13]
    assert input_0["parameters"]["columns"] == list(X.columns)
    assert model["outputs"][0] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
    assert [o["name"] for o in model["outputs"]] == ["predict", "predict_proba"]
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready",
                 f"/v2/models/{NAME}/versions/{VERSION}/ready"):
        assert client.get(path).status_code == 200, path
    assert client.head("/v2/health/ready").status_code == 200


# -- the replica key ------------------------------------------------------------------------------


def test_with_a_key_only_requests_that_show_it_are_answered(skops_replica, wine):
    """Anything that reaches the port but is not the router (it alone knows the key) gets 401,
    health checks included, and its connection is closed."""
    X, _ = wine
    payload = {"inputs": [tensor(X.iloc[[0]].to_numpy())]}
    url = skops_replica.url
    infer = f"{url}/v2/models/{NAME}/infer"
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {skops_replica.key}"},
                    {"Authorization": f"Bearer {skops_replica.key}x"},
                    {"Authorization": f"Bearer {replica_key('admin-secret', url + '/')}"},
                    {"X-API-Key": skops_replica.key}):
        refused = httpx.post(infer, json=payload, headers=headers)
        assert refused.status_code == 401, headers
        assert "router" in error_of(refused) and refused.headers["connection"] == "close"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{NAME}"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
    shown = {"Authorization": f"bearer  {skops_replica.key}"}  # the scheme is case-insensitive
    assert httpx.post(infer, json=payload, headers=shown).status_code == 200

    # refused on its head: no 100 Continue, the body is never read, nothing after it is answered
    with socket.create_connection(("127.0.0.1", skops_replica.port), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\n".encode()
                     + b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and received.count(b"HTTP/1.1") == 1


def test_without_a_key_the_server_answers_anyone(replicas):
    standalone = replicas["cloudpickle"]
    assert standalone.key is None
    assert httpx.get(f"{standalone.url}/v2/health/ready").status_code == 200


def test_the_key_is_taken_out_of_the_environment_before_anything_runs(monkeypatch):
    """Neither the model's code nor any process it starts inherits the key."""
    seen = {}

    async def fake_serve(args, key=None):
        seen.update(key=key, env=os.environ.get("FERMI_REPLICA_KEY"))
        return 0

    monkeypatch.setenv("FERMI_REPLICA_KEY", "k-123")
    monkeypatch.setattr(server, "serve", fake_serve)
    assert server.main(["--model-dir", "d", "--model-name", "m", "--model-version", "1",
                        "--port", "0"]) == 0
    assert seen == {"key": "k-123", "env": None}
    assert "FERMI_REPLICA_KEY" not in os.environ


def test_live_at_once_ready_only_once_loaded(models, tmp_path):
    replica = Replica(models["slow"], tmp_path)  # takes 1.5 s to unpickle
    try:
        assert wait_for(lambda: replica.status("/v2/health/live") == 200, 15, 0.05), \
            replica.stderr()
        assert replica.status("/v2/health/ready") == 503
        assert replica.status(f"/v2/models/{NAME}/ready") == 503
        early = replica.infer({"inputs": [tensor(np.zeros((1, 13)))]})
        assert early.status_code == 503 and "still loading" in error_of(early)
        replica.wait_ready()
        assert replica.status(f"/v2/models/{NAME}/ready") == 200
        assert replica.infer({"inputs": [tensor(np.zeros((1, 13)))]}).status_code == 200
    finally:
        replica.stop()


def test_the_lean_process_keeps_pandas_out_and_stays_under_250_mb(skops_replica):
    process = psutil.Process(skops_replica.process.pid)
    assert not [m.path for m in process.memory_maps() if "pandas" in m.path]
    assert process.memory_info().rss < 250 * 10**6


def test_a_model_that_needs_dataframes_gets_them_after_a_restart_with_pandas(replicas, models,
                                                                            wine):
    X, _ = wine
    replica = replicas["frames"]
    rows = X.iloc[[1, 90, 150]]
    response = replica.infer({"inputs": [tensor(rows.to_numpy())]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == models["frames_model"].predict(rows).tolist()
    assert "restarting with pandas" in replica.stderr()  # the same process, re-executed


# -- errors ---------------------------------------------------------------------------------------

ROW = [13.0, 2.0, 2.4, 19.0, 100.0, 2.3, 2.0, 0.36, 1.6, 5.0, 0.96, 2.6, 750.0]


def _column_inputs(names):
    return [{"name": n, "shape": [1], "datatype": "FP64", "data": [1.0]} for n in names]


BAD_REQUESTS = [
    # (path, body, status, words the error must contain)
    ("/v2/models/nope/infer", {"inputs": []}, 404, ["unknown model 'nope'", "'wine'"]),
    (f"/v2/models/{NAME}/versions/9/infer", {"inputs": []}, 404, ["unknown version '9'"]),
    (f"/v2/models/{NAME}/infer", b"{not json", 400, ["not JSON"]),
    (f"/v2/models/{NAME}/infer", {"instances": [ROW]}, 400, ['"inputs"']),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [2, 13],
                                              "datatype": "FP64", "data": ROW}]},
     400, ["shape [2, 13] holds 26 values", "data has 13"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, 12],
                                              "datatype": "FP64", "data": ROW[:12]}]},
     400, ["expects 13 columns", "alcohol", "got 12"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, 13],
                                              "datatype": "FP128", "data": ROW}]},
     400, ["unknown datatype 'FP128'", "FP64"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, 13],
                                              "datatype": "FP64", "data": ["a"] * 13}]},
     400, ["not a list of FP64 values"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [13],
                                              "datatype": "FP64", "data": ROW}]},
     400, ["shape [13]", "[1, 13]"]),
    (f"/v2/models/{NAME}/infer", {"inputs": _column_inputs(["alcohol", "hue"])},
     400, ["expects 13 columns, got 2", "missing", "proline"]),
    (f"/v2/models/{NAME}/infer", {"inputs": _column_inputs(["alcohol", "colour"])},
     400, ["unknown input 'colour'"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, 13],
                                              "datatype": "FP64", "data": ROW}],
                                  "outputs": [{"name": "embedding"}]},
     400, ["unknown output 'embedding'", "predict"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, 13],
                                              "datatype": "FP64", "data": [None] * 13}]},
     400, ["could not score this input", "NaN"]),
    (f"/v2/models/{NAME}/infer", [ROW], 400, ['JSON object with an "inputs" list']),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [0, 13],
                                              "datatype": "FP64", "data": []}]},
     400, ["no rows"]),
    (f"/v2/models/{NAME}/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
     ["nested too deeply"]),
    (f"/v2/models/{NAME}/infer", b'{"inputs": [{"name": "input-0", "shape": [1, 13], '
                                 b'"datatype": "FP64", "data": ' + b"[" * 3000 + b"]" * 3000
                                 + b"}]}", 400, ["nested too deeply"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": [1, -13],
                                              "datatype": "FP64", "data": ROW}]},
     400, ["non-negative integers"]),
    (f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "shape": "1x13",
                                              "datatype": "FP64", "data": ROW}]},
     400, ["inputs[0].shape", "e.g. [1, 13]"]),
    (f"/v2/models/{NAME}/infer", {"id": 7, "inputs": [{"name": "input-0", "shape": [1, 13],
                                                       "datatype": "FP64", "data": ROW}]},
     400, ["id", "string"]),
    ("/v2/nowhere", None, 404, ["no such route"]),
    (f"/v2/models/{NAME}", {"inputs": []}, 405, ["use GET"]),
]


@pytest.mark.parametrize("path, body, status, words", BAD_REQUESTS,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_that_says_what_to_fix(skops_replica, path, body, status, words):
    client = skops_replica.client
    if body is None:
        response = client.get(path)
    elif isinstance(body, bytes):
        response = client.post(path, content=body)
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    message = error_of(response)
    for word in words:
        assert word in message, message
    assert client.get("/v2/health/ready").status_code == 200  # and the server lives on


def test_a_model_that_cannot_load_exits_3_saying_why(models, tmp_path):
    for model_dir, words in ((models["broken"], "UnpicklingError"),
                             (tmp_path / "missing", "MLmodel does not exist")):
        replica = Replica(model_dir, tmp_path)
        try:
            assert replica.process.wait(30) == 3
            assert words in replica.stderr()
        finally:
            replica.stop()


# -- shutdown -------------------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_then_exits_0(models, wine, tmp_path):
    X, pipeline = wine
    replica = Replica(models["skops"], tmp_path)
    try:
        replica.wait_ready()
        body = json.dumps({"inputs": [tensor(X.iloc[[42]].to_numpy())]}).encode()
        with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
            sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\n".encode()
                         + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(0.2)
            replica.process.send_signal(signal.SIGTERM)
            # no new connections once the signal is handled
            assert wait_for(lambda: replica.status("/v2/health/live") is None, 5, 0.05)
            assert replica.process.poll() is None  # still waiting for our request
            sock.sendall(body[10:])
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in answer
        data = json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"]
        assert data == pipeline.predict(X.iloc[[42]]).tolist()
        assert replica.process.wait(10) == 0
    finally:
        replica.stop()
    assert "stopped" in replica.stderr()

