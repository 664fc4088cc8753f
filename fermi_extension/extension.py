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
from .jobs.parameters import detect_parameters
from .templates import template_catalogue


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


class NotebookAtPathHandler(FermiHandler):
    """Reads a JSON body naming a notebook by `path` in the user's files."""

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidInput("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.")
        return body

    async def read_notebook(self, path: str) -> dict:
        try:
            model = await maybe_await(self.contents_manager.get(path, content=True, type="notebook"))
        except web.HTTPError as error:
            if error.status_code == 404:
                raise NotFound(f"No notebook at {path!r} in your files.") from None
            raise InvalidInput(f"Cannot read {path!r}: {error.log_message}") from None
        return json.loads(json.dumps(model["content"]))  # nbformat's NotebookNode → plain JSON

    async def forward_with_notebook(self, target: str) -> None:
        """Submit the notebook at `path` (as saved) to the control plane's `target` route."""
        body = self.json_body()
        path = check_notebook_path(body.pop("path", None))
        if "notebook" in body:
            raise InvalidInput("Send `path` (a notebook in your files), not `notebook`.")
        body["notebook"] = await self.read_notebook(path)
        body.setdefault("notebook_name", PurePosixPath(path).name)
        await self.forward("POST", target, json=body)


class JobsHandler(NotebookAtPathHandler):
    @web.authenticated
    async def get(self):
        await self.forward("GET", "jobs", params=dict(
            (k, self.get_query_argument(k)) for k in self.request.query_arguments
        ))

    @web.authenticated
    async def post(self):
        await self.forward_with_notebook("jobs")


class SchedulesHandler(JobsHandler):
    @web.authenticated
    async def get(self):
        await self.forward("GET", "schedules")

    @web.authenticated
    async def post(self):
        await self.forward_with_notebook("schedules")


class NotebookParametersHandler(NotebookAtPathHandler):
    """The parameters a submission of the notebook at `path` would take (for the submit form)."""

    @web.authenticated
    async def post(self):
        path = check_notebook_path(self.json_body().get("path"))
        notebook = await self.read_notebook(path)
        parameters = detect_parameters(notebook)
        self.finish({"path": path, "parameters": [p.model_dump(mode="json") for p in parameters]})


class JobOutputOpenHandler(FermiHandler):
    """Saves a job's executed notebook into the user's files, so that the lab can open it."""

    folder = "fermi-outputs"

    @web.authenticated
    async def post(self, job_id):
        status, body, _ = await self.control_plane.call("GET", f"jobs/{job_id}/output")
        if status != 200:
            self.set_status(status)
            self.set_header("Content-Type", "application/json")
            self.finish(body)
            return
        status, described, _ = await self.control_plane.call("GET", f"jobs/{job_id}")
        name = json.loads(described).get("name", "job") if status == 200 else "job"
        contents = self.contents_manager
        await ensure_folder(contents, self.folder)
        path = f"{self.folder}/{name}-{job_id}.ipynb"
        await maybe_await(contents.save(
            {"type": "notebook", "format": "json", "content": json.loads(body)}, path))
        self.finish({"path": path})


class TemplatesHandler(FermiHandler):
    """"New from template": the list, and a copy of one into the user's files."""

    @web.authenticated
    async def get(self):
        self.finish({"templates": template_catalogue()})

    @web.authenticated
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidInput("The request body is not valid JSON.") from None
        from .paths import shipped

        names = {t["name"]: t for t in template_catalogue()}
        name = body.get("name") if isinstance(body, dict) else None
        if name not in names:
            raise NotFound(f"No template {name!r}; there are: {', '.join(names) or 'none'}.")
        content = json.loads((shipped("templates") / names[name]["file"]).read_text())
        folder = str(body.get("folder") or "").strip("/")
        if folder:  # the same rule as a notebook's path: inside the user's files
            folder = str(PurePosixPath(check_notebook_path(f"{folder}/x.ipynb")).parent)
        contents = self.contents_manager
        await ensure_folder(contents, folder)
        stem, index = name, 0
        while True:  # never overwrite: name, name-1, name-2, …
            candidate = f"{stem}{f'-{index}' if index else ''}.ipynb"
            path = f"{folder}/{candidate}" if folder else candidate
            if not await maybe_await(contents.file_exists(path)):
                break
            index += 1
        await maybe_await(contents.save({"type": "notebook", "format": "json", "content": content}, path))
        self.set_status(201)
        self.finish({"path": path})


class EnvironmentHandler(FermiHandler):
    """What this dev server runs on (profile, image, GPUs, price), from its spawner's environment."""

    @web.authenticated
    async def get(self):
        env = os.environ
        gpus = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        price = env.get("FERMI_PRICE_PER_HOUR")
        self.finish({
            "user": self.current_user.username,
            "profile": env.get("FERMI_PROFILE") or None,
            "image": env.get("FERMI_IMAGE") or None,
            "image_version": env.get("FERMI_IMAGE_VERSION") or None,
            "gpus": len(gpus),
            "price_per_hour": float(price) if price else None,
        })


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
    async def put(self, path):
        await self.forward("PUT", path, content=self.request.body,
                           headers={"Content-Type": self.request.headers.get(
                               "Content-Type", "application/json")})

    @web.authenticated
    async def delete(self, path):
        await self.forward("DELETE", path)


class NoRouteHandler(FermiHandler):
    """``/fermi/api/`` itself: a JSON 404 like every other error of this API (the control plane
    answers the same for paths it does not have)."""

    @web.authenticated
    def get(self):
        raise NotFound(f"No API route {self.request.method} {self.request.path}; the dev server "
                       "adds jobs, schedules, notebook/parameters, environment and templates to "
                       "the control plane's routes (its openapi.json lists them).")

    post = put = patch = delete = get


async def ensure_folder(contents, folder: str) -> None:
    """Make ``folder`` (and its parents) in the user's files if missing."""
    parts = [p for p in folder.split("/") if p]
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        if not await maybe_await(contents.dir_exists(path)):
            await maybe_await(contents.save({"type": "directory"}, path))


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
        self.control_plane = ControlPlane(self.api_url, self.api_token)
        self.settings["fermi_control_plane"] = self.control_plane

    async def stop_extension(self):
        await self.control_plane.http.aclose()

    def initialize_handlers(self):
        self.handlers.extend([
            (r"/fermi/api/jobs/?", JobsHandler),
            (r"/fermi/api/schedules/?", SchedulesHandler),
            (r"/fermi/api/notebook/parameters/?", NotebookParametersHandler),
            (r"/fermi/api/jobs/([^/]+)/output/open/?", JobOutputOpenHandler),
            (r"/fermi/api/environment/?", EnvironmentHandler),
            (r"/fermi/api/templates/?", TemplatesHandler),
            (r"/fermi/api/(.+)", ProxyHandler),
            (r"/fermi/api/?", NoRouteHandler),
        ])
