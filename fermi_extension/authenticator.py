"""Login for the embedded default: NativeAuthenticator (bcrypt-hashed passwords, sign-up with
admin approval) with the first admin created on first start."""

from __future__ import annotations

import os

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from traitlets import Unicode, default


class FermiAuthenticator(NativeAuthenticator):
    """Also writes the platform's audit log for changes to users: sign-up, approval (by which
    admin), creation and deletion through the hub."""

    platform_db_url = Unicode(
        help="The platform database, for audit records of user changes (default: $FERMI_DB_URL, "
             "else the SQLite file of $FERMI_DATA_DIR).",
    ).tag(config=True)

    @default("platform_db_url")
    def _default_platform_db_url(self):
        from .db import platform_db_url_from_env

        return platform_db_url_from_env()

    def audit_user_change(self, actor: str, action: str, user: str, *, once: bool = False,
                          **change) -> None:
        """``once``: only if the user has no record of coming into being yet."""
        if not self.platform_db_url:
            return
        from fermi_spawner.base import platform_sessions
        from sqlalchemy import select

        from .caller import Caller, audit
        from .db import AuditEvent

        with platform_sessions(self.platform_db_url)() as session:
            if once and session.scalar(select(AuditEvent.id).where(
                    AuditEvent.target_kind == "user", AuditEvent.target_id == user,
                    AuditEvent.action.in_(("create", "sign-up"))).limit(1)):
                return
            audit(session, Caller(actor), action, "user", user, **change)
            session.commit()

    def create_user(self, username, password, **kwargs):
        created = super().create_user(username, password, **kwargs)
        if created is not None and username != self.first_admin:
            self.audit_user_change(username, "sign-up", username,
                                   after={"authorized": bool(created.is_authorized)})
        return created

    def add_user(self, user):
        result = super().add_user(user)
        # the hub calls this when an admin adds a user (admin page, REST API) without saying
        # which admin, and again for every known user at each start: one record per user
        self.audit_user_change("(hub)", "create", user.name, once=True,
                               after={"admin": bool(user.admin)})
        return result

    def delete_user(self, user):
        result = super().delete_user(user)
        self.audit_user_change("(hub)", "delete", user.name, before={"admin": bool(user.admin)})
        return result

    first_admin = Unicode(
        "admin",
        help="Name of the admin account created on first start (default: admin).",
    ).tag(config=True)

    first_admin_password = Unicode(
        help="""Password of the first admin, used only when that account does not exist yet.
        Default: $FERMI_ADMIN_PASSWORD, which `fermi up` generates and keeps in the data dir.""",
    ).tag(config=True)

    @default("first_admin_password")
    def _default_password(self):
        return os.environ.get("FERMI_ADMIN_PASSWORD", "")

    def add_new_table(self):
        super().add_new_table()
        self.admin_users = set(self.admin_users) | {self.first_admin}
        if self.first_admin_password and self.get_user(self.first_admin) is None:
            self.create_user(self.first_admin, self.first_admin_password)
            self.log.info("Created the first admin account %r", self.first_admin)

    def get_handlers(self, app):
        ours = {native_handlers.LoginHandler: LoginHandler,
                native_handlers.ToggleAuthorizationHandler: ToggleAuthorizationHandler}
        return [(pattern, ours.get(handler, handler)) for pattern, handler in super().get_handlers(app)]


class _NoStats:
    """NativeAuthenticator 1.3 still times logins with ``self.statsd``, which JupyterHub 6
    removed: without this every login answers 500."""

    def timer(self, *_args):
        return self

    def start(self):
        return self

    def stop(self, **_kwargs):
        return None


class LoginHandler(native_handlers.LoginHandler):
    statsd = _NoStats()


class ToggleAuthorizationHandler(native_handlers.ToggleAuthorizationHandler):
    """Approving (or withdrawing) a sign-up, recorded with the admin who did it."""

    async def get(self, slug):
        await super().get(slug)
        info = native_handlers.UserInfo.find(self.db, slug)
        if info is not None:
            self.authenticator.audit_user_change(
                self.current_user.name, "authorize" if info.is_authorized else "unauthorize", slug,
                after={"authorized": bool(info.is_authorized)})
