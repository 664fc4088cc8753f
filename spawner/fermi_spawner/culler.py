"""Idle culling with a timeout per profile: jupyterhub-idle-culler with a cull arbiter.

The culler has one ``--timeout``; its ``cull_arbiter_hook`` decides per server. Ours looks up
the server's profile (``user_options.profile`` in the server model, which the culler may read
with ``read:servers``: it needs no access to spawner state) in the catalogue and culls after that
profile's ``idle_cull_minutes`` (0: never). The timeout is the catalogue's value *now*, so an
admin's edit applies to running servers too. A server without a profile, or whose profile was
removed, runs the default profile (that is what the spawner fell back to) and gets its timeout;
where the catalogue cannot be read at all, the culler's ``--timeout`` applies. Run by the hub as
the service ``idle-culler``::

    python -m fermi_spawner.culler --timeout=3600 --cull-every=60

The culler is a process of its own for the platform's whole life, so it reads only the two
fields it needs (``idle_cull_minutes``, ``default``) from the catalogue table, with the standard
library for SQLite: importing the catalogue's models and SQLAlchemy would double its memory.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from contextlib import closing
from typing import Callable

# profile slug → idle minutes, and the default profile's slug
Timeouts = tuple[dict[str, int], "str | None"]


def timeouts_from_profiles(profiles: list[dict]) -> Timeouts:
    """From catalogue profiles (in catalogue order), as ``catalog.schema.Catalog`` defines them:
    the default profile is the one marked ``default``, else the first."""
    minutes = {p["slug"]: int(p.get("idle_cull_minutes", 60)) for p in profiles}
    default = next((p["slug"] for p in profiles if p.get("default")),
                   profiles[0]["slug"] if profiles else None)
    return minutes, default


def idle_limit_seconds(timeouts: Timeouts | None, user_options: dict | None,
                       fallback: float) -> float | None:
    """Seconds a server may stay idle; None: never culled."""
    if timeouts is None:
        return fallback
    minutes, default = timeouts
    profile = (user_options or {}).get("profile") if isinstance(user_options, dict) else None
    if profile not in minutes:
        profile = default
    if profile is None:
        return fallback
    return None if minutes[profile] == 0 else minutes[profile] * 60.0


class ProfileTimeouts:
    """The culler's ``cull_arbiter_hook``: cull when idle longer than the server's profile
    allows. ``read`` is called at most once per ``ttl`` seconds (one cull pass reads the
    catalogue once, not once per server)."""

    def __init__(self, read: Callable[[], Timeouts], ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.read = read
        self.ttl = ttl
        self.clock = clock
        self._cached: tuple[float, Timeouts | None] | None = None

    def timeouts(self) -> Timeouts | None:
        now = self.clock()
        if self._cached is None or now - self._cached[0] > self.ttl:
            try:
                found = self.read()
            except Exception:  # the culler keeps working with its --timeout
                found = None
            self._cached = (now, found)
        return self._cached[1]

    def __call__(self, *, inactive: dt.timedelta, inactive_limit: float, server: dict,
                 **_kwargs) -> bool:
        limit = idle_limit_seconds(self.timeouts(), server.get("user_options"), inactive_limit)
        return limit is not None and inactive.total_seconds() >= limit


QUERY = "SELECT data FROM catalog_items WHERE kind = 'profiles' ORDER BY position"


def timeouts_reader(db_url: str) -> Callable[[], Timeouts]:
    """Reads the profiles of the platform database at ``db_url`` (a SQLAlchemy URL)."""
    if db_url.startswith("sqlite:///"):
        path = db_url[len("sqlite:///"):]

        def read_sqlite() -> Timeouts:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
                rows = [json.loads(data) for (data,) in db.execute(QUERY)]
            return timeouts_from_profiles(rows)

        return read_sqlite

    from sqlalchemy import create_engine, text  # other databases (PostgreSQL in production)

    engine = create_engine(db_url, pool_size=1)

    def read_sql() -> Timeouts:
        with engine.connect() as connection:
            rows = [data if isinstance(data, dict) else json.loads(data)
                    for (data,) in connection.execute(text(QUERY))]
        return timeouts_from_profiles(rows)

    return read_sql


def main(argv: list[str] | None = None) -> None:
    from jupyterhub_idle_culler import IdleCuller
    from traitlets.config import Config

    from fermi_extension.db import platform_db_url_from_env
    from fermi_extension.processes import die_with_parent

    # The hub starts the culler and, killed with -9, could not stop it: without this the culler
    # lives on, parented to init, for as long as the machine runs.
    die_with_parent()
    db_url = platform_db_url_from_env()
    config = Config()
    config.IdleCuller.cull_arbiter_hook = ProfileTimeouts(timeouts_reader(db_url))
    IdleCuller.launch_instance(argv, config=config)


if __name__ == "__main__":
    main()
