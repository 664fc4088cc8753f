"""The tracking proxy: MLflow's REST API at ``{prefix}tracking/``, for workloads and users.

Workloads (jobs in containers reach only the control plane's bridge address, never the tracking
server's loopback port) and users' own MLflow clients send ``Authorization: Bearer TOKEN``, as
MLflow's client does with ``MLFLOW_TRACKING_TOKEN``. The token is a workload token
(``workload_tokens``: a job's, scoped to its run) or a JupyterHub API token of a user, checked
with the hub through the control plane's ``HubAuth`` (which caches answers for
``cache_max_age``). The request then goes to the tracking server with the caller in headers
only this proxy can sign (``tracking.identity``; any such header a client sent is dropped), and
the tracking server's gate (``tracking.gate``) decides what the caller may reach: the rules live
there, so they hold for every path into MLflow.

Bodies stream both ways (artifact uploads and downloads of any size), chunk by chunk, with
back-pressure: nothing holds a whole file in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from urllib.parse import unquote, urlparse

import httpx
from tornado import web

from .. import workload_tokens
from ..caller import Caller
from ..errors import FermiError, NotAuthenticated, Unavailable, http_status
from ..tracking.identity import (CALLER_HEADER, SECRET_ENV, SIGNATURE_HEADER, TrackingCaller,
                                 secret_from_env, sign)

log = logging.getLogger("fermi.tracking")

TOKEN = re.compile(r"(?:bearer|token)\s+(\S+)\s*$", re.IGNORECASE)
# hop-by-hop headers (RFC 9110 §7.6.1) and what this proxy sets itself; the caller's token
# stays here: the tracking server needs who, not the credential
REQUEST_DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                   "trailer", "transfer-encoding", "upgrade", "host", "authorization", "cookie",
                   "expect", CALLER_HEADER, SIGNATURE_HEADER}
RESPONSE_DROPPED = {"connection", "keep-alive", "transfer-encoding", "upgrade", "date", "server"}
MAX_UPLOAD = 64 << 30  # artifacts (model files, checkpoints) are large and streamed, not held
NO_TOKEN = (
    "Send a token as `Authorization: Bearer <token>` (MLflow sends $MLFLOW_TRACKING_TOKEN so): "
    "inside a Fermi job it is set for you; elsewhere set MLFLOW_TRACKING_TOKEN to a JupyterHub "
    "API token (create one at /hub/token).")


def workload_tracking_uri(service_url: str, prefix: str) -> str:
    """The proxy as workloads reach it: the bridge's gateway where workloads run in containers
    (the control plane listens there too, ``app.start_services``), else loopback."""
    from ..containers.engine import Isolation

    url = urlparse(service_url)
    host = os.environ.get("FERMI_WORKLOAD_IP", "") if Isolation.from_env().containers else ""
    return f"{url.scheme}://{host or url.hostname}:{url.port}{prefix.rstrip('/')}/tracking"


class TrackingProxy:
    """Authenticates callers and forwards their requests to the tracking server."""

    def __init__(self, base: str, tracking_uri: str, session_factory, hub_auth,
                 secret: bytes | None = None):
        self.base = base  # the proxy's own path: {prefix}/tracking
        self.upstream = tracking_uri.rstrip("/")
        self.session_factory = session_factory
        self.hub_auth = hub_auth
        self.secret = secret_from_env() if secret is None else secret
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))

    async def authenticate(self, authorization: str) -> TrackingCaller:
        found = TOKEN.match(authorization or "")
        if found is None:
            raise NotAuthenticated(f"No token. {NO_TOKEN}")
        token = found.group(1)
        grant = await asyncio.to_thread(workload_tokens.resolve, self.session_factory, token)
        if grant is not None:
            return TrackingCaller(Caller(grant.owner), grant)
        try:
            model = await self.hub_auth.user_for_token(token, sync=False)
        except web.HTTPError:
            raise Unavailable("The hub is not answering, so a user token cannot be checked "
                              "now; retry.") from None
        if model and model.get("kind", "user") == "user" and self.hub_auth.check_scopes(
                self.hub_auth.access_scopes, model):
            return TrackingCaller(Caller(name=model["name"], admin=bool(model.get("admin")),
                                         groups=tuple(model.get("groups") or ())))
        raise NotAuthenticated(
            "The token is not valid here: it is unknown, expired, revoked (a job's token ends "
            f"with its job), or lacks access to the fermi service. {NO_TOKEN}")

    async def forward(self, handler: "TrackingProxyHandler", who: TrackingCaller) -> None:
        if not self.secret:
            raise Unavailable(f"The tracking proxy is not configured: {SECRET_ENV} must be set, "
                              "to the same value, for the control plane and the tracking server "
                              "(hub_config/jupyterhub_config.py does).")
        request = handler.request
        # the path as the client sent it (still percent-encoded, so an escaped "?" or "/" in an
        # artifact's name stays one); signed as the tracking server will read it, decoded
        upstream_path = "/" + request.path[len(self.base):].lstrip("/")
        headers = [(k, v) for k, v in request.headers.get_all()
                   if k.lower() not in REQUEST_DROPPED]
        headers += list(sign(self.secret, request.method, unquote(upstream_path), who).items())
        has_body = request.headers.get("Content-Length", "0") != "0" or \
            "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        url = self.upstream + upstream_path + (f"?{request.query}" if request.query else "")
        outgoing = self.client.build_request(request.method, url, headers=headers,
                                             content=handler.body_chunks() if has_body else None)
        try:
            response = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            raise Unavailable(f"The tracking server is not answering ({error.__class__.__name__});"
                              " retry.") from None
        try:
            handler.set_status(response.status_code, response.reason_phrase or "Unknown")
            handler.clear_header("Content-Type")
            for key, value in response.headers.multi_items():
                if key.lower() not in RESPONSE_DROPPED:
                    handler.add_header(key, value)
            async for chunk in response.aiter_raw():
                handler.write(chunk)
                await handler.flush()  # waits until the client took it: back-pressure
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self.client.aclose()


@web.stream_request_body
class TrackingProxyHandler(web.RequestHandler):
    """``{prefix}tracking/(.*)``: one MLflow request, streamed through."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, proxy: TrackingProxy) -> None:
        self.proxy = proxy
        self.chunks: asyncio.Queue = asyncio.Queue(maxsize=4)
        self.forwarding: asyncio.Future | None = None

    async def prepare(self) -> None:
        self.request.connection.set_max_body_size(MAX_UPLOAD)
        who = await self.proxy.authenticate(self.request.headers.get("Authorization", ""))
        # started now, so that the upload streams to the tracking server as it arrives
        self.forwarding = asyncio.ensure_future(self.proxy.forward(self, who))

    async def data_received(self, chunk: bytes) -> None:
        if self.forwarding is not None:
            await self._offer(chunk)

    async def _offer(self, item: bytes | None) -> None:
        """Queue a piece of the body: the queue is bounded (back-pressure), and a forward that
        has already ended (refused, or the tracking server went away) takes no more."""
        put = asyncio.ensure_future(self.chunks.put(item))
        await asyncio.wait([put, self.forwarding], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def body_chunks(self):
        while (chunk := await self.chunks.get()) is not None:
            yield chunk

    async def _forward(self, *_path) -> None:
        await self._offer(None)  # the body has ended
        await self.forwarding

    get = post = put = patch = delete = _forward

    def on_connection_close(self) -> None:
        if self.forwarding is not None and not self.forwarding.done():
            self.forwarding.cancel()

    def compute_etag(self):
        return None  # the tracking server's answer is passed on as it is

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        message = error.message if isinstance(error, FermiError) else (
            self._reason if status_code < 500 else
            "Internal error in the tracking proxy; see the control plane's log.")
        code = {401: "UNAUTHENTICATED", 503: "TEMPORARILY_UNAVAILABLE"}.get(status_code,
                                                                           "INTERNAL_ERROR")
        self.clear_header("Content-Length")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        # `error` for people and scripts, `error_code` and `message` for MLflow's client
        self.finish(json.dumps({"error": message, "error_code": code, "message": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, FermiError):
            log.info("%s %s → %s: %s", self.request.method, self.request.path, e.status,
                     e.message)
            if not self._finished:
                if self._headers_written:
                    self.finish()  # mid-answer: all that is left is to end it
                else:
                    self.send_error(http_status(e), exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


def routes(prefix: str, *, tracking_uri: str, session_factory, hub_auth) -> list:
    """The proxy's route, for the control plane's app (``app.make_app``)."""
    base = prefix.rstrip("/") + "/tracking"
    proxy = TrackingProxy(base, tracking_uri, session_factory, hub_auth)
    return [(base + "/(.*)", TrackingProxyHandler, {"proxy": proxy})]
