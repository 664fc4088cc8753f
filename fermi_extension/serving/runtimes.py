"""Model runtimes: what an MLflow model directory says, and the predictors that score it.

The V2 dataplane (``v2.py``) sees a model only through ``ModelRuntime``: whether it is loaded,
what its metadata says, how the request's named tensors become the model's rows, which outputs
it has and how it scores rows. Two predictors stand behind it: an sklearn fast path, loaded with
``skops.io``/``pickle`` directly, without mlflow and with pandas kept out of the process, and
``mlflow.pyfunc`` for every other flavour (see ``server.py``'s docstring for the behaviour users
see).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

import numpy as np

from fermi_extension.errors import InvalidInput
from fermi_extension.serving.v2 import NUMERIC_DATATYPES, v2_datatype

log = logging.getLogger("fermi.model-server")

class LoadError(Exception):
    """The model cannot be served; the message says why."""


class NeedsPandas(Exception):
    """The model could not be loaded or scored while pandas was kept out of the process."""


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
            datatype = "FP64" if kinds <= NUMERIC_DATATYPES else "BYTES"
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



# -- From named tensors to rows -------------------------------------------------------------------


def decode_rows(tensors: list[tuple[str, np.ndarray]], columns: list[str] | None,
                n_columns: int | None, tensor_ndim: int | None = None) -> np.ndarray:
    """The array of rows the request's decoded ``(name, array)`` inputs describe: one 2-D tensor,
    or one 1-D tensor per signature column (stacked in signature order), or as many dimensions as
    a tensor signature has."""
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



# -- The one interface the dataplane sees ---------------------------------------------------------


class ModelRuntime:
    """One MLflow model directory: its card at once, its predictor once loaded (``set_predictor``,
    from the loader thread's result). The dataplane only calls it once ``ready``, except for
    ``metadata_tensors``, which describes what is known so far."""

    def __init__(self, card: ModelCard):
        self.card = card
        self.platform = card.platform
        self.predictor: Predictor | None = None
        self.outputs: tuple[str, ...] = ("predict",)

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def set_predictor(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.outputs = predictor.outputs

    def metadata_tensors(self) -> tuple[list[dict], list[dict]]:
        """The V2 metadata's inputs and outputs (``MetadataTensor`` fields)."""
        card, predictor = self.card, self.predictor
        outputs = [dict(card.output_tensor)]
        if predictor is not None and "predict_proba" in predictor.outputs:
            outputs.append({"name": "predict_proba", "datatype": "FP64",
                            "shape": [-1, predictor.n_classes or -1]})
        inputs = dict(card.input_tensor)
        if inputs["shape"] == [-1, -1] and predictor is not None and predictor.n_features:
            inputs["shape"] = [-1, predictor.n_features]
        return [inputs], outputs

    def rows(self, tensors: list[tuple[str, np.ndarray]]) -> np.ndarray:
        card, predictor = self.card, self.predictor
        rows = decode_rows(tensors, card.columns, card.n_columns or predictor.n_features,
                           card.tensor_ndim)
        if predictor.permutation is not None and rows.ndim == 2:
            rows = rows[:, predictor.permutation]
        return rows

    def run(self, rows: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self.predictor.run(rows, outputs)
