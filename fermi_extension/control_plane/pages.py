"""Pages of the control plane for people (hub login through OAuth): the dashboard (仪表盘) at
the service's root, and the usage guide."""

from __future__ import annotations

from tornado import web

from .admin_pages import AdminPage
from .base import APIHandler
from .dashboard import STYLE, dashboard_for, render


class HomeHandler(AdminPage):
    """The dashboard: quick-create entries, your environments, jobs, services, pools and cost;
    admins also see the platform. Its figures are those of ``GET api/dashboard``."""

    @web.authenticated
    async def get(self):
        dashboard, waste = await dashboard_for(self)
        self.page("Dashboard / 仪表盘", render(dashboard, waste, self.settings["prefix"]),
                  head=f"<style>{STYLE}</style>")


class GuideHandler(APIHandler):
    """The usage guide (docs/guide.md, docs/guide.zh.md) as a page: which module for which
    work. Linked from every guide card; `?lang=zh` or the browser's language picks Chinese."""

    def prepare(self) -> None:
        pass

    @web.authenticated
    def get(self):
        import mistune

        from ..paths import shipped

        lang = self.get_query_argument("lang", None)
        if lang is None:
            lang = "zh" if self.request.headers.get("Accept-Language", "").lower().startswith("zh") else "en"
        name = "guide.zh.md" if lang.startswith("zh") else "guide.md"
        body = mistune.html((shipped("docs") / name).read_text())
        other = ("English", "en") if lang.startswith("zh") else ("简体中文", "zh")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(f"""<!doctype html>
<html lang="{'zh-CN' if lang.startswith('zh') else 'en'}"><head><meta charset="utf-8">
<title>Fermi — usage guide / 使用指南</title>
<style>body{{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem;
line-height:1.5}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.3rem .6rem}}
code{{background:#f3f4f6;padding:.1rem .3rem}}</style></head>
<body><p><a href="?lang={other[1]}">{other[0]}</a></p>{body}</body></html>""")
