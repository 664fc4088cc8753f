"""Who is asking, and the audit record of what they changed: shared by every domain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from .db import AuditEvent


@dataclass(frozen=True)
class Caller:
    """Who is asking: every read and write is scoped by it."""

    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()
    remote_addr: str | None = None


def audit(session: Session, caller: Caller, action: str, kind: str, target: str,
          before: dict | None = None, after: dict | None = None) -> None:
    """Append a record of a change (committed with the change itself)."""
    session.add(AuditEvent(actor=caller.name, action=action, target_kind=kind, target_id=target,
                           remote_addr=caller.remote_addr, before=before, after=after))
