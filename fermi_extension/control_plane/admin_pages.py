"""Admin pages of the control plane: the catalogue editor at ``{prefix}admin/catalog``.

The page is a shell; a small vanilla JS file (``static/admin-catalog.js``, no build step, nothing
fetched from the internet) drives the catalogue API with the hub OAuth cookie. Cookie-authenticated
requests must carry the XSRF token (JupyterHub's ``HubOAuth`` refuses the cookie otherwise), so
the page hands the token to the script and the script sends it as ``X-XSRFToken``.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlencode

from tornado import web

from ..i18n import N_
from .pages import STATIC, PageHandler, script_strings

@lru_cache(maxsize=None)
def catalog_script_strings() -> list[str]:
    """The msgids admin-catalog.js looks up with ``T("…")``, read from the script by babel's own
    extractor (the one that builds the catalogue), so the two never disagree."""
    from babel.messages.extract import extract_from_file

    found = extract_from_file("javascript", str(STATIC / "admin-catalog.js"),
                              keywords={"T": None}, comment_tags=())
    return sorted({message for _line, message, _comments, _context in found})


class CatalogAdminPage(PageHandler):
    """Images, profiles and pools: list, create, edit, delete, history and revert."""

    @web.authenticated
    def get(self):
        if not self.require_admin_page():
            return
        token = self.xsrf_token  # also (re)sets the _xsrf cookie of this service when needed
        token = token.decode() if isinstance(token, bytes) else token
        self.render_page("catalog.html", xsrf=token,
                         strings=script_strings(self, catalog_script_strings()))


class AuditPage(PageHandler):
    """审计日志: the audit log with filters and CSV export (admins: everyone's; users: their own
    actions), the same records and filters as GET api/audit."""

    FILTERS = (("actor", N_("Who")), ("target_kind", N_("What kind")), ("action", N_("Action")))

    @web.authenticated
    def get(self):
        chosen = {name: self.get_query_argument(name, "") for name, _ in self.FILTERS}
        before = self.get_query_argument("before_id", None)
        page = self.services.usage.audit(
            self.caller, actor=chosen["actor"] or None, target_kind=chosen["target_kind"] or None,
            action=chosen["action"] or None,
            before_id=int(before) if before and before.isdigit() else None, limit=100)
        self.render_page(
            "audit.html", admin=self.caller.admin, chosen=chosen, events=page.events,
            filters=[(name, self.gettext(label)) for name, label in self.FILTERS
                     if name != "actor" or self.caller.admin],
            query=urlencode({k: v for k, v in chosen.items() if v}),
            next_before_id=page.next_before_id)


class StaticHandler(web.StaticFileHandler):
    """The admin pages' script and style (public: they hold no data)."""

    def set_extra_headers(self, path: str) -> None:
        if self.get_query_argument("v", None):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")


def page_routes(prefix: str) -> list[tuple]:
    """Routes of the admin pages under the service prefix (``/services/fermi``)."""
    return [
        (prefix + "/admin/catalog/?", CatalogAdminPage),
        (prefix + "/audit/?", AuditPage),
        (prefix + "/static/(.*)", StaticHandler, {"path": str(STATIC)}),
    ]
