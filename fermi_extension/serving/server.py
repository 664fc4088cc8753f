"""The model server of one inference-service replica.

One process serves one MLflow model version over the KServe Open Inference Protocol V2 (REST).
The control plane starts it so (keep this stable)::

    FERMI_REPLICA_KEY=KEY python -m fermi_extension.serving.server --model-dir DIR \\
        --model-name NAME --model-version V --port P [--host 127.0.0.1] \\
        [--head-timeout S] [--body-timeout S]

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
Tensors may travel as JSON or with the binary tensor data extension (``Inference-Header-Content-
Length``), as Triton's and KServe's clients send them; the server metadata lists
``binary_tensor_data``.

Layers: this module is the process (arguments, loading, signals, exit codes) and the transport;
``v2.py`` holds the protocol's types, the tensor codec and the one dataplane of V2 handlers,
with the batching; ``runtimes.py`` the model card and the predictors behind ``ModelRuntime``.

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
keeping its listening socket. Other flavours go through ``mlflow.pyfunc``. HTTP is the shared
layer of ``serving.http`` (llhttp; malformed input gets 400/408/413/431 and a closed connection;
``--head-timeout``/``--body-timeout`` bound a slow client); infer requests that arrive together
are scored in one call of the model (sklearn's per-call validation costs far more than a row),
and their answers split again, so throughput holds up under concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import socket
import sys
import threading
import time

from fermi_extension.serving.http import HttpError, HttpServer, Limits, add_timeout_arguments
from fermi_extension.serving.replica_key import ENV_REPLICA_KEY
from fermi_extension.serving.runtimes import (
    LoadError, ModelCard, ModelRuntime, NeedsPandas, Predictor, block_pandas, load_predictor,
    read_model_card,
)
from fermi_extension.serving.v2 import SERVER_NAME, DataPlane

log = logging.getLogger("fermi.model-server")

EXIT_CANNOT_LISTEN = 1
EXIT_LOAD_FAILED = 3
DRAIN_SECONDS = 10.0  # how long SIGTERM waits for requests in flight
IDLE_SECONDS = 75.0  # keep-alive connections idle this long are closed (the router's pool uses 4 s)
BODY_LIMIT = 64 * 1024 * 1024

# Set for the re-executed process (see `_reexec_with_pandas`); not an interface.
ENV_WITH_PANDAS = "FERMI_MODEL_SERVER_WITH_PANDAS"
ENV_LISTEN_FD = "FERMI_MODEL_SERVER_LISTEN_FD"


# -- HTTP -----------------------------------------------------------------------------------------

REFUSED = ("this replica answers only Fermi's router; send requests to the deployment's URL with "
           "its API key")


class ModelServer:
    """The process: listens, loads the model in the background, drains on SIGTERM."""

    def __init__(self, card: ModelCard, name: str, version: str, pandas_allowed: bool,
                 key: str | None = None, limits: Limits | None = None):
        self.loop = asyncio.get_running_loop()
        self.key = key.encode() if key else None  # requests must show it (see the docstring)
        self.card = card
        self.pandas_allowed = pandas_allowed
        self.runtime = ModelRuntime(card)
        self.service = DataPlane(self.runtime, name, version, self.loop)
        self.http = HttpServer(self.handle, limits or Limits(body_size=BODY_LIMIT, idle_timeout=IDLE_SECONDS),
                               check_head=self._check_key if self.key is not None else None,
                               server_header=SERVER_NAME.encode())
        self.draining = False
        self.finished: asyncio.Future = self.loop.create_future()
        self.listen_socket: socket.socket | None = None
        self.started = time.monotonic()

    def _check_key(self, request) -> None:
        # at the head, before the body is read or a 100 Continue sent: nothing of a stranger's
        # is taken in
        scheme, _, credential = (request.header(b"authorization") or b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.key):
            raise HttpError(401, REFUSED, close=True)

    def handle(self, request):
        """The dataplane's Reply (a (status, headers, body) tuple), or a future of it."""
        return self.service.handle(request.method, request.path, request.headers, request.body)

    async def listen(self, host: str, port: int) -> None:
        inherited = os.environ.pop(ENV_LISTEN_FD, None)
        if inherited:
            sock = socket.socket(fileno=int(inherited))
            sock.setblocking(False)
            server = await self.http.listen(sock=sock)
        else:
            server = await self.http.listen(host, port)
        self.listen_socket = server.sockets[0]
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
        self.runtime.set_predictor(predictor)
        self.service.model_loaded()
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
        for conn in list(self.http.connections):
            conn.transport.abort()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

    def begin_shutdown(self) -> None:
        if self.draining:
            return
        log.info("stopping: no new connections, %d request(s) in flight get up to %.0f s",
                 self.http.in_flight, DRAIN_SECONDS)
        self.draining = True
        drained = self.loop.create_task(self.http.drain(DRAIN_SECONDS))
        drained.add_done_callback(lambda _: self._stop(0))

    def _stop(self, code: int) -> None:
        if not self.finished.done():
            self.finished.set_result(code)


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
    add_timeout_arguments(parser)
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
    limits = Limits(body_size=BODY_LIMIT, idle_timeout=IDLE_SECONDS,
                    head_timeout=args.head_timeout, body_timeout=args.body_timeout)
    server = ModelServer(card, args.model_name, args.model_version, pandas_allowed, key, limits)
    try:
        await server.listen(args.host, args.port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return EXIT_CANNOT_LISTEN
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.begin_shutdown)
    server.start_loading()
    code = await server.finished
    server.http.close()
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
