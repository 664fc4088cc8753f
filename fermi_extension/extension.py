"""The dev-server side: a Jupyter server extension with routes under ``/fermi/api/``.

It adds what only the dev server knows — the notebook at a path in the user's files — and
forwards to the control plane as the server's user (with the server's own hub token, which the
hub grants access to the ``fermi`` service). Jobs therefore belong to the control plane, and
stopping this server never stops them.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath

import httpx
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Unicode, default

from .errors import FermiError, InvalidInput, NotFound


def check_notebook_path(path: str) -> str:
    """A path inside the user's files: relative, no '..', a notebook."""
    if not path or not isinstance(path, str):
        raise InvalidInput("`path` is required: the notebook's path in your files, e.g. train.ipynb.")
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidInput(
            f"`path` {path!r} must be relative to your home folder and must not contain '..'."
        )
    if pure.suffix != ".ipynb":
        raise InvalidInput(f"`path` {path!r} is not a notebook (.ipynb).")
    return str(pure)


class ControlPlane:
    """Calls to the control plane as this server's user."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=30
        )

    async def call(self, method: str, path: str, **kwargs) -> tuple[int, bytes, str]:
        if not self.api_url:
            raise FermiError("This server is not connected to a Fermi control plane (FERMI_API_URL is not set).")
        try:
            response = await self.http.request(method, f"{self.api_url}/{path.lstrip('/')}", **kwargs)
        except httpx.HTTPError as error:
            error_ = FermiError(f"The Fermi control plane is not answering ({error.__class__.__name__}).")
            error_.status = 502
            raise error_ from None
        return response.status_code, response.content, response.headers.get("Content-Type", "application/json")


class FermiHandler(APIHandler):
    @property
    def control_plane(self) -> ControlPlane:
        return self.settings["fermi_control_plane"]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, FermiError):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": exc.message}))
            return
        super().write_error(status_code, **kwargs)

    def _handle_request_exception(self, e):
        if isinstance(e, FermiError) and not self._finished:
            self.send_error(getattr(e, "status", 400), exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    async def forward(self, method: str, path: str, **kwargs) -> None:
        status, body, content_type = await self.control_plane.call(method, path, **kwargs)
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)


class JobsHandler(FermiHandler):
    @web.authenticated
    async def get(self):
        await self.forward("GET", "jobs", params=dict(
            (k, self.get_query_argument(k)) for k in self.request.query_arguments
        ))

    @web.authenticated
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidInput("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.")
        path = check_notebook_path(body.pop("path", None))
        if "notebook" in body:
            raise InvalidInput("Send `path` (a notebook in your files), not `notebook`.")
        try:
            model = await maybe_await(self.contents_manager.get(path, content=True, type="notebook"))
        except web.HTTPError as error:
            if error.status_code == 404:
                raise NotFound(f"No notebook at {path!r} in your files.") from None
            raise InvalidInput(f"Cannot read {path!r}: {error.log_message}") from None
        body["notebook"] = model["content"]
        body.setdefault("notebook_name", PurePosixPath(path).name)
        await self.forward("POST", "jobs", json=body)


class ProxyHandler(FermiHandler):
    """Everything else under /fermi/api/ is the control plane's API as is."""

    @web.authenticated
    async def get(self, path):
        await self.forward("GET", path, params=dict(
            (k, self.get_query_argument(k)) for k in self.request.query_arguments
        ))

    @web.authenticated
    async def post(self, path):
        await self.forward("POST", path, content=self.request.body,
                           headers={"Content-Type": "application/json"})

    @web.authenticated
    async def patch(self, path):
        await self.forward("PATCH", path, content=self.request.body,
                           headers={"Content-Type": "application/json"})

    @web.authenticated
    async def delete(self, path):
        await self.forward("DELETE", path)


async def maybe_await(value):
    import inspect

    return await value if inspect.isawaitable(value) else value


class FermiExtension(ExtensionApp):
    name = "fermi_extension"

    api_url = Unicode(
        help="The control plane's API URL (default: $FERMI_API_URL, set by the hub's spawner).",
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self):
        return os.environ.get("FERMI_API_URL", "")

    api_token = Unicode(
        help="Token for the control plane (default: this server's $JUPYTERHUB_API_TOKEN).",
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def initialize_settings(self):
        self.settings["fermi_control_plane"] = ControlPlane(self.api_url, self.api_token)

    def initialize_handlers(self):
        self.handlers.extend([
            (r"/fermi/api/jobs/?", JobsHandler),
            (r"/fermi/api/(.+)", ProxyHandler),
        ])
