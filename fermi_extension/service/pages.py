"""Pages of the control plane for people (hub login through OAuth). The dashboard grows here."""

from __future__ import annotations

import html

from sqlalchemy import func, select
from tornado import web

from ..db import Job
from .base import APIHandler


class HomeHandler(APIHandler):
    """The platform's landing page: who you are, your jobs, where the API is."""

    def prepare(self) -> None:  # a page redirects to the hub login instead of answering 401
        pass

    @web.authenticated
    def get(self):
        caller = self.caller
        with self.settings["jobs"].session_factory() as session:
            counts = dict(session.execute(
                select(Job.status, func.count()).where(Job.owner == caller.name).group_by(Job.status)
            ).all())
        prefix = self.settings["prefix"]
        rows = "".join(
            f"<tr><td>{html.escape(status)}</td><td>{counts.get(status, 0)}</td></tr>"
            for status in ("queued", "running", "succeeded", "failed", "cancelled")
        )
        admin_link = (f' · <a href="{prefix}admin/catalog">Image catalogue / 镜像管理 (admin)</a>'
                      if caller.admin else "")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fermi 费米集群</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
.card{{border-radius:.6rem;padding:1rem 1.2rem;margin:1rem 0;color:#fff;
background:linear-gradient(90deg,#16a34a,#2563eb)}}table{{border-collapse:collapse}}
td{{padding:.2rem 1rem .2rem 0}}code{{background:#f3f4f6;padding:.1rem .3rem}}</style></head>
<body><h1>Fermi 费米集群</h1>
<p>Signed in as <b>{html.escape(caller.name)}</b>{' (admin)' if caller.admin else ''}.
<a href="/hub/home">Dev environments / 开发环境</a>{admin_link}</p>
<div class="card"><b>Training jobs / 训练任务</b> — batch runs of a notebook: queued, tracked,
resources freed at the end. 批处理训练作业：自动排队、实验追踪、完成后自动释放资源。</div>
<table>{rows}</table>
<p>API: <code>{prefix}api/</code> · <a href="{prefix}api/openapi.json">OpenAPI</a> ·
submit from a terminal: <code>fermi jobs submit train.ipynb -p C 0.5 --wait</code></p>
</body></html>""")


