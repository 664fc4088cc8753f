"""Real V2 clients that no one here wrote, against a real replica process serving a real MLflow
sklearn model; and a real MLServer asked the same questions about the same model directory.

- NVIDIA's ``tritonclient.http``: server/model metadata and readiness, and infer with binary
  tensors (the client's default, the binary tensor data extension both ways) and with JSON
  tensors (``binary_data=False``, which the client still marks with ``binary_data: false``).
- KServe's SDK (``kserve.InferenceRESTClient``, protocol v2): readiness and infer. Its pins
  (older pandas, psutil, protobuf) clash with the platform's, so it runs from a venv of its own
  (``benchmarks/common.py:ensure_kserve_venv``), driven through a subprocess.
- MLServer 1.7 with its MLflow runtime (``mlserver-mlflow``) from the venv the P3 benchmark uses
  (``ensure_mlserver_venv``): model metadata, an infer, and errors, compared with ours.

The side venvs are built on first use (minutes) and cached; a test that needs one is skipped,
saying why, only when it cannot be built here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from fermi_extension.processes import free_port, wait_for
from tests.serving.test_server import NAME, VERSION, Replica

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _benchmarks_common():
    """benchmarks/common.py (its side-venv helpers), loaded by path: the folder is no package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fermi_benchmarks_common",
                                                  ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmarks_common()

WANTED_ROWS = [0, 60, 130, 177]


@pytest.fixture(scope="module")
def replica(model_dir, tmp_path_factory):
    """Our replica, keyless (as run by hand) so the clients need no extra header."""
    running = Replica(model_dir, tmp_path_factory.mktemp("logs"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def triton(replica):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{replica.port}")
    yield client
    client.close()


def _side_venv(ensure) -> Path:
    try:
        return Path(ensure()["venv"])
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"the side venv could not be built here: {e}")


# -- tritonclient ---------------------------------------------------------------------------------


def test_tritonclient_reads_metadata_and_readiness(triton, wine):
    X, _ = wine
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(NAME) and triton.is_model_ready(NAME, VERSION)
    server = triton.get_server_metadata()
    assert server["name"] == "fermi-model-server"
    assert "binary_tensor_data" in server["extensions"]
    model = triton.get_model_metadata(NAME)
    assert model == triton.get_model_metadata(NAME, VERSION)
    assert model["inputs"][0]["shape"] == [-1, 13]
    assert model["inputs"][0]["parameters"]["columns"] == list(X.columns)
    assert [o["name"] for o in model["outputs"]] == ["predict", "predict_proba"]
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("nope")
    assert unknown.value.status() == "404" and "unknown model 'nope'" in unknown.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_with_binary_and_json_tensors(triton, wine, binary):
    X, pipeline = wine
    rows = X.iloc[WANTED_ROWS].to_numpy()
    tensor = tritonclient_http.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)

    # no outputs named: the client asks for every output as binary data (binary_data_output)
    result = triton.infer(NAME, [tensor], request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    assert result.as_numpy("predict").tolist() == pipeline.predict(X.iloc[WANTED_ROWS]).tolist()

    # outputs named, each marked binary_data true or false
    outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
               for name in ("predict", "predict_proba")]
    result = triton.infer(NAME, [tensor], outputs=outputs)
    sent = {o["name"]: o for o in result.get_response()["outputs"]}
    assert ("data" in sent["predict_proba"]) is not binary  # JSON when asked so
    assert ("binary_data_size" in (sent["predict_proba"].get("parameters") or {})) is binary
    assert result.as_numpy("predict").tolist() == pipeline.predict(X.iloc[WANTED_ROWS]).tolist()
    proba = result.as_numpy("predict_proba")
    assert proba.dtype == np.float64 and proba.shape == (4, 3)
    assert np.allclose(proba, pipeline.predict_proba(X.iloc[WANTED_ROWS]))


def test_tritonclient_per_column_and_integer_tensors(triton, wine):
    X, pipeline = wine
    picked = X.iloc[[5, 70, 140]]
    inputs = []
    for i, column in enumerate(X.columns):
        kind, values = ("INT64", picked[column].round().astype(np.int64).to_numpy()) \
            if column == "magnesium" else ("FP32" if i % 2 else "FP64", picked[column].to_numpy())
        tensor = tritonclient_http.InferInput(column, [3], kind)
        tensor.set_data_from_numpy(values.astype(np.float32) if kind == "FP32" else values)
        inputs.append(tensor)
    result = triton.infer(NAME, inputs)
    # FP32 columns round a little; the classes of these rows stay the same
    assert result.as_numpy("predict").tolist() == pipeline.predict(picked).tolist()


def test_binary_requests_that_do_not_add_up_get_a_400_saying_so(replica, wine):
    X, _ = wine
    row = X.iloc[[0]].to_numpy()
    head = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 13], "datatype": "FP64",
                                   "parameters": {"binary_data_size": 104}}]}).encode()
    url = f"/v2/models/{NAME}/infer"
    cases = [
        (head + row.tobytes()[:-8], {"Inference-Header-Content-Length": str(len(head))},
         "goes past the end"),
        (head + row.tobytes() + b"xx", {"Inference-Header-Content-Length": str(len(head))},
         "no input's binary_data_size accounts for"),
        (head + row.tobytes(), {"Inference-Header-Content-Length": "many"},
         "Inference-Header-Content-Length"),
        (head, {}, "no Inference-Header-Content-Length header"),
    ]
    for body, headers, words in cases:
        response = replica.client.post(url, content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]
    ok = replica.client.post(url, content=head + row.tobytes(),
                             headers={"Inference-Header-Content-Length": str(len(head))})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"


def test_bytes_tensors_go_both_ways_length_prefixed(model_dir, tmp_path):
    """A BYTES output in binary is 4-byte little-endian lengths, each before its element; as
    the client decodes it. A model that answers strings: the wine classes named."""
    import pickle
    import shutil

    from sklearn.datasets import load_wine
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_wine(return_X_y=True)
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    named = tmp_path / "named"
    shutil.copytree(model_dir, named)
    model = DecisionTreeClassifier(random_state=0).fit(X, names)
    mlmodel = (named / "MLmodel").read_text().replace("serialization_format: skops",
                                                        "serialization_format: pickle")
    mlmodel = mlmodel.replace("pickled_model: model.skops", "pickled_model: model.pkl")
    (named / "MLmodel").write_text(mlmodel)
    (named / "model.pkl").write_bytes(pickle.dumps(model))
    running = Replica(named, tmp_path)
    try:
        running.wait_ready()
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{running.port}")
        tensor = tritonclient_http.InferInput("input-0", [3, 13], "FP64")
        tensor.set_data_from_numpy(X[[0, 60, 130]])
        for binary in (True, False):
            result = client.infer(NAME, [tensor], outputs=[
                tritonclient_http.InferRequestedOutput("predict", binary_data=binary)])
            got = [v.decode() if isinstance(v, bytes) else v
                   for v in result.as_numpy("predict").tolist()]
            assert got == model.predict(X[[0, 60, 130]]).tolist()
            assert result.get_output("predict")["datatype"] == "BYTES"
        client.close()
    finally:
        running.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")  # mlflow's hints about type hints
def test_a_pyfunc_model_answers_through_the_same_dataplane(tmp_path, wine):
    """Not every model is sklearn: a python_function model (through mlflow.pyfunc) answers the
    same client, binary both ways."""
    import mlflow.pyfunc

    X, _ = wine

    def make_model():
        class Weighted(mlflow.pyfunc.PythonModel):  # local: pickled by value, no import needed
            def predict(self, context, model_input, params=None):
                return model_input.to_numpy().sum(axis=1) * 2.0
        return Weighted()

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(path, python_model=make_model(), input_example=X[:2],
                             pip_requirements=["mlflow"])
    running = Replica(path, tmp_path)
    try:
        running.wait_ready(timeout=90)
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{running.port}")
        assert client.get_model_metadata(NAME)["platform"] == "mlflow"
        rows = X.iloc[[3, 4]].to_numpy()
        tensor = tritonclient_http.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer(NAME, [tensor])
        assert np.allclose(result.as_numpy("predict"), rows.sum(axis=1) * 2.0)
        client.close()
    finally:
        running.stop()


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT16", "INT64", "FP16", "FP32",
                                      "FP64", "BYTES"])
def test_the_codec_reads_what_tritonclient_writes_for_every_datatype(datatype):
    """Each datatype as tritonclient serialises it (binary and JSON) decodes to the same array,
    and our binary encoding of it is what tritonclient decodes back."""
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    from fermi_extension.serving import v2

    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        values = np.array([["vin", "rosé"], ["", "barolo"], ["x" * 300, "b"]], dtype=object)
    elif datatype == "BOOL":
        values = rng.random((3, 2)) > 0.5
    else:
        values = (rng.random((3, 2)) * 100).astype(triton_to_np_dtype(datatype))
    for binary in (True, False):
        tensor = tritonclient_http.InferInput("x", [3, 2], datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        sent = v2.RequestInput.model_validate(tensor._get_tensor())
        raw = tensor._get_binary_data()
        decoded = v2.decode_binary(sent, memoryview(raw)) if binary else v2.decode_tensor(sent)
        assert decoded.shape == (3, 2) and decoded.tolist() == values.tolist(), binary
    output, raw = v2.encode_output("y", values, binary=True)
    assert output["datatype"] == datatype and output["parameters"]["binary_data_size"] == len(raw)
    if datatype == "BYTES":
        back = [v.decode() for v in deserialize_bytes_tensor(raw)]
        assert back == values.ravel().tolist()
    else:
        back = np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).reshape(3, 2)
        assert back.tolist() == values.tolist()


# -- KServe's SDK ---------------------------------------------------------------------------------

KSERVE_DRIVER = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def main(base_url, model, rows):
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        answers = {"server_ready": await client.is_server_ready(base_url),
                   "model_ready": await client.is_model_ready(base_url, model)}
        data = np.array(rows, dtype=np.float64)
        for binary in (False, True):
            tensor = InferInput(name="input-0", shape=list(data.shape), datatype="FP64")
            tensor.set_data_from_numpy(data, binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[tensor],
                                   request_id=f"k-{binary}")
            response = await client.infer(base_url, request, model_name=model)
            [output] = response.outputs
            answers[f"binary={binary}"] = {"id": response.id, "name": output.name,
                                           "datatype": output.datatype,
                                           "data": output.as_numpy().tolist()}
        await client.close()
        print(json.dumps(answers))

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
""")


def test_kserve_sdk_checks_readiness_and_infers(replica, wine):
    X, pipeline = wine
    venv = _side_venv(bench.ensure_kserve_venv)
    rows = X.iloc[WANTED_ROWS].to_numpy().tolist()
    done = subprocess.run([str(venv / "bin" / "python"), "-c", KSERVE_DRIVER, replica.url, NAME,
                           json.dumps(rows)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["server_ready"] is True and answers["model_ready"] is True
    expected = pipeline.predict(X.iloc[WANTED_ROWS]).tolist()
    for binary in (False, True):
        answer = answers[f"binary={binary}"]
        assert answer == {"id": f"k-{binary}", "name": "predict", "datatype": "INT64",
                          "data": expected}, binary


# -- the same questions to MLServer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mlserver(model_dir, tmp_path_factory):
    """MLServer's MLflow runtime serving the same model directory, as ``NAME`` version
    ``VERSION``."""
    venv = _side_venv(bench.ensure_mlserver_venv)
    where = tmp_path_factory.mktemp("mlserver")
    (where / NAME).mkdir()
    (where / NAME / "model-settings.json").write_text(json.dumps({
        "name": NAME, "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir), "version": VERSION}}))
    port = free_port()
    (where / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "debug": False}))
    log = where / "mlserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(where)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            return True
        try:
            return httpx.get(f"{url}/v2/models/{NAME}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(ready, 180, 0.25) and process.poll() is None, \
            log.read_text(errors="replace")[-3000:]
        yield httpx.Client(base_url=url, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_model_metadata_has_the_shape_of_mlservers(mlserver, replica, wine):
    """Same top-level fields, tensors with the same fields and datatypes, the same column
    names in the same order. Allowed differences: MLServer lists one input per signature column
    (shape [-1, 1]); we list one 2-D ``input-0`` [-1, 13] with the columns in
    ``parameters.columns`` (documented, what the platform's clients send) and accept MLServer's
    per-column form too (see the infer comparison). MLServer's ``platform`` is empty, ours
    ``sklearn``; MLServer's ``versions`` is empty, ours names the one served; MLServer adds
    ``content_type`` parameters. MLServer names its single output ``output-0`` of shape [-1, 1]
    (we: ``predict`` of [-1], plus ``predict_proba`` for a classifier)."""
    X, _ = wine
    theirs = mlserver.get(f"/v2/models/{NAME}").json()
    ours = replica.client.get(f"/v2/models/{NAME}").json()
    assert set(ours) - {"parameters"} == set(theirs) - {"parameters"} == \
        {"name", "versions", "platform", "inputs", "outputs"}
    assert ours["name"] == theirs["name"] == NAME
    assert ours["versions"] == [VERSION] and isinstance(theirs["versions"], list)
    assert isinstance(theirs["platform"], str) and ours["platform"] == "sklearn"
    for tensor in theirs["inputs"] + theirs["outputs"] + ours["inputs"] + ours["outputs"]:
        assert set(tensor) - {"parameters"} == {"name", "datatype", "shape"}, tensor
        assert tensor["shape"][0] == -1  # any number of rows
    assert [t["name"] for t in theirs["inputs"]] == list(X.columns) == \
        ours["inputs"][0]["parameters"]["columns"]
    assert {t["datatype"] for t in theirs["inputs"]} == {ours["inputs"][0]["datatype"]} == {"FP64"}
    assert [t["datatype"] for t in theirs["outputs"]] == [ours["outputs"][0]["datatype"]] == \
        ["INT64"]


def _per_column_request(X, rows) -> dict:
    picked = X.iloc[rows]
    return {"id": "same-question", "inputs": [
        {"name": c, "shape": [len(rows)],
         "datatype": "INT64" if str(picked[c].dtype).startswith("int") else "FP64",
         "data": picked[c].tolist()} for c in X.columns]}


def test_an_infer_answers_like_mlservers(mlserver, replica, wine):
    """The same per-column request (MLServer's form of this model's inputs) to both: same
    top-level fields, id echoed, one output of the same datatype and predictions. Allowed
    differences: MLServer's output is ``output-1`` of shape [n, 1] with ``content_type``
    parameters (on the response and the output); ours ``predict`` of shape [n] (as sklearn's
    predict answers)."""
    X, pipeline = wine
    request = _per_column_request(X, WANTED_ROWS)
    theirs = mlserver.post(f"/v2/models/{NAME}/infer", json=request)
    ours = replica.client.post(f"/v2/models/{NAME}/infer", json=request)
    assert theirs.status_code == ours.status_code == 200, (theirs.text, ours.text)
    theirs, ours = theirs.json(), ours.json()
    assert set(ours) - {"parameters"} == set(theirs) - {"parameters"}
    assert ours["model_name"] == theirs["model_name"] == NAME
    assert ours["model_version"] == theirs["model_version"] == VERSION
    assert ours["id"] == theirs["id"] == "same-question"
    [their_output], [our_output] = theirs["outputs"], ours["outputs"]
    assert set(our_output) - {"parameters"} == set(their_output) - {"parameters"}
    assert our_output["datatype"] == their_output["datatype"]
    assert np.prod(our_output["shape"]) == np.prod(their_output["shape"]) == len(WANTED_ROWS)
    expected = pipeline.predict(X.iloc[WANTED_ROWS]).tolist()
    assert our_output["data"] == list(np.ravel(their_output["data"])) == expected


ERROR_CASES = {
    # case: (path, body or None for the per-column request of one row)
    "unknown model": ("/v2/models/nope/infer", None),
    "unknown version": (f"/v2/models/{NAME}/versions/9/infer", None),
    "wrong shape": (f"/v2/models/{NAME}/infer", "shape"),
    "no inputs": (f"/v2/models/{NAME}/infer", {"instances": [[1.0] * 13]}),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_bodies_like_mlservers(mlserver, replica, wine, case):
    """A missing model or version: both answer 404 ``{"error": "<sentence>"}``. Allowed
    differences, where MLServer breaks the rule that bad input gets a 4xx JSON sentence and we
    keep it: a tensor whose shape and data disagree gets 500 ``Internal Server Error`` in plain
    text from MLServer (its codec raises inside the runtime), 400 ``{"error"}`` from us; a body
    without ``inputs`` gets FastAPI's 422 ``{"detail": [...]}`` from MLServer, 400 ``{"error"}``
    saying what a request looks like from us."""
    X, _ = wine
    path, body = ERROR_CASES[case]
    if body is None:
        body = _per_column_request(X, [0])
    elif body == "shape":
        body = {"inputs": [{"name": "input-0", "shape": [2, 13], "datatype": "FP64",
                            "data": X.iloc[0].tolist()}]}
    theirs = mlserver.post(path, json=body)
    ours = replica.client.post(path, json=body)
    assert theirs.status_code >= 400, theirs.text
    assert list(ours.json()) == ["error"] and ours.json()["error"], ours.text
    if case.startswith("unknown"):
        assert ours.status_code == theirs.status_code == 404
        assert list(theirs.json()) == ["error"], theirs.text
        assert ("version" in ours.json()["error"]) == ("version" in theirs.json()["error"])
    else:
        assert ours.status_code == 400
        words = {"wrong shape": "holds 26 values but data has 13", "no inputs": '"inputs"'}
        assert words[case] in ours.json()["error"]
