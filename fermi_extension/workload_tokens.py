"""Tokens a workload holds instead of any platform secret, each scoped to what it needs.

A job attempt gets one at launch (``jobs/service.py``) and sends it to the tracking proxy as
``MLFLOW_TRACKING_TOKEN``; the proxy resolves it to a ``Grant`` (whose job, which run) and the
tracking server's gate allows that run and nothing else. The token is revoked when the attempt
ends. The database keeps only its sha256: a copy of the database (a backup, a leaked file)
holds no credential, and a lookup by digest needs no constant-time comparison of secrets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import sessionmaker

from . import db
from .db import WorkloadToken

# "job" is the one issued today; replicas and dev servers will get theirs under these names
KINDS = ("job", "replica", "server")


@dataclass(frozen=True)
class Grant:
    """What a workload token stands for."""

    kind: str
    owner: str
    job_id: str | None = None
    run_id: str | None = None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def issue(session_factory: sessionmaker, *, kind: str, owner: str, job_id: str | None = None,
          run_id: str | None = None, ttl: dt.timedelta | float | None = None) -> str:
    """A new token for ``owner``'s workload; ``ttl`` (seconds or a timedelta): it expires by
    itself after that (None: valid until revoked)."""
    if kind not in KINDS:
        raise ValueError(f"unknown workload token kind {kind!r}; one of {', '.join(KINDS)}")
    if ttl is not None and not isinstance(ttl, dt.timedelta):
        ttl = dt.timedelta(seconds=float(ttl))
    token = secrets.token_urlsafe(32)
    now = db.utcnow()
    with session_factory() as session:
        session.add(WorkloadToken(digest=digest(token), kind=kind, owner=owner, job_id=job_id,
                                  run_id=run_id, created_at=now,
                                  expires_at=now + ttl if ttl is not None else None))
        session.commit()
    return token


def resolve(session_factory: sessionmaker, token: str) -> Grant | None:
    """The grant of a live token; None for an unknown, revoked or expired one."""
    if not token:
        return None
    with session_factory() as session:
        row = session.get(WorkloadToken, digest(token))
        if row is None or (row.expires_at is not None and row.expires_at <= db.utcnow()):
            return None
        return Grant(kind=row.kind, owner=row.owner, job_id=row.job_id, run_id=row.run_id)


def revoke(session_factory: sessionmaker, *, job_id: str) -> int:
    """Revoke every token of ``job_id`` (its digests are deleted); returns how many."""
    with session_factory() as session:
        removed = session.execute(delete(WorkloadToken).where(WorkloadToken.job_id == job_id))
        session.commit()
        return removed.rowcount or 0
