"""The Open Inference Protocol V2 (KServe's V2 / Triton's HTTP protocol): types, codec, dataplane.

Three parts, none of which speaks HTTP:

- **Types.** Pydantic v2 models of the REST dataplane, field for field as MLServer's
  ``mlserver/types/dataplane.py`` and KServe's ``kserve/protocol/rest/v2_datamodels.py`` name
  them: ``InferenceRequest``, ``RequestInput``, ``RequestOutput``, ``InferenceResponse``,
  ``ResponseOutput``, ``MetadataTensor``, ``MetadataModelResponse``, ``MetadataServerResponse`` and
  ``ErrorResponse`` (``{"error": "..."}``, as both servers answer).
- **Codec.** A tensor's JSON ``data`` (flat row-major or nested) to a numpy array and back, and the
  *binary tensor data extension* as Triton and KServe have it: a request whose
  ``Inference-Header-Content-Length`` header gives the length of its JSON part carries the data of
  every input that has ``parameters.binary_data_size`` after that JSON, in input order; outputs
  are sent binary when the output asks with ``parameters.binary_data: true``, or when the request
  asks for all with ``parameters.binary_data_output: true`` and the output does not say
  otherwise (``binary_data: false`` is JSON). Such a response is ``application/octet-stream``:
  its JSON part (length in its own ``Inference-Header-Content-Length`` header) then the outputs'
  bytes. Binary data is little-endian, row-major; BOOL one byte per element; BYTES elements each
  prefixed by their length as a 4-byte little-endian unsigned integer.
- **Dataplane.** ``DataPlane.handle(method, path, headers, body)`` answers every V2 route for one
  model behind the ``ModelRuntime`` interface of ``runtimes.py``, whatever its flavour. It returns
  a ``Reply`` ``(status, headers, body)`` at once, or, for an infer, an ``asyncio.Future`` of one
  (await it, or add a done callback): infer requests that arrive in the same turn of the event
  loop are scored in one call of the model and their answers split again.

``headers`` given to ``handle`` are a dict of lower-case ``str`` names, or the ``(name, value)``
pairs of ``bytes`` (names lower-cased) that ``http.Request`` carries; the only one read is
``inference-header-content-length``. A ``Reply``'s headers are ``(name, value)`` pairs of
``str``, ``Content-Type`` first (the transport adds Content-Length, Connection, Server and
Date). Errors are replies too (``{"error": "<what to fix>"}`` with a
4xx, or 500 for a fault of the model or of this server); ``handle`` itself does not raise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import uuid
from typing import Any, NamedTuple, Optional
from urllib.parse import unquote

import numpy as np
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from fermi_extension import __version__
from fermi_extension.errors import FermiError, InvalidInput, NotFound, Unavailable

log = logging.getLogger("fermi.model-server")

SERVER_NAME = "fermi-model-server"
EXTENSIONS = ["binary_tensor_data"]  # what Triton reports for the same extension
BATCH_ROWS = 64  # requests up to this many rows are scored together with their neighbours
HEADER_LENGTH = "inference-header-content-length"

# -- datatypes ------------------------------------------------------------------------------------

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
NUMERIC_DATATYPES = frozenset(name for name in V2_TO_NUMPY if name != "BYTES")


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype; anything that is not a number or a bool is BYTES."""
    return _NUMPY_TO_V2.get(np.dtype(dtype), "BYTES")


# -- types ----------------------------------------------------------------------------------------


class Parameters(BaseModel):
    """Free-form parameters; the named ones are those the protocol and its extensions define."""

    model_config = ConfigDict(extra="allow")

    content_type: Optional[str] = None
    binary_data: Optional[bool] = None  # on a requested output
    binary_data_size: Optional[int] = None  # on an input or output sent as binary data
    binary_data_output: Optional[bool] = None  # on a request: every output binary


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str  # checked by the codec, which says which datatypes there are
    parameters: Optional[Parameters] = None
    data: Any = None  # absent when the data is binary


class RequestOutput(BaseModel):
    name: str
    parameters: Optional[Parameters] = None


class InferenceRequest(BaseModel):
    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    inputs: list[RequestInput]
    outputs: Optional[list[RequestOutput]] = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[Parameters] = None
    data: Any = None  # absent when the data is binary


class InferenceResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Optional[dict[str, Any]] = None


class MetadataModelResponse(BaseModel):
    name: str
    versions: Optional[list[str]] = None
    platform: str
    inputs: Optional[list[MetadataTensor]] = None
    outputs: Optional[list[MetadataTensor]] = None
    parameters: Optional[dict[str, Any]] = None


class MetadataServerResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ErrorResponse(BaseModel):
    error: str


def dumps(obj) -> bytes:
    """Compact JSON of dicts, lists and models; NaN and infinities become null (JSON has none)."""
    return pydantic_core.to_json(obj, exclude_none=True, inf_nan_mode="null")


def error_body(message: str) -> bytes:
    return dumps({"error": message})


class MethodNotAllowed(FermiError):
    status = 405

    def __init__(self, message: str, allow: str):
        super().__init__(message)
        self.allow = allow


class ServerFault(FermiError):
    """The model itself failed on a well-formed request."""

    status = 500


# -- codec ----------------------------------------------------------------------------------------

EXAMPLE = ('{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
           '"data": [1, 2, 3, 4]}]}')


def parse_request(body: bytes, header_length: str | None = None
                  ) -> tuple[InferenceRequest, list[tuple[str, np.ndarray]]]:
    """The request and its inputs as ``(name, array)`` pairs, from a JSON body or one with binary
    tensor data after ``header_length`` bytes of JSON."""
    raw = None
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length is {header_length!r}; it must be "
                               f"the length of the JSON part of the body (at most {len(body)})")
        body, raw = body[:length], memoryview(body)[length:]
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(_request_problem(e)) from None
    except RecursionError:
        raise InvalidInput("the request is nested too deeply to be a V2 inference request") from None
    if not request.inputs:
        raise InvalidInput(f'a V2 inference request needs a non-empty "inputs" list, e.g. {EXAMPLE}')
    offset = 0
    tensors = []
    for tensor in request.inputs:
        size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
        if size is None:
            tensors.append((tensor.name, decode_tensor(tensor)))
            continue
        if raw is None:
            raise InvalidInput(f"input {tensor.name!r} has parameters.binary_data_size but the "
                               "request has no Inference-Header-Content-Length header saying "
                               "where its binary data starts")
        if size < 0 or offset + size > len(raw):
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size {size} goes past the end "
                               f"of the body ({len(raw) - offset} bytes of binary data are left)")
        tensors.append((tensor.name, decode_binary(tensor, raw[offset:offset + size])))
        offset += size
    if raw is not None and offset != len(raw):
        raise InvalidInput(f"the body has {len(raw) - offset} bytes of binary data that no input's "
                           "binary_data_size accounts for")
    return request, tensors


def _request_problem(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        if "recursion" in first.get("msg", ""):
            return "the request is nested too deeply to be a V2 inference request"
        return f"the request body is not JSON; send a V2 inference request, e.g. {EXAMPLE}"
    loc = first.get("loc") or ()
    if first["type"] == "model_type" and not loc:
        return 'a V2 inference request is a JSON object with an "inputs" list'
    if loc == ("inputs",) and first["type"] == "missing":
        return f'a V2 inference request is a JSON object with a non-empty "inputs" list, e.g. {EXAMPLE}'
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    hint = ""
    if len(loc) >= 3 and loc[0] == "inputs" and loc[2] == "shape":
        hint = "; shape is a list of non-negative integers, e.g. [1, 13]"
    return f"{where}: {first['msg']}{hint}"


def _check_shape(tensor: RequestInput) -> int:
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(f"input {tensor.name!r} needs a \"shape\": a list of non-negative "
                           f"integers, e.g. [1, 13]")
    return math.prod(tensor.shape)


def _dtype_of(tensor: RequestInput) -> np.dtype:
    dtype = V2_TO_NUMPY.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input {tensor.name!r} has unknown datatype {tensor.datatype!r}; use "
                           f"one of {', '.join(V2_TO_NUMPY)}")
    return dtype


def decode_tensor(tensor: RequestInput) -> np.ndarray:
    """A JSON tensor as an array of its shape; ``data`` may be flat or nested."""
    expected = _check_shape(tensor)
    dtype = _dtype_of(tensor)
    data = tensor.data
    if data is None:
        raise InvalidInput(f"input {tensor.name!r} has no \"data\" (nor binary_data_size)")
    if dtype.kind == "O" and isinstance(data, list):
        data = _flatten(data)  # strings must not become an array of characters' dimensions
    try:
        values = np.array(data, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"input {tensor.name!r}: a value is out of the range of "
                           f"{tensor.datatype}; use a wider datatype") from None
    except (ValueError, TypeError, RecursionError):
        raise InvalidInput(f"input {tensor.name!r}: data is not a list of {tensor.datatype} "
                           "values") from None
    if values.size != expected:
        raise InvalidInput(f"input {tensor.name!r}: shape {tensor.shape} holds {expected} values "
                           f"but data has {values.size}; make them agree")
    return values.reshape(tensor.shape)


def _flatten(data: list) -> list:
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode_binary(tensor: RequestInput, raw: memoryview) -> np.ndarray:
    """A tensor sent as binary data (little-endian, row-major; BYTES length-prefixed)."""
    expected = _check_shape(tensor)
    dtype = _dtype_of(tensor)
    if dtype.kind == "O":
        values = np.empty(expected, dtype=object)
        offset, count, end = 0, 0, len(raw)
        while offset < end:
            if offset + 4 > end or count >= expected:
                break
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > end:
                break
            element = bytes(raw[offset:offset + length])
            try:
                values[count] = element.decode("utf-8")
            except UnicodeDecodeError:
                values[count] = element
            offset += length
            count += 1
        if count != expected or offset != end:
            raise InvalidInput(f"input {tensor.name!r}: the binary data is not {expected} BYTES "
                               "elements each prefixed by its 4-byte little-endian length")
        return values.reshape(tensor.shape)
    wire = np.dtype(np.uint8) if dtype.kind == "b" else dtype.newbyteorder("<")
    if len(raw) != expected * wire.itemsize:
        raise InvalidInput(f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} "
                           f"takes {expected * wire.itemsize} bytes but binary_data_size is "
                           f"{len(raw)}; make them agree")
    values = np.frombuffer(raw, dtype=wire)
    if dtype.kind == "b":
        values = values != 0
    elif wire != dtype:
        values = values.astype(dtype)
    return values.reshape(tensor.shape)


def encode_output(name: str, values: np.ndarray, binary: bool = False
                  ) -> tuple[dict, bytes | None]:
    """A ``ResponseOutput`` (as a dict, for speed) and, when ``binary``, its binary data."""
    datatype = v2_datatype(values.dtype)
    shape = list(values.shape)
    if binary:
        raw = _binary_of(values, datatype)
        return {"name": name, "shape": shape, "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)}}, raw
    flat = values.ravel()
    if datatype == "BYTES":
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else
                v.item() if isinstance(v, np.generic) else
                v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                for v in flat.tolist()]
    else:
        data = flat.tolist()
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}, None


def _binary_of(values: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values.ravel().tolist():
            element = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(element)))
            parts.append(element)
        return b"".join(parts)
    if datatype == "BOOL":
        return values.astype(np.uint8).tobytes()
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


# -- the dataplane --------------------------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: tuple  # (name, value) pairs; most replies share JSON_HEADERS itself
    body: bytes


JSON_HEADERS = (("content-type", "application/json"),)
BINARY_CONTENT_TYPE = "application/octet-stream"
_LIVE = Reply(200, JSON_HEADERS, b'{"live":true}')
_READY = Reply(200, JSON_HEADERS, b'{"ready":true}')
_NOT_READY = Reply(503, JSON_HEADERS, b'{"ready":false}')


def error_reply(error: FermiError) -> Reply:
    headers = JSON_HEADERS
    if isinstance(error, MethodNotAllowed):
        headers = (*JSON_HEADERS, ("allow", error.allow))
    return Reply(error.status, headers, error_body(error.message))


class InferJob:
    """One infer request, decoded and waiting to be scored."""

    __slots__ = ("rows", "outputs", "binary", "request_id", "key", "n", "future")

    def __init__(self, rows: np.ndarray, outputs: tuple[str, ...], binary: tuple[bool, ...],
                 request_id: str, future: asyncio.Future):
        self.rows = rows
        self.outputs = outputs
        self.binary = binary
        self.request_id = request_id
        self.n = rows.shape[0]
        self.key = (rows.dtype.str, rows.shape[1:], outputs)
        self.future = future


class DataPlane:
    """The V2 handlers of one model (name, version) served by ``runtime``."""

    def __init__(self, runtime, name: str, version: str,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.runtime = runtime  # a runtimes.ModelRuntime
        self.name = name
        self.version = version
        self.loop = loop or asyncio.get_event_loop()
        self.pending: list[InferJob] = []
        self._flush_scheduled = False
        self.server_metadata = dumps(MetadataServerResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS))
        self.model_metadata = self._model_metadata()

    @property
    def ready(self) -> bool:
        return self.runtime.ready

    def model_loaded(self) -> None:
        """Call once the runtime has loaded its model: metadata may know more now."""
        self.model_metadata = self._model_metadata()

    def _model_metadata(self) -> bytes:
        inputs, outputs = self.runtime.metadata_tensors()
        return dumps(MetadataModelResponse(
            name=self.name, versions=[self.version], platform=self.runtime.platform,
            inputs=[MetadataTensor(**t) for t in inputs],
            outputs=[MetadataTensor(**t) for t in outputs]))

    # routing ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict, body: bytes
               ) -> Reply | asyncio.Future:
        """The reply to one request, or a future of it for an infer (see the module docstring).
        ``path`` is the request target without its query."""
        try:
            return self._route(method, path, headers, body)
        except FermiError as e:
            return error_reply(e)
        except Exception as e:  # noqa: BLE001 - a bug here must still answer
            log.exception("failed on %s %s", method, path)
            return Reply(500, JSON_HEADERS,
                         error_body(f"the server failed: {type(e).__name__}: {e}"))

    async def handle_async(self, method: str, path: str, headers: dict, body: bytes) -> Reply:
        reply = self.handle(method, path, headers, body)
        return await reply if isinstance(reply, asyncio.Future) else reply

    def _route(self, method, path, headers, body):
        parts = path.split("/")
        if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
            raise NotFound(f"no such route {path!r}; this is a V2 inference server under /v2")
        parts = parts[2:]
        if parts and parts[-1] == "":
            parts.pop()
        if not parts:
            _allow(method, "GET")
            return Reply(200, JSON_HEADERS, self.server_metadata)
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            _allow(method, "GET")
            if parts[1] == "live":
                return _LIVE
            return _READY if self.ready else _NOT_READY
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
            _allow(method, "GET")
            return Reply(200, JSON_HEADERS, self.model_metadata)
        if rest == ["ready"]:
            _allow(method, "GET")
            return _READY if self.ready else _NOT_READY
        if rest == ["infer"]:
            _allow(method, "POST")
            if not self.ready:
                raise Unavailable(f"model {self.name!r} is still loading; retry when "
                                  f"/v2/models/{self.name}/ready answers 200")
            return self.infer(body, _header(headers, HEADER_LENGTH))
        raise NotFound(f"no such route {path!r}")

    # inference -------------------------------------------------------------------------------

    def infer(self, body: bytes, header_length: str | None = None) -> asyncio.Future:
        """Decode an infer request and queue it; the future's result is its Reply.

        Raises FermiError for a request that cannot be scored.
        """
        request, tensors = parse_request(body, header_length)
        runtime = self.runtime
        rows = runtime.rows(tensors)
        if rows.shape[0] == 0:
            raise InvalidInput("the request has no rows; send at least one")
        outputs, binary = _requested_outputs(request, runtime.outputs)
        request_id = request.id if request.id is not None else uuid.uuid4().hex
        future = self.loop.create_future()
        self.pending.append(InferJob(rows, outputs, binary, request_id, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # Runs after every connection that was readable in this loop iteration has been read,
            # so the requests that arrived together are scored together.
            self.loop.call_soon(self.flush)
        return future

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
                _reply(job, Reply(500, JSON_HEADERS,
                                  error_body(f"the server failed: {type(e).__name__}: {e}")))

    def _score_together(self, group: list[InferJob]) -> None:
        rows = np.concatenate([job.rows for job in group])
        try:
            results = self.runtime.run(rows, group[0].outputs)
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
            results = self.runtime.run(job.rows, job.outputs)
        except Exception as e:  # noqa: BLE001
            _reply(job, error_reply(_model_error(e)))
            return
        self._answer(job, results)

    def _answer(self, job: InferJob, results: dict[str, np.ndarray]) -> None:
        try:
            binary = dict(zip(job.outputs, job.binary))
            outputs, raws = [], []
            for name, values in results.items():
                output, raw = encode_output(name, values, binary.get(name, False))
                outputs.append(output)
                if raw is not None:
                    raws.append(raw)
            head = dumps({"model_name": self.name, "model_version": self.version,
                          "id": job.request_id, "outputs": outputs})
        except Exception as e:  # noqa: BLE001
            log.exception("cannot encode the model's output")
            _reply(job, Reply(500, JSON_HEADERS,
                              error_body(f"the model's output cannot be encoded: {e}")))
            return
        if not raws:
            _reply(job, Reply(200, JSON_HEADERS, head))
            return
        _reply(job, Reply(200, (("content-type", BINARY_CONTENT_TYPE),
                                (HEADER_LENGTH, str(len(head)))), b"".join((head, *raws))))


def _header(headers, name: str) -> str | None:
    if isinstance(headers, dict):
        return headers.get(name)
    wanted = name.encode()
    for key, value in headers:
        if key == wanted:
            return value.decode("latin-1")
    return None


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(f"use {allowed} here, not {method}",
                               "GET, HEAD" if allowed == "GET" else allowed)


def _reply(job: InferJob, reply: Reply) -> None:
    if not job.future.done():  # a client that went away may have cancelled it
        job.future.set_result(reply)


def _requested_outputs(request: InferenceRequest, available: tuple[str, ...]
                       ) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The outputs to compute and, for each, whether it goes back as binary data."""
    all_binary = bool(request.parameters and request.parameters.binary_data_output)
    if request.outputs is None:
        return available[:1], (all_binary,)
    if not request.outputs:
        raise InvalidInput('"outputs" must be a non-empty list like [{"name": "predict"}]')
    names, binary = [], []
    for item in request.outputs:
        if item.name not in available:
            raise InvalidInput(f"unknown output {item.name!r}; this model has "
                               f"{', '.join(available)}")
        params = item.parameters
        if params is not None and (params.model_extra or {}).get("class_count"):
            raise InvalidInput("the classification extension is not supported; ask for "
                               "predict_proba instead")
        if item.name not in names:
            names.append(item.name)
            wants = params.binary_data if params is not None else None
            binary.append(all_binary if wants is None else wants)
    return tuple(names), tuple(binary)


def _model_error(exc: Exception) -> FermiError:
    bad_input = isinstance(exc, (ValueError, TypeError, KeyError, IndexError))
    if type(exc).__name__ == "MlflowException":
        bad_input = getattr(exc, "error_code", "") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
    if bad_input:
        return InvalidInput(f"the model could not score this input: {exc}")
    log.error("the model failed", exc_info=exc)
    return ServerFault(f"the model failed while scoring: {type(exc).__name__}: {exc}")
