"""What the control plane reads from the hub's REST API as the service ``fermi``: users' running
dev servers (profile from ``user_options``, ``started``, ``last_activity``) and users' groups.

The service's role decides what the hub answers: ``list:users`` + ``read:users:groups`` give the
groups; ``read:servers`` gives the server models. Without ``read:servers`` the user models come
back without ``servers`` and callers fall back to what the platform database knows (GPU
assignments of dev servers); ``HubView.servers_readable`` says which it was. Answers are cached
for a few seconds: a dashboard refresh must not turn into a burst of hub requests.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field

import httpx

log = logging.getLogger("fermi.monitoring")


@dataclass
class HubServer:
    user: str
    name: str  # "" for the default server
    profile: str | None
    started: dt.datetime | None
    last_activity: dt.datetime | None
    url: str | None
    ready: bool


@dataclass
class HubView:
    """One read of the hub: who has which running servers and who is in which group."""

    reachable: bool = False
    servers_readable: bool = False
    servers: list[HubServer] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # user -> groups
    error: str | None = None


def parse_time(value: str | None) -> dt.datetime | None:
    """The hub's ISO 8601 times (``…Z``) as naive UTC, the platform database's convention."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return parsed


def view_from_users(users: list[dict]) -> HubView:
    """A ``HubView`` from the hub's ``GET /users`` answer (a pure function, tested on its own)."""
    view = HubView(reachable=True)
    for user in users:
        name = user.get("name")
        if not name:
            continue
        view.groups[name] = list(user.get("groups") or [])
        if "servers" not in user:
            continue
        view.servers_readable = True
        for server_name, server in (user.get("servers") or {}).items():
            if server.get("stopped"):
                continue
            options = server.get("user_options") or {}
            view.servers.append(HubServer(
                user=name, name=server_name or "",
                profile=options.get("profile") if isinstance(options, dict) else None,
                started=parse_time(server.get("started")),
                last_activity=parse_time(server.get("last_activity")),
                url=server.get("url"), ready=bool(server.get("ready")),
            ))
    return view


class HubClient:
    """Reads ``GET {api_url}/users`` with the service's token; never raises."""

    def __init__(self, api_url: str | None = None, token: str | None = None,
                 cache_seconds: float = 10.0, timeout: float = 5.0):
        self.api_url = (api_url if api_url is not None
                        else os.environ.get("JUPYTERHUB_API_URL", "")).rstrip("/")
        self.token = token if token is not None else os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cached: tuple[float, HubView] | None = None

    async def fetch_users(self) -> list[dict]:
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            response = await http.get(f"{self.api_url}/users",
                                      headers={"Authorization": f"token {self.token}"})
            response.raise_for_status()
            body = response.json()
        # the paginated form ({"items": [...]}) or the plain list, whichever the hub answers
        return body.get("items", []) if isinstance(body, dict) else body

    async def view(self, max_age: float | None = None) -> HubView:
        """The hub's answer, at most ``max_age`` seconds old (default: ``cache_seconds``)."""
        age = self.cache_seconds if max_age is None else max_age
        if self._cached and time.monotonic() - self._cached[0] < age:
            return self._cached[1]
        if not self.api_url or not self.token:
            view = HubView(error="not running as a hub service (no JUPYTERHUB_API_URL/TOKEN)")
        else:
            try:
                view = view_from_users(await self.fetch_users())
            except (httpx.HTTPError, ValueError) as error:
                log.warning("could not read users from the hub: %s", error)
                view = HubView(error=f"the hub's API did not answer: {error}")
        self._cached = (time.monotonic(), view)
        return view
