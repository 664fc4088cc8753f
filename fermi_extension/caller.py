"""Who is asking, and the audit record of what they changed: shared by every domain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from .db import AuditEvent
from .errors import NotFound


@dataclass(frozen=True)
class Caller:
    """Who is asking: every read and write is scoped by it."""

    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()
    remote_addr: str | None = None


def owned(session: Session, model, key: str, caller: Caller, what: str):
    """The row ``key`` of ``model`` if the caller owns it or is an admin. Anything else looks
    like a missing one, so nobody learns what others have."""
    row = session.get(model, key)
    if row is None or (row.owner != caller.name and not caller.admin):
        raise NotFound(f"No {what} {key!r} (or it is not yours).")
    return row


def visible(query, column, caller: Caller, wanted: str | None = None):
    """What a listing shows: a user only their own rows (``column`` names the owner); an admin
    everyone's, or ``wanted``'s alone when given."""
    if not caller.admin:
        return query.where(column == caller.name)
    return query.where(column == wanted) if wanted else query


def audit(session: Session, caller: Caller, action: str, kind: str, target: str,
          before: dict | None = None, after: dict | None = None) -> None:
    """Append a record of a change (committed with the change itself)."""
    session.add(AuditEvent(actor=caller.name, action=action, target_kind=kind, target_id=target,
                           remote_addr=caller.remote_addr, before=before, after=after))
