"""Login for the embedded default: NativeAuthenticator (bcrypt-hashed passwords, sign-up with
admin approval) with the first admin created on first start."""

from __future__ import annotations

import os

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from traitlets import Unicode, default


class FermiAuthenticator(NativeAuthenticator):
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
        return [
            (pattern, LoginHandler if handler is native_handlers.LoginHandler else handler)
            for pattern, handler in super().get_handlers(app)
        ]


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
