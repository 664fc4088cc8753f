"""Pages of the control plane for people (hub login through OAuth): the page stack every page
shares, the dashboard (仪表盘) at the service's root, and the usage guide.

Pages are Jinja2 templates in ``templates/`` extending ``page.html``, autoescaped, with every
string through gettext (``{% trans %}`` / ``_()``, the catalogue of ``fermi_extension.i18n``).
One language per page: the user's switch (the ``fermi-lang`` cookie, set by ``?lang=``), then
Accept-Language, then English.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from tornado import web

from .. import i18n
from .base import APIHandler
from .dashboard import dashboard_for

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
LANG_COOKIE = "fermi-lang"


def static_version(name: str) -> str:
    """A short content hash, so that browsers never keep a stale script after an upgrade."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


def money(amount: float | None) -> str:
    return "—" if amount is None else f"{amount:,.2f}"


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "—"


@lru_cache(maxsize=None)
def environment(language: str) -> jinja2.Environment:
    """One environment per language, its gettext installed once: renders never share state."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the test, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(i18n.translations(language), newstyle=True)
    env.filters.update(money=money, when=when)
    env.globals.update(static_version=static_version, zip=zip,
                       tojson=lambda value: json.dumps(value, ensure_ascii=False))
    return env


class PageHandler(APIHandler):
    """A page for people: hub login through OAuth, rendered in the reader's language."""

    def prepare(self) -> None:  # a page redirects to the hub login instead of answering 401
        wanted = i18n.normalise(self.get_query_argument("lang", None))
        if wanted:  # the switch: remembered for every page of this service
            self.set_cookie(LANG_COOKIE, wanted, path=self.settings["prefix"],
                            expires_days=365, samesite="Lax")
        self.language = i18n.choose(wanted or self.get_cookie(LANG_COOKIE),
                                    self.request.headers.get("Accept-Language"))

    def gettext(self, message: str) -> str:
        return i18n.translations(self.language).gettext(message)

    def switch_links(self) -> list[tuple[str, str, bool]]:
        """(href, name, current) per language: this page again, its other arguments kept."""
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments if k != "lang"}
        return [(f"?{urlencode({**args, 'lang': code})}", name, code == self.language)
                for code, name in i18n.LANGUAGES.items()]

    def render_page(self, template: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Language", self.language.replace("_", "-"))
        self.add_header("Vary", "Accept-Language")
        user = self.current_user
        html = environment(self.language).get_template(template).render(
            prefix=self.settings["prefix"], lang=self.language.replace("_", "-"),
            user=user["name"] if user else None, switch=self.switch_links(), **context)
        self.finish(html)

    def forbidden(self, what: str) -> None:
        """The 403 page for a non-admin: says why, and where to go instead."""
        self.render_page("forbidden.html", status=403, what=what)

    def require_admin_page(self) -> bool:
        if self.caller.admin:
            return True
        self.forbidden("catalog")
        return False


def script_strings(handler: PageHandler, messages: list[str]) -> Markup:
    """Translated strings for a page's static script, as JSON safe inside a <script> element."""
    text = json.dumps({m: handler.gettext(m) for m in messages}, ensure_ascii=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


class HomeHandler(PageHandler):
    """The dashboard: quick-create entries, your environments, jobs, services, pools and cost;
    admins also see the platform. Its figures are those of ``GET api/dashboard``."""

    @web.authenticated
    async def get(self):
        dashboard, waste = await dashboard_for(self, self.language)
        self.render_page("dashboard.html", d=dashboard, waste=waste, here="home")


class GuideHandler(PageHandler):
    """The usage guide (docs/guide.md, docs/guide.zh.md) as a page: which module for which
    work. Linked from every guide card; in the page's language like every other page."""

    @web.authenticated
    def get(self):
        import mistune

        from ..paths import shipped

        name = "guide.zh.md" if self.language == "zh_CN" else "guide.md"
        text = (shipped("docs") / name).read_text()
        # the documents link to each other for reading in the repository; the page has the switch
        text = re.sub(r"^\[[^\]]+\]\(guide(\.zh)?\.md\)\s*$", "", text, flags=re.M)
        body = Markup(mistune.html(text))
        self.render_page("guide.html", body=body)
