"""A small client of the control-plane API, for the `fermi` command and scripts.

It finds the platform and a token in the environment: FERMI_URL (default
http://127.0.0.1:8000) or, inside a dev server, FERMI_API_URL; FERMI_TOKEN or, inside a dev
server, JUPYTERHUB_API_TOKEN.
"""

from __future__ import annotations

import os
from typing import Any

import httpx


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


def api_url_from_env() -> str:
    if os.environ.get("FERMI_URL"):
        return os.environ["FERMI_URL"].rstrip("/") + "/services/fermi/api"
    if os.environ.get("FERMI_API_URL"):
        return os.environ["FERMI_API_URL"].rstrip("/")
    return "http://127.0.0.1:8000/services/fermi/api"


def token_from_env() -> str | None:
    return os.environ.get("FERMI_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")


class Client:
    def __init__(self, api_url: str | None = None, token: str | None = None, timeout: float = 30):
        self.api_url = (api_url or api_url_from_env()).rstrip("/")
        token = token or token_from_env()
        headers = {"Authorization": f"token {token}"} if token else {}
        self.http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path.lstrip("/"), **kwargs)
        except httpx.ConnectError:
            raise APIError(0, f"Cannot reach Fermi at {self.api_url}: is `fermi up` running? "
                              "Set FERMI_URL to the hub's address.") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text or response.reason_phrase
            raise APIError(response.status_code, message)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body or {}).json()
