"""Admin pages of the control plane: the catalogue editor at ``{prefix}admin/catalog``.

The page is a shell; a small vanilla JS file (``static/admin-catalog.js``, no build step, nothing
fetched from the internet) drives the catalogue API with the hub OAuth cookie. Cookie-authenticated
requests must carry the XSRF token (JupyterHub's ``HubOAuth`` refuses the cookie otherwise), so
the page hands the token to the script and the script sends it as ``X-XSRFToken``.
"""

from __future__ import annotations

import hashlib
import html
import json
from urllib.parse import urlencode
from pathlib import Path

from tornado import web

from .base import APIHandler

STATIC = Path(__file__).parent / "static"


def static_version(name: str) -> str:
    """A short content hash, so that browsers never keep a stale script after an upgrade."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]


class AdminPage(APIHandler):
    """A page for admins: hub login through OAuth; others get a 403 page saying why."""

    title = "Fermi admin"

    def prepare(self) -> None:  # a page redirects to the hub login instead of answering 401
        pass

    def page(self, title: str, body: str, status: int = 200, head: str = "") -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        prefix = self.settings["prefix"]
        css = f"{prefix}static/admin.css?v={static_version('admin.css')}"
        self.finish(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{css}">{head}</head>
<body><header><a href="{prefix}">Fermi 费米集群</a> · <b>{html.escape(title)}</b>
<span class="who">{html.escape(self.caller.name)}</span></header>
<main>{body}</main></body></html>""")

    def require_admin_page(self) -> bool:
        if self.caller.admin:
            return True
        self.page("Admins only / 仅限管理员", f"""<div class="forbidden" role="alert">
<h1>403 — admins only / 仅限管理员</h1>
<p>{html.escape(self.caller.name)} is not an admin of this platform. Editing the catalogue
(images, profiles, pools) is for admins; ask one to make the change, or to make you an admin.</p>
<p>您不是本平台的管理员。只有管理员可以编辑镜像、资源规格和资源池。</p>
<p><a href="{self.settings['prefix']}">Back / 返回</a></p></div>""", status=403)
        return False


class CatalogAdminPage(AdminPage):
    """Images, profiles and pools: list, create, edit, delete, history and revert."""

    @web.authenticated
    def get(self):
        if not self.require_admin_page():
            return
        prefix = self.settings["prefix"]
        token = self.xsrf_token  # also (re)sets the _xsrf cookie of this service when needed
        token = token.decode() if isinstance(token, bytes) else token
        script = f"{prefix}static/admin-catalog.js?v={static_version('admin-catalog.js')}"
        self.page(
            "Catalogue / 目录管理",
            f"""<div class="guide"><b>Catalogue / 目录管理</b> — the images (镜像), resource profiles
(资源规格) and pools (资源池) that dev environments, training jobs and inference services are
built from. Changes apply to the next spawn or job at once, and every change is kept as a revision
you can revert. 修改立即生效；每次修改都有版本记录，可回滚。</div>
<div id="catalog-admin" data-api="{html.escape(prefix)}api/">
<noscript>This page needs JavaScript. 此页面需要 JavaScript。</noscript>
<p class="loading">Loading… 加载中…</p></div>""",
            head=f"""
<meta name="fermi-xsrf" content="{html.escape(token)}">
<script src="{script}" defer></script>""",
        )


class AuditPage(AdminPage):
    """审计日志: the audit log with filters and CSV export (admins: everyone's; users: their own
    actions), the same records and filters as GET api/audit."""

    FILTERS = (("actor", "Who / 操作人"), ("target_kind", "What kind / 对象类型"),
               ("action", "Action / 操作"))

    @web.authenticated
    def get(self):
        prefix = self.settings["prefix"]
        chosen = {name: self.get_query_argument(name, "") for name, _ in self.FILTERS}
        before = self.get_query_argument("before_id", None)
        page = self.settings["usage"].audit(
            self.caller, actor=chosen["actor"] or None, target_kind=chosen["target_kind"] or None,
            action=chosen["action"] or None,
            before_id=int(before) if before and before.isdigit() else None, limit=100)
        inputs = "".join(
            f'<label>{label} <input name="{name}" value="{html.escape(chosen[name])}"></label> '
            for name, label in self.FILTERS if name != "actor" or self.caller.admin)
        query = urlencode({k: v for k, v in chosen.items() if v})
        rows = "".join(
            f"<tr><td>{e.at:%Y-%m-%d %H:%M:%S}</td><td>{html.escape(e.actor)}</td>"
            f"<td>{html.escape(e.action)}</td><td>{html.escape(e.target_kind)}</td>"
            f"<td><code>{html.escape(e.target_id)}</code></td><td>{html.escape(e.remote_addr or '')}"
            f"</td><td><code>{html.escape(json.dumps(e.before, ensure_ascii=False)[:200]) if e.before else ''}"
            f"</code></td><td><code>{html.escape(json.dumps(e.after, ensure_ascii=False)[:200]) if e.after else ''}"
            "</code></td></tr>" for e in page.events)
        more = (f'<a href="?{query}&before_id={page.next_before_id}">Older / 更早 →</a>'
                if page.next_before_id else "")
        scope = ("Every change by anyone." if self.caller.admin else
                 "Your own actions (admins see everyone's). 仅显示您自己的操作。")
        self.page("Audit log / 审计日志", f"""<div class="guide"><b>Audit log / 审计日志</b> —
append-only: who changed what, when, from where, before and after. {scope}</div>
<form method="get">{inputs}<button>Filter / 筛选</button>
<a href="{prefix}api/audit?{query}&format=csv">Export CSV / 导出</a></form>
<table><thead><tr><th>When / 时间 (UTC)</th><th>Who / 操作人</th><th>Action / 操作</th>
<th>Kind / 类型</th><th>Target / 对象</th><th>From / 来源</th><th>Before / 之前</th>
<th>After / 之后</th></tr></thead><tbody>{rows or '<tr><td colspan="8">Nothing recorded '
'for these filters. 没有符合条件的记录。</td></tr>'}</tbody></table><p>{more}</p>""")


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
