"""What every control-plane handler shares: hub authentication, JSON, errors, the route table.

Authentication is JupyterHub's: a hub API token (``Authorization: token …``) or the hub OAuth
cookie of this service. Errors are JSON ``{"message": …}`` with the status of the domain error
(``errors.http_status``) — one mapping for the whole API.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from jupyterhub.services.auth import HubOAuthenticated
from pydantic import BaseModel, ValidationError
from tornado import web

from ..catalog.store import validation_message
from ..errors import FermiError, InvalidInput, NotAuthenticated, http_status
from ..caller import Caller

if TYPE_CHECKING:
    from .app import Services

log = logging.getLogger("fermi.api")


@dataclass
class Operation:
    """OpenAPI facts about one handler method; the document is generated from these."""

    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: dict[str, str] | None = None
    admin: bool = False
    content_type: str | None = None


def operation(summary: str, **kwargs: Any) -> Callable:
    def mark(method: Callable) -> Callable:
        method.__operation__ = Operation(summary, **kwargs)
        return method

    return mark


class APIHandler(HubOAuthenticated, web.RequestHandler):
    """Base of every API handler: authenticated on every verb."""

    @property
    def caller(self) -> Caller:
        model = self.current_user
        if not model:
            raise NotAuthenticated(
                "Not logged in: send a JupyterHub API token as `Authorization: token <token>` "
                "(create one at /hub/token) or log in through the hub."
            )
        return Caller(
            name=model["name"],
            admin=bool(model.get("admin")),
            groups=tuple(model.get("groups") or ()),
            remote_addr=self.request.remote_ip,
        )

    def prepare(self) -> None:
        self.caller  # noqa: B018 — every verb requires a hub identity

    @property
    def services(self) -> "Services":
        """The control plane's parts, as the composition root built them (``app.Services``)."""
        return self.settings["services"]

    # -- JSON in and out --------------------------------------------------------------------

    def body_dict(self) -> dict:
        """The request's JSON object (an empty body is ``{}``)."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as error:
            raise InvalidInput(f"The request body is not valid JSON: {error}.") from None
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.")
        return body

    def parse(self, model: type[BaseModel]) -> Any:
        body = self.body_dict()
        try:
            return model.model_validate(body)
        except ValidationError as error:
            raise InvalidInput(validation_message(error)) from None

    def query_int(self, name: str, default: int) -> int:
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise InvalidInput(f"Query parameter `{name}` must be an integer, not {value!r}.") from None

    def send(self, payload: BaseModel | dict | list, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if isinstance(payload, BaseModel):
            self.finish(payload.model_dump_json())
        else:
            self.finish(json.dumps(payload, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        message = self._reason
        if exc_info:
            error = exc_info[1]
            if isinstance(error, FermiError):
                message = error.message
            elif isinstance(error, web.HTTPError) and error.log_message:
                message = error.log_message % error.args if error.args else error.log_message
            elif status_code >= 500:
                message = "Internal error in the control plane; see its log."
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"message": message}))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, FermiError):
            log.info("%s %s → %s: %s", self.request.method, self.request.uri,
                     value.status, value.message)
        else:
            super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, FermiError):
            self.log_exception(type(e), e, e.__traceback__)
            if not self._finished:
                self.send_error(http_status(e), exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)
