"""The model server of one inference-service replica.

One process serves one MLflow model version over the KServe Open Inference Protocol V2 (REST).
The control plane starts it so (keep this stable)::

    FERMI_REPLICA_KEY=KEY python -m fermi_extension.serving.server --model-dir DIR \\
        --model-name NAME --model-version V --port P [--host 127.0.0.1]

Replicas accept only the router. ``FERMI_REPLICA_KEY`` (the replica's key, derived by the control
plane and the router alike, see ``fermi_extension.serving.replica_key``) is read at start and
removed from the environment, so the model's code and its children do not inherit it; while it is
set, every request, health checks included, must show ``Authorization: Bearer <key>`` or gets 401
``{"error": ...}`` and its connection closed, before its body is read. Unset, the server answers
anyone: for running it by hand, never as the platform runs it.

It listens at once and loads the model in the background: ``/v2/health/live`` answers 200 as soon
as the port is open, ``/v2/health/ready`` and ``/v2/models/{name}/ready`` 503 until the model is
loaded. A model that cannot be loaded is logged to stderr and the process exits with code 3; a port
that cannot be bound exits with code 1. SIGTERM (or SIGINT) stops accepting connections, lets the
requests in flight finish for up to 10 s, and exits 0.

Routes: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]``, ``GET /v2/models/{name}[/versions/{v}]/ready`` and
``POST /v2/models/{name}[/versions/{v}]/infer``. Errors answer ``{"error": "<what to fix>"}``.

Inputs. A model with a column-based signature (what ``mlflow.sklearn.log_model(...,
input_example=df)`` records) is described in its metadata as ONE tensor ``input-0`` of shape
``[-1, ncols]`` whose ``parameters.columns`` lists the column order. Requests may send either
that one 2-D tensor (``data`` row-major flat or nested) or one 1-D tensor per column, named after
the columns. The output is ``predict`` (and ``predict_proba`` for classifiers that have it, when
asked for in ``outputs``).

Speed and memory. sklearn-flavoured models are loaded with ``skops.io``/``pickle`` directly,
without importing mlflow, and with pandas kept out of the process (sklearn works without it; its
import alone is ~65 MB). A model that turns out to need pandas (it fails to load or to score its
own input example without it) makes the process re-execute itself once with pandas allowed,
keeping its listening socket. Other flavours go through ``mlflow.pyfunc``. HTTP/1.1 is spoken
directly over an asyncio protocol; infer requests that arrive together are scored in one call of
the model (sklearn's per-call validation costs far more than a row), and their answers split
again, so throughput holds up under concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

import numpy as np

from fermi_extension import __version__
from fermi_extension.errors import FermiError, InvalidInput, NotFound, Unavailable
from fermi_extension.serving.replica_key import ENV_REPLICA_KEY

log = logging.getLogger("fermi.model-server")

SERVER_NAME = "fermi-model-server"
EXIT_CANNOT_LISTEN = 1
EXIT_LOAD_FAILED = 3
DRAIN_SECONDS = 10.0  # how long SIGTERM waits for requests in flight
IDLE_SECONDS = 75.0  # keep-alive connections idle this long are closed (the router's pool uses 4 s)
HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 64 * 1024 * 1024
BATCH_ROWS = 64  # requests up to this many rows are scored together with their neighbours

# Set for the re-executed process (see `_reexec_with_pandas`); not an interface.
ENV_WITH_PANDAS = "FERMI_MODEL_SERVER_WITH_PANDAS"
ENV_LISTEN_FD = "FERMI_MODEL_SERVER_LISTEN_FD"


class MethodNotAllowed(FermiError):
    status = 405

    def __init__(self, message: str, allow: str):
        super().__init__(message)
        self.allow = allow


class ServerFault(FermiError):
    """The model itself failed on a well-formed request."""

    status = 500


class LoadError(Exception):
    """The model cannot be served; the message says why."""


class NeedsPandas(Exception):
    """The model could not be loaded or scored while pandas was kept out of the process."""


# -- V2 datatypes ---------------------------------------------------------------------------------

V2_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}

# MLflow signature types (column specs) and tensor dtypes.
_MLFLOW_TO_V2 = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
_NUMERIC_V2 = {name for name in V2_TO_NUMPY if name not in ("BYTES",)}


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype; anything that is not a number or a bool is BYTES."""
    return _NUMPY_TO_V2.get(np.dtype(dtype), "BYTES")


def _tensor_spec_datatype(dtype: str) -> str:
    try:
        return v2_datatype(np.dtype(dtype))
    except TypeError:
        return "BYTES"


# -- The model card: what MLmodel says ------------------------------------------------------------


class ModelCard:
    """What the ``MLmodel`` file of a model directory says, read without importing mlflow.

    ``columns`` are the signature's column names (None for a tensor signature or none at all);
    ``n_columns`` how many columns a row has when known.
    """

    def __init__(self, model_dir: str, mlmodel: dict):
        self.model_dir = model_dir
        self.flavors: dict = mlmodel.get("flavors") or {}
        self.sklearn: dict | None = self.flavors.get("sklearn")
        self.platform = "sklearn" if self.sklearn is not None else "mlflow"
        self.columns: list[str] | None = None
        self.column_types: list[str] = []  # MLflow's names: double, long, string, ...
        self.column_datatypes: list[str] = []
        self.tensor_ndim: int | None = None  # for a tensor signature
        self.tensor_dtype: np.dtype | None = None
        self.n_columns: int | None = None
        self.input_tensor = {"name": "input-0", "datatype": "FP64", "shape": [-1, -1]}
        self.output_tensor = {"name": "predict", "datatype": "FP64", "shape": [-1]}
        self.input_example = mlmodel.get("saved_input_example_info") or {}
        signature = mlmodel.get("signature") or {}
        self._read_inputs(_json_field(signature.get("inputs")))
        self._read_outputs(_json_field(signature.get("outputs")))

    def _read_inputs(self, spec) -> None:
        if not isinstance(spec, list) or not spec:
            return
        if spec[0].get("type") == "tensor":
            tensor = spec[0].get("tensor-spec") or {}
            shape = list(tensor.get("shape") or [-1])
            self.input_tensor = {
                "name": spec[0].get("name") or "input-0",
                "datatype": _tensor_spec_datatype(tensor.get("dtype", "float64")),
                "shape": shape,
            }
            if len(spec) == 1:
                self.tensor_ndim = len(shape)
                try:
                    self.tensor_dtype = np.dtype(tensor.get("dtype", "float64"))
                except TypeError:
                    pass
                if len(shape) == 2 and shape[1] > 0:
                    self.n_columns = shape[1]
            return
        self.column_types = [str(c.get("type")) for c in spec]
        self.column_datatypes = [_MLFLOW_TO_V2.get(t, "BYTES") for t in self.column_types]
        self.n_columns = len(spec)
        names = [c.get("name") for c in spec]
        if all(isinstance(n, str) for n in names):
            self.columns = names
        kinds = set(self.column_datatypes)
        if len(kinds) == 1:
            datatype = kinds.pop()
        else:
            datatype = "FP64" if kinds <= _NUMERIC_V2 else "BYTES"
        self.input_tensor = {"name": "input-0", "datatype": datatype, "shape": [-1, self.n_columns]}
        if self.columns:
            self.input_tensor["parameters"] = {"columns": list(self.columns)}

    def _read_outputs(self, spec) -> None:
        if not isinstance(spec, list) or not spec:
            return
        if spec[0].get("type") == "tensor":
            tensor = spec[0].get("tensor-spec") or {}
            self.output_tensor = {
                "name": "predict",
                "datatype": _tensor_spec_datatype(tensor.get("dtype", "float64")),
                "shape": list(tensor.get("shape") or [-1]),
            }
            return
        datatypes = {_MLFLOW_TO_V2.get(str(c.get("type")), "BYTES") for c in spec}
        datatype = datatypes.pop() if len(datatypes) == 1 else "BYTES"
        shape = [-1] if len(spec) == 1 else [-1, len(spec)]
        self.output_tensor = {"name": "predict", "datatype": datatype, "shape": shape}

    def example_rows(self) -> tuple[np.ndarray, list[str] | None] | None:
        """The saved input example as a 2-D array (and its column names), if it is a table."""
        path = self.input_example.get("artifact_path")
        if not path:
            return None
        try:
            with open(os.path.join(self.model_dir, path), encoding="utf-8") as f:
                example = json.load(f)
        except (OSError, ValueError):
            return None
        columns = None
        if isinstance(example, dict) and isinstance(example.get("data"), list):
            columns = example.get("columns")
            example = example["data"]
        elif isinstance(example, dict) and isinstance(example.get("inputs"), list):
            example = example["inputs"]
        try:
            rows = np.array(example, dtype=object)
        except (ValueError, TypeError):
            return None
        if rows.ndim != 2:
            return None
        if all(isinstance(v, (int, float)) for v in rows.flat):  # else mixed: keep each value
            rows = rows.astype(np.float64)
        return rows, columns if isinstance(columns, list) else None


def _json_field(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def read_model_card(model_dir: str) -> ModelCard:
    import yaml

    path = os.path.join(model_dir, "MLmodel")
    try:
        with open(path, encoding="utf-8") as f:
            mlmodel = yaml.safe_load(f)
    except FileNotFoundError:
        raise LoadError(f"{path} does not exist; --model-dir must be an MLflow model directory")
    except (OSError, yaml.YAMLError) as e:
        raise LoadError(f"cannot read {path}: {e}")
    if not isinstance(mlmodel, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise LoadError(f"{path} has no flavors; it is not an MLflow model")
    flavors = mlmodel["flavors"]
    if "sklearn" not in flavors and "python_function" not in flavors:
        raise LoadError(
            f"the model in {model_dir} has neither the sklearn nor the python_function flavor "
            f"(it has {', '.join(flavors) or 'none'}); log it with a flavor that can predict"
        )
    return ModelCard(model_dir, mlmodel)


# -- Keeping pandas out ---------------------------------------------------------------------------


class _PandasBlocker:
    """A meta-path finder that makes pandas look not installed (sklearn supports that)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of the model server)",
                                      name=name)
        return None


SKOPS_SCAN_SKIPS = ("sklearn.externals.array_api_compat.torch",)


def block_pandas() -> None:
    if "pandas" not in sys.modules and _PandasBlocker not in sys.meta_path:
        sys.meta_path.insert(0, _PandasBlocker)


def _blames_pandas(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError) and "pandas" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# -- Predictors -----------------------------------------------------------------------------------


class Predictor:
    """A loaded model: ``run(X, outputs)`` scores a 2-D array and returns one array per output."""

    outputs: tuple[str, ...] = ("predict",)
    n_features: int | None = None
    n_classes: int | None = None
    permutation: np.ndarray | None = None  # request column order -> the model's column order

    def run(self, rows: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _allow_deserialization() -> bool:
    # The same switch mlflow honours for every sklearn serialization format (default: allowed).
    value = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true").strip().lower()
    return value not in ("false", "0", "no")


class SklearnPredictor(Predictor):
    """An sklearn-flavoured model loaded as mlflow.sklearn would, without mlflow."""

    def __init__(self, card: ModelCard, pandas_allowed: bool):
        conf = card.sklearn
        model_file = os.path.join(card.model_dir, conf.get("pickled_model") or "model.pkl")
        if conf.get("code"):
            sys.path.insert(0, os.path.join(card.model_dir, conf["code"]))
        if not _allow_deserialization():
            raise LoadError(
                "loading this model is disallowed because MLFLOW_ALLOW_PICKLE_DESERIALIZATION is "
                "false; set it to true to serve models from trusted sources"
            )
        form = conf.get("serialization_format", "pickle")
        if form == "skops":
            # skops imports every module of scikit-learn to learn its types, and one of them
            # (the array-API shim for torch) imports all of torch where torch is installed:
            # +100 MB per replica for nothing an sklearn model uses. Skipped modules are ones
            # skops' own scan tolerates failing to import.
            for module in SKOPS_SCAN_SKIPS:
                sys.modules.setdefault(module, None)
            import skops.io

            self.model = skops.io.load(model_file, trusted=conf.get("skops_trusted_types"))
        elif form in ("pickle", "cloudpickle"):
            if form == "cloudpickle":
                import cloudpickle as pickle_lib
            else:
                import pickle as pickle_lib
            with open(model_file, "rb") as f:
                self.model = pickle_lib.load(f)
        else:
            raise LoadError(f"unknown sklearn serialization_format {form!r} in MLmodel")
        if not hasattr(self.model, "predict"):
            raise LoadError(f"the model ({type(self.model).__name__}) has no predict method")
        self.outputs = ("predict", "predict_proba") if _has_method(self.model, "predict_proba") \
            else ("predict",)
        n = getattr(self.model, "n_features_in_", None)
        self.n_features = int(n) if isinstance(n, (int, np.integer)) else None
        classes = getattr(self.model, "classes_", None)
        self.n_classes = len(classes) if classes is not None and np.ndim(classes) == 1 else None
        self.frame_columns: list[str] | None = None
        self.pandas_allowed = pandas_allowed
        self._align_columns(card)

    def _align_columns(self, card: ModelCard) -> None:
        """Clients follow the signature's column order; the model wants its own."""
        trained = getattr(self.model, "feature_names_in_", None)
        if trained is None or not card.columns:
            return
        trained = [str(c) for c in trained]
        if trained == card.columns:
            return
        if sorted(trained) == sorted(card.columns):
            position = {c: i for i, c in enumerate(card.columns)}
            self.permutation = np.array([position[c] for c in trained])
        else:
            log.warning("the signature's columns differ from those the model was trained on; "
                        "rows are passed in signature order")

    def run(self, rows, outputs):
        if self.frame_columns is not None:
            import pandas as pd

            rows = pd.DataFrame(rows, columns=self.frame_columns).infer_objects()
        model = self.model
        if len(outputs) == 1:
            return {outputs[0]: np.asarray(getattr(model, outputs[0])(rows))}
        return {name: np.asarray(getattr(model, name)(rows)) for name in outputs}

    def warm_up(self, card: ModelCard) -> None:
        """Score the model's own input example (or a row of zeros) once.

        Failing without pandas asks for a restart with it; with pandas, a model that only scores
        DataFrames gets them from now on.
        """
        example = card.example_rows()
        rows = None
        if example is not None:
            rows, columns = example
            order = getattr(self.model, "feature_names_in_", None)
            if columns and order is not None and sorted(map(str, order)) == sorted(columns):
                rows = rows[:, [columns.index(str(c)) for c in order]]
        elif self.n_features or card.n_columns:
            rows = np.zeros((1, self.n_features or card.n_columns))
        if rows is None:
            return
        try:
            self.run(rows, ("predict",))
            return
        except Exception as e:  # noqa: BLE001 - any failure decides the mode below
            error = e
        names = getattr(self.model, "feature_names_in_", None)
        names = [str(c) for c in names] if names is not None else card.columns
        if not self.pandas_allowed and (names or _blames_pandas(error)):
            raise NeedsPandas(f"scoring the input example failed without pandas: {error}")
        if self.pandas_allowed and names and len(names) == rows.shape[1]:
            self.frame_columns = names
            try:
                self.run(rows, ("predict",))
                log.info("the model scores pandas DataFrames; requests are passed as DataFrames")
                return
            except Exception:  # noqa: BLE001
                self.frame_columns = None
        if example is not None:
            raise LoadError(f"the model cannot score its own input example: {error}")
        log.warning("the model failed on a row of zeros (%s); serving it anyway", error)


def _has_method(model, name: str) -> bool:
    try:  # sklearn hides methods a fitted estimator does not support behind AttributeError
        return callable(getattr(model, name))
    except AttributeError:
        return False


class PyfuncPredictor(Predictor):
    """Any other flavour, through ``mlflow.pyfunc`` (which brings pandas and mlflow along)."""

    def __init__(self, card: ModelCard):
        import mlflow.pyfunc

        self.card = card
        self.model = mlflow.pyfunc.load_model(card.model_dir)

    def run(self, rows, outputs):
        card = self.card
        if card.columns and rows.ndim == 2:
            rows = _frame(rows, card.columns, card.column_types)
        elif card.tensor_dtype is not None and rows.dtype != card.tensor_dtype:
            rows = rows.astype(card.tensor_dtype)
        result = self.model.predict(rows)
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        to_numpy = getattr(result, "to_numpy", None)
        if to_numpy is not None:
            result = to_numpy()
            if result.ndim == 2 and result.shape[1] == 1:
                result = result[:, 0]
        return {"predict": np.asarray(result)}


_MLFLOW_TO_NUMPY = {"boolean": np.bool_, "integer": np.int32, "long": np.int64,
                    "float": np.float32, "double": np.float64}


def _frame(rows: np.ndarray, columns: list[str], types: list[str]):
    """A DataFrame of ``rows`` whose columns take the signature's types where that loses nothing
    (a 2-D request tensor has one datatype; mlflow's schema check wants each column's own)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns).infer_objects()
    for name, kind in zip(columns, types):
        want = _MLFLOW_TO_NUMPY.get(kind)
        column = frame[name]
        if want is None or column.dtype == want:
            continue
        try:
            cast = column.astype(want)
            if (cast.astype(column.dtype) == column).all():
                frame[name] = cast
        except (ValueError, TypeError, OverflowError):
            continue
    return frame


def load_predictor(card: ModelCard, pandas_allowed: bool) -> Predictor:
    if card.sklearn is None:
        return PyfuncPredictor(card)
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    try:
        predictor = SklearnPredictor(card, pandas_allowed)
    except LoadError:
        raise
    except Exception as e:
        if not pandas_allowed and _blames_pandas(e):
            raise NeedsPandas(f"loading needs pandas: {e}") from e
        raise
    predictor.warm_up(card)
    return predictor


# -- The V2 request -------------------------------------------------------------------------------


class InferJob:
    """One infer request, decoded and waiting to be scored."""

    __slots__ = ("rows", "outputs", "request_id", "key", "n", "done")

    def __init__(self, rows: np.ndarray, outputs: tuple[str, ...], request_id: str, done):
        self.rows = rows
        self.outputs = outputs
        self.request_id = request_id
        self.n = rows.shape[0]
        self.key = (rows.dtype.str, rows.shape[1:], outputs)
        self.done = done  # done(status, body_bytes)


def _decode_tensor(tensor, index: int) -> tuple[str, np.ndarray]:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] needs a \"name\" (a non-empty string)")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name!r} needs a \"shape\": a list of non-negative integers, "
                           f"e.g. [1, 13]")
    datatype = tensor.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r} has unknown datatype {datatype!r}; use one of "
                           f"{', '.join(V2_TO_NUMPY)}")
    data = tensor.get("data")
    if data is None:
        raise InvalidInput(f"input {name!r} has no \"data\"")
    try:
        values = np.array(data, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"input {name!r}: a value is out of the range of {datatype}; use a "
                           "wider datatype")
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is not a list of {datatype} values")
    expected = math.prod(shape)
    if values.size != expected:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {expected} values but data has "
                           f"{values.size}; make them agree")
    return name, values.reshape(shape)


def decode_rows(inputs, columns: list[str] | None, n_columns: int | None,
                tensor_ndim: int | None = None) -> np.ndarray:
    """The array of rows a V2 ``inputs`` list describes (see the module docstring): 2-D, or as
    many dimensions as a tensor signature has."""
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('a V2 inference request is a JSON object with a non-empty "inputs" '
                           'list, e.g. {"inputs": [{"name": "input-0", "shape": [1, 4], '
                           '"datatype": "FP64", "data": [1, 2, 3, 4]}]}')
    tensors = [_decode_tensor(t, i) for i, t in enumerate(inputs)]
    if len(tensors) == 1:
        name, values = tensors[0]
        if values.ndim == 2:
            rows = values
        elif tensor_ndim is not None and values.ndim == tensor_ndim:
            return values
        elif values.ndim == 1 and n_columns == 1 and not columns:
            return values.reshape(-1, 1)
        elif values.ndim == 1 and (n_columns == 1 or (columns and name in columns)):
            return _stack_columns(tensors, columns, n_columns)
        else:
            raise InvalidInput(
                f"input {name!r} has shape {list(values.shape)}; send one 2-D tensor of shape "
                f"[rows, {n_columns or 'columns'}] (one row is [1, {n_columns or 'columns'}])"
                + (", or one 1-D tensor per column named after the model's columns" if columns
                   else "")
            )
    else:
        return _stack_columns(tensors, columns, n_columns)
    if n_columns is not None and rows.shape[1] != n_columns:
        raise InvalidInput(f"the model expects {n_columns} columns per row"
                           + (f" ({_list(columns)})" if columns else "")
                           + f", got {rows.shape[1]}")
    return rows


def _stack_columns(tensors, columns, n_columns) -> np.ndarray:
    if not columns:
        raise InvalidInput("this model's signature names no columns, so per-column inputs cannot "
                           "be matched; send one 2-D tensor of shape "
                           f"[rows, {n_columns or 'columns'}]")
    by_name = {}
    for name, values in tensors:
        if name not in columns:
            raise InvalidInput(f"unknown input {name!r}; this model's columns are {_list(columns)}")
        if name in by_name:
            raise InvalidInput(f"input {name!r} is given twice")
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InvalidInput(f"input {name!r} has shape {list(values.shape)}; a per-column "
                               "input is 1-D, shape [rows]")
        by_name[name] = values
    missing = [c for c in columns if c not in by_name]
    if missing:
        raise InvalidInput(f"the model expects {len(columns)} columns, got {len(by_name)}: "
                           f"missing {_list(missing)}")
    lengths = {len(v) for v in by_name.values()}
    if len(lengths) > 1:
        raise InvalidInput("per-column inputs must all have the same number of rows; got "
                           + ", ".join(f"{n}: {len(v)}" for n, v in by_name.items()))
    return np.column_stack([by_name[c] for c in columns])


def _list(names) -> str:
    names = list(names)
    shown = ", ".join(names[:20])
    return shown + (f", … ({len(names)} in all)" if len(names) > 20 else "")


def encode_output(name: str, values: np.ndarray) -> dict:
    datatype = v2_datatype(values.dtype)
    flat = values.ravel()
    if datatype == "BYTES":
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else
                v.item() if isinstance(v, np.generic) else
                v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                for v in flat.tolist()]
    else:
        data = flat.tolist()
        if values.dtype.kind == "f" and not np.isfinite(flat).all():
            data = [v if math.isfinite(v) else None for v in data]
    return {"name": name, "datatype": datatype, "shape": list(values.shape), "data": data}


# -- The model service: routes and batching -------------------------------------------------------


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_body(message: str) -> bytes:
    return _dumps({"error": message})


class ModelService:
    """Everything that is not HTTP: state, metadata, decoding, scoring."""

    def __init__(self, card: ModelCard, name: str, version: str, loop: asyncio.AbstractEventLoop):
        self.card = card
        self.name = name
        self.version = version
        self.loop = loop
        self.predictor: Predictor | None = None
        self.pending: list[InferJob] = []
        self._flush_scheduled = False
        self.server_metadata = _dumps({"name": SERVER_NAME, "version": __version__,
                                       "extensions": []})
        self.model_metadata = self._model_metadata()

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def set_predictor(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.model_metadata = self._model_metadata()

    def _model_metadata(self) -> bytes:
        outputs = [dict(self.card.output_tensor)]
        predictor = self.predictor
        if predictor is not None and "predict_proba" in predictor.outputs:
            outputs.append({"name": "predict_proba", "datatype": "FP64",
                            "shape": [-1, predictor.n_classes or -1]})
        inputs = dict(self.card.input_tensor)
        if inputs["shape"] == [-1, -1] and predictor is not None and predictor.n_features:
            inputs["shape"] = [-1, predictor.n_features]
        return _dumps({"name": self.name, "versions": [self.version],
                       "platform": self.card.platform, "inputs": [inputs], "outputs": outputs})

    # routing ---------------------------------------------------------------------------------

    def route(self, method: str, path: str):
        """``(status, body)`` for GETs, or ``("infer", None)`` when an infer request may follow."""
        parts = path.split("/")
        if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
            raise NotFound(f"no such route {path!r}; this is a V2 inference server under /v2")
        parts = parts[2:]
        if parts and parts[-1] == "":
            parts.pop()
        if not parts:
            self._allow(method, "GET")
            return 200, self.server_metadata
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            self._allow(method, "GET")
            if parts[1] == "live" or self.ready:
                return 200, b'{"live":true}' if parts[1] == "live" else b'{"ready":true}'
            return 503, b'{"ready":false}'
        if parts[0] != "models" or len(parts) < 2:
            raise NotFound(f"no such route {path!r}")
        name = unquote(parts[1]) if "%" in parts[1] else parts[1]
        if name != self.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.name!r}")
        rest = parts[2:]
        if len(rest) >= 2 and rest[0] == "versions":
            version = unquote(rest[1]) if "%" in rest[1] else rest[1]
            if version != self.version:
                raise NotFound(f"unknown version {version!r} of model {self.name!r}; this server "
                               f"serves version {self.version!r}")
            rest = rest[2:]
        if not rest:
            self._allow(method, "GET")
            return 200, self.model_metadata
        if rest == ["ready"]:
            self._allow(method, "GET")
            return (200, b'{"ready":true}') if self.ready else (503, b'{"ready":false}')
        if rest == ["infer"]:
            self._allow(method, "POST")
            if not self.ready:
                raise Unavailable(f"model {self.name!r} is still loading; retry when "
                                  f"/v2/models/{self.name}/ready answers 200")
            return "infer", None
        raise NotFound(f"no such route {path!r}")

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise MethodNotAllowed(f"use {allowed} here, not {method}",
                                   "GET, HEAD" if allowed == "GET" else allowed)

    # inference -------------------------------------------------------------------------------

    def submit(self, body: bytes, done) -> None:
        """Decode an infer request and queue it; ``done(status, body)`` is called once scored.

        Raises FermiError for a request that cannot be scored.
        """
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the request body is not JSON; send a V2 inference request, e.g. "
                               '{"inputs": [{"name": "input-0", "shape": [1, 4], '
                               '"datatype": "FP64", "data": [1, 2, 3, 4]}]}')
        if not isinstance(request, dict):
            raise InvalidInput('a V2 inference request is a JSON object with an "inputs" list')
        predictor = self.predictor
        card = self.card
        rows = decode_rows(request.get("inputs"), card.columns,
                           card.n_columns or predictor.n_features, card.tensor_ndim)
        if rows.shape[0] == 0:
            raise InvalidInput("the request has no rows; send at least one")
        if predictor.permutation is not None and rows.ndim == 2:
            rows = rows[:, predictor.permutation]
        outputs = _requested_outputs(request.get("outputs"), predictor.outputs)
        request_id = request.get("id")
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str):
            raise InvalidInput('"id" must be a string')
        self.pending.append(InferJob(rows, outputs, request_id, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # Runs after every connection that was readable in this loop iteration has been read,
            # so the requests that arrived together are scored together.
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        jobs, self.pending = self.pending, []
        try:
            if len(jobs) == 1:
                self._score_alone(jobs[0])
                return
            groups: dict[tuple, list[InferJob]] = {}
            for job in jobs:
                if job.n <= BATCH_ROWS:
                    groups.setdefault(job.key, []).append(job)
                else:
                    self._score_alone(job)
            for group in groups.values():
                if len(group) == 1:
                    self._score_alone(group[0])
                else:
                    self._score_together(group)
        except Exception as e:  # noqa: BLE001 - a bug here must still answer every request
            log.exception("scoring failed")
            for job in jobs:
                _reply(job, 500, error_body(f"the server failed: {type(e).__name__}: {e}"))

    def _score_together(self, group: list[InferJob]) -> None:
        rows = np.concatenate([job.rows for job in group])
        try:
            results = self.predictor.run(rows, group[0].outputs)
        except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours
            results = None
        total = rows.shape[0]
        if results is None or any(v.ndim == 0 or v.shape[0] != total for v in results.values()):
            for job in group:
                self._score_alone(job)
            return
        start = 0
        for job in group:
            end = start + job.n
            self._answer(job, {name: v[start:end] for name, v in results.items()})
            start = end

    def _score_alone(self, job: InferJob) -> None:
        try:
            results = self.predictor.run(job.rows, job.outputs)
        except Exception as e:  # noqa: BLE001
            error = _model_error(e)
            _reply(job, error.status, error_body(error.message))
            return
        self._answer(job, results)

    def _answer(self, job: InferJob, results: dict[str, np.ndarray]) -> None:
        try:
            body = _dumps({
                "model_name": self.name,
                "model_version": self.version,
                "id": job.request_id,
                "outputs": [encode_output(name, values) for name, values in results.items()],
            })
        except Exception as e:  # noqa: BLE001
            log.exception("cannot encode the model's output")
            _reply(job, 500, error_body(f"the model's output cannot be sent as JSON: {e}"))
            return
        _reply(job, 200, body)


def _reply(job: InferJob, status: int, body: bytes) -> None:
    if job.done is not None:
        done, job.done = job.done, None
        done(status, body)


def _requested_outputs(requested, available: tuple[str, ...]) -> tuple[str, ...]:
    if requested is None:
        return available[:1]
    if not isinstance(requested, list) or not requested:
        raise InvalidInput('"outputs" must be a non-empty list like [{"name": "predict"}]')
    names = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in available:
            raise InvalidInput(f"unknown output {name!r}; this model has {_list(available)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _model_error(exc: Exception) -> FermiError:
    bad_input = isinstance(exc, (ValueError, TypeError, KeyError, IndexError))
    if type(exc).__name__ == "MlflowException":
        bad_input = getattr(exc, "error_code", "") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
    if bad_input:
        return InvalidInput(f"the model could not score this input: {exc}")
    log.error("the model failed", exc_info=exc)
    return ServerFault(f"the model failed while scoring: {type(exc).__name__}: {exc}")


# -- HTTP/1.1 -------------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Content Too Large", 422: "Unprocessable Content",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode()
                 for code, reason in _REASONS.items()}


class _Date:
    """The Date header, formatted once a second."""

    second = 0
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Connection(asyncio.Protocol):
    """One client connection: parses requests one at a time, in order, and answers each."""

    def __init__(self, server: ModelServer):
        self.server = server
        self.service = server.service
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head = None  # (method, target, keep_alive, content_length, chunked) being received
        self.chunks: list[bytes] | None = None  # a chunked body being received
        self.chunks_size = 0
        self.busy = False  # a request is being scored; later ones wait in the buffer
        self.closed = False
        self.last_active = 0.0

    # asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.last_active = time.monotonic()
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        self.server.connection_closed()

    def data_received(self, data):
        self.buffer += data
        self.last_active = time.monotonic()
        if not self.busy:
            self._process()

    # parsing ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        return self.busy or self.head is not None or bool(self.buffer.strip(b"\r\n"))

    def _process(self) -> None:
        buffer = self.buffer
        while not self.busy and not self.closed and buffer:
            try:
                if self.head is None:
                    if buffer[:2] == b"\r\n":  # stray line ends between requests are allowed
                        del buffer[:2]
                        continue
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buffer) > HEAD_LIMIT:
                            raise HttpError(431, "the request head is larger than 64 KiB")
                        return
                    head = bytes(buffer[:end])
                    del buffer[:end + 4]
                    self.head = self._parse_head(head)
                method, target, keep_alive, length, chunked = self.head
                if chunked:
                    body = self._take_chunked()
                    if body is None:
                        return
                elif length:
                    if len(buffer) < length:
                        return
                    body = bytes(buffer[:length])
                    del buffer[:length]
                else:
                    body = b""
            except HttpError as e:
                self.head = self.chunks = None
                self._send(e.status, error_body(e.message), False, False)
                return
            self.head = None
            self.last_active = time.monotonic()
            self._dispatch(method, target, keep_alive, body)

    def _parse_head(self, head: bytes):
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0].split(" ")
        if len(request_line) != 3:
            raise HttpError(400, "malformed request line; expected METHOD TARGET HTTP/1.1")
        method, target, version = request_line
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        length = None
        transfer_encoding = None
        connection = ""
        expect = ""
        authorization = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[0] in " \t" or name[-1] in " \t":
                raise HttpError(400, f"malformed header line {line[:80]!r}")
            name = name.lower()
            if name == "content-length":
                value = value.strip()
                if not (value.isascii() and value.isdigit()) or \
                        (length is not None and int(value) != length):
                    raise HttpError(400, "invalid Content-Length")
                length = int(value)
            elif name == "transfer-encoding":
                transfer_encoding = value.strip().lower()
            elif name == "connection":
                connection = value.lower()
            elif name == "expect":
                expect = value.strip().lower()
            elif name == "authorization":
                authorization = value
            elif name == "inference-header-content-length":
                raise HttpError(400, "the binary tensor data extension is not supported; send "
                                     "tensors as JSON data")
        key = self.server.key
        if key is not None:
            # before the body is read or a 100 Continue sent: nothing of a stranger's is taken in
            scheme, _, credential = (authorization or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    credential.strip().encode("latin-1"), key):
                raise HttpError(401, "this replica answers only Fermi's router; send requests "
                                     "to the deployment's URL with its API key")
        if transfer_encoding is not None:
            if length is not None:
                raise HttpError(400, "a request cannot have both Content-Length and "
                                     "Transfer-Encoding")
            if transfer_encoding != "chunked":
                raise HttpError(501, "only the chunked transfer coding is supported")
        if (length or 0) > BODY_LIMIT:
            raise HttpError(413, f"the request body is larger than {BODY_LIMIT // 2**20} MiB; "
                                 "send fewer rows per request")
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        chunked = transfer_encoding is not None
        if expect == "100-continue" and (chunked or length) and len(self.buffer) == 0:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return method, target, keep_alive, length, chunked

    def _take_chunked(self) -> bytes | None:
        """The whole chunked body once it has arrived, else None.

        Complete chunks are moved out of the buffer as they arrive, so a body sent in many small
        pieces is read in linear time.
        """
        buffer = self.buffer
        while True:
            if self.chunks is None:
                self.chunks = []
                self.chunks_size = 0
            if self.chunks_size < 0:  # the last chunk was read; skip trailers up to an empty line
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    return None
                del buffer[:line_end + 2]
                if line_end == 0:
                    body = b"".join(self.chunks)
                    self.chunks = None
                    return body
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise HttpError(400, "malformed chunk size line")
                return None
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                size = -1
            if size < 0 or size_text[:1] in (b"-", b"+"):
                raise HttpError(400, "malformed chunk size")
            if size == 0:
                del buffer[:line_end + 2]
                self.chunks_size = -1
                continue
            if self.chunks_size + size > BODY_LIMIT:
                raise HttpError(413, f"the request body is larger than {BODY_LIMIT // 2**20} MiB; "
                                     "send fewer rows per request")
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None
            if buffer[start + size:start + size + 2] != b"\r\n":
                raise HttpError(400, "malformed chunk")
            self.chunks.append(bytes(buffer[start:start + size]))
            self.chunks_size += size
            del buffer[:start + size + 2]

    # answering -------------------------------------------------------------------------------

    def _dispatch(self, method: str, target: str, keep_alive: bool, body: bytes) -> None:
        if self.server.draining:
            keep_alive = False
        path = target
        if "?" in path:
            path = path.split("?", 1)[0]
        if not path.startswith("/"):
            path = urlsplit(target).path or "/"
        head_only = method == "HEAD"
        try:
            status, payload = self.service.route(method, path)
            if status == "infer":
                self.busy = True
                self.service.submit(body, lambda s, b: self._finish(s, b, keep_alive))
                return
        except FermiError as e:
            extra = f"Allow: {e.allow}\r\n".encode() if isinstance(e, MethodNotAllowed) else b""
            self.busy = False
            self._send(e.status, error_body(e.message), keep_alive, head_only, extra)
            return
        except Exception as e:  # noqa: BLE001 - a bug here must still answer
            log.exception("failed on %s %s", method, path)
            self.busy = False
            self._send(500, error_body(f"the server failed: {type(e).__name__}: {e}"), False,
                       head_only)
            return
        self._send(status, payload, keep_alive, head_only)

    def _finish(self, status: int, body: bytes, keep_alive: bool) -> None:
        self.busy = False
        if self.closed:
            self.server.connection_closed()
            return
        if self.server.draining:
            keep_alive = False
        self._send(status, body, keep_alive, False)
        if not self.closed and self.buffer:
            self._process()

    def _send(self, status: int, body: bytes, keep_alive: bool, head_only: bool,
              extra: bytes = b"") -> None:
        transport = self.transport
        if self.closed or transport.is_closing():
            return
        head = b"".join((
            _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Error\r\n".encode(),
            b"Server: fermi-model-server\r\n", _Date.header(),
            b"Content-Type: application/json\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\n", extra, b"" if keep_alive else b"Connection: close\r\n", b"\r\n",
        ))
        transport.write(head if head_only else head + body)
        self.last_active = time.monotonic()
        if not keep_alive:
            self.closed = True
            transport.close()

    def close_if_idle(self, idle_before: float | None = None) -> None:
        """Close unless a request is in flight; with ``idle_before``, close a connection quiet
        since then even in the middle of a request head or body (but never while scoring)."""
        if self.closed or self.busy:
            return
        if idle_before is None and not self.in_flight or \
                idle_before is not None and self.last_active < idle_before:
            self.closed = True
            self.transport.close()


class ModelServer:
    """The process: listens, loads the model in the background, drains on SIGTERM."""

    def __init__(self, card: ModelCard, name: str, version: str, pandas_allowed: bool,
                 key: str | None = None):
        self.loop = asyncio.get_running_loop()
        self.key = key.encode() if key else None  # requests must show it (see the docstring)
        self.card = card
        self.pandas_allowed = pandas_allowed
        self.service = ModelService(card, name, version, self.loop)
        self.connections: set[Connection] = set()
        self.draining = False
        self.finished: asyncio.Future = self.loop.create_future()
        self.server: asyncio.AbstractServer | None = None
        self.listen_socket: socket.socket | None = None
        self.started = time.monotonic()

    async def listen(self, host: str, port: int) -> None:
        inherited = os.environ.pop(ENV_LISTEN_FD, None)
        if inherited:
            sock = socket.socket(fileno=int(inherited))
            sock.setblocking(False)
            self.server = await self.loop.create_server(lambda: Connection(self), sock=sock,
                                                        backlog=1024)
        else:
            self.server = await self.loop.create_server(lambda: Connection(self), host, port,
                                                        backlog=1024, reuse_address=True)
        self.listen_socket = self.server.sockets[0]
        log.info("listening on %s:%s", *self.listen_socket.getsockname()[:2])

    def start_loading(self) -> None:
        thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        thread.start()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            predictor = load_predictor(self.card, self.pandas_allowed)
        except BaseException as e:  # noqa: BLE001 - reported to the loop, which decides
            self.loop.call_soon_threadsafe(self._load_failed, e)
            return
        self.loop.call_soon_threadsafe(self._loaded, predictor, time.monotonic() - started)

    def _loaded(self, predictor: Predictor, seconds: float) -> None:
        if self.draining:
            return
        self.service.set_predictor(predictor)
        log.info("model %s version %s loaded in %.2f s (%.2f s after start); ready",
                 self.service.name, self.service.version, seconds,
                 time.monotonic() - self.started)

    def _load_failed(self, error: BaseException) -> None:
        if self.draining:
            return
        if isinstance(error, NeedsPandas):
            log.info("%s; restarting with pandas", error)
            self._reexec_with_pandas()
            return
        if isinstance(error, LoadError):
            log.error("cannot load the model: %s", error)
        else:
            log.error("cannot load the model from %s: %s: %s", self.card.model_dir,
                      type(error).__name__, error, exc_info=error)
        self._stop(EXIT_LOAD_FAILED)

    def _reexec_with_pandas(self) -> None:
        fd = self.listen_socket.fileno()
        os.set_inheritable(fd, True)
        env = dict(os.environ, **{ENV_WITH_PANDAS: "1", ENV_LISTEN_FD: str(fd)})
        if self.key is not None:  # the next process reads it, and removes it, in its turn
            env[ENV_REPLICA_KEY] = self.key.decode()
        for conn in list(self.connections):
            conn.transport.abort()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

    def begin_shutdown(self) -> None:
        if self.draining:
            return
        log.info("stopping: no new connections, %d request(s) in flight get up to %.0f s",
                 sum(c.in_flight for c in self.connections), DRAIN_SECONDS)
        self.draining = True
        self.server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        self.loop.call_later(DRAIN_SECONDS, self._stop, 0)
        self.connection_closed()

    def connection_closed(self) -> None:
        if self.draining and not any(c.in_flight for c in self.connections):
            for conn in list(self.connections):
                conn.close_if_idle()
            self._stop(0)

    def _stop(self, code: int) -> None:
        if not self.finished.done():
            self.finished.set_result(code)

    async def close_idle_connections(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SECONDS / 3)
            cutoff = time.monotonic() - IDLE_SECONDS
            for conn in list(self.connections):
                conn.close_if_idle(cutoff)


# -- Command line ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fermi_extension.serving.server",
        description="Serve one MLflow model version over the KServe Open Inference Protocol V2.",
        epilog=f"When ${ENV_REPLICA_KEY} is set (as the platform sets it), every request must show "
               "'Authorization: Bearer <that key>' or gets 401; unset, anyone is answered.",
    )
    parser.add_argument("--model-dir", required=True,
                        help="local MLflow model directory (the one holding MLmodel)")
    parser.add_argument("--model-name", required=True,
                        help="the name clients use in /v2/models/{name}")
    parser.add_argument("--model-version", required=True,
                        help="the version reported, and accepted in /versions/{v}")
    parser.add_argument("--port", required=True, type=int,
                        help="TCP port to listen on (0: any free one, logged)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, key: str | None = None) -> int:
    pandas_allowed = os.environ.get(ENV_WITH_PANDAS) == "1"
    try:
        card = read_model_card(args.model_dir)
    except LoadError as e:
        log.error("cannot load the model: %s", e)
        return EXIT_LOAD_FAILED
    if card.sklearn is not None and not pandas_allowed:
        block_pandas()
    server = ModelServer(card, args.model_name, args.model_version, pandas_allowed, key)
    try:
        await server.listen(args.host, args.port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return EXIT_CANNOT_LISTEN
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.begin_shutdown)
    sweeper = loop.create_task(server.close_idle_connections())
    server.start_loading()
    code = await server.finished
    sweeper.cancel()
    server.server.close()
    for conn in list(server.connections):
        conn.transport.abort()
    if code == 0:
        log.info("stopped")
    return code


def main(argv=None) -> int:
    # taken out before any model code is imported or run, so neither it nor a child sees it
    key = os.environ.pop(ENV_REPLICA_KEY, None) or None
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {SERVER_NAME}[%(process)d] %(message)s",
    )
    return asyncio.run(serve(args, key))


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The loader thread may still be importing; do not wait for it.
    os._exit(exit_code)
