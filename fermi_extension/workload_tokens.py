"""Tokens a workload holds instead of any platform secret, each scoped to what it needs.

A job attempt gets one at launch (``jobs/service.py``) and sends it to the tracking proxy as
``MLFLOW_TRACKING_TOKEN``; the proxy resolves it to a ``Grant`` (whose job, which run) and the
tracking server's gate allows that run and nothing else. The token is revoked when the attempt
ends. A model server that fetches its model itself (a revision's storage initializer on
Kubernetes) gets one that reads that one model version's files and nothing else, revoked when
its deployment no longer runs that version (``deployments/service.py``).

The database keeps only a token's sha256: a copy of the database (a backup, a leaked file)
holds no credential, and a lookup by digest needs no constant-time comparison of secrets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from contextlib import contextmanager

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from . import db
from .db import WorkloadToken

# "job" and "replica" are issued today; dev servers will get theirs under "server"
KINDS = ("job", "replica", "server")


@dataclass(frozen=True)
class Grant:
    """What a workload token stands for."""

    kind: str
    owner: str
    job_id: str | None = None
    run_id: str | None = None
    deployment: str | None = None  # a replica's: the deployment it serves
    model: str | None = None  # a replica's: the one version it reads, models:/NAME/VERSION


@contextmanager
def _writing(where: sessionmaker | Session):
    """A session to write in: the caller's own (which commits with the rest of its work, and
    holds SQLite's write lock already), or a new one committed here."""
    if isinstance(where, Session):
        yield where
        return
    with where() as session:
        yield session
        session.commit()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def issue(where: sessionmaker | Session, *, kind: str, owner: str, job_id: str | None = None,
          run_id: str | None = None, deployment: str | None = None, model: str | None = None,
          ttl: dt.timedelta | float | None = None) -> str:
    """A new token for ``owner``'s workload, written through ``where`` (a session factory, or
    a session the caller commits); ``ttl`` (seconds or a timedelta): it expires by itself
    after that (None: valid until revoked)."""
    if kind not in KINDS:
        raise ValueError(f"unknown workload token kind {kind!r}; one of {', '.join(KINDS)}")
    if ttl is not None and not isinstance(ttl, dt.timedelta):
        ttl = dt.timedelta(seconds=float(ttl))
    token = secrets.token_urlsafe(32)
    now = db.utcnow()
    with _writing(where) as session:
        session.add(WorkloadToken(digest=digest(token), kind=kind, owner=owner, job_id=job_id,
                                  run_id=run_id, deployment=deployment, model=model,
                                  created_at=now,
                                  expires_at=now + ttl if ttl is not None else None))
    return token


def resolve(session_factory: sessionmaker, token: str) -> Grant | None:
    """The grant of a live token; None for an unknown, revoked or expired one."""
    if not token:
        return None
    with session_factory() as session:
        row = session.get(WorkloadToken, digest(token))
        if row is None or (row.expires_at is not None and row.expires_at <= db.utcnow()):
            return None
        return Grant(kind=row.kind, owner=row.owner, job_id=row.job_id, run_id=row.run_id,
                     deployment=row.deployment, model=row.model)


def revoke(where: sessionmaker | Session, *, job_id: str | None = None,
           deployment: str | None = None, model: str | None = None) -> int:
    """Revoke every token of ``job_id``, or of ``deployment`` (only those reading ``model``
    when it is given); their digests are deleted, through ``where`` as in ``issue``. Returns
    how many."""
    if (job_id is None) == (deployment is None):
        raise ValueError("revoke the tokens of a job_id or of a deployment")
    if job_id is not None:
        which = WorkloadToken.job_id == job_id
    else:
        which = WorkloadToken.deployment == deployment
        if model is not None:
            which = which & (WorkloadToken.model == model)
    with _writing(where) as session:
        removed = session.execute(delete(WorkloadToken).where(which))
    return removed.rowcount or 0
