"""Alerts (监控告警) on the embedded default: ``GET /api/alerts`` and the admins' page at
``{prefix}alerts``, evaluating the rules of ``monitoring.rules`` (the table the Prometheus rules
file is generated from) over the same snapshot ``/metrics`` is rendered from."""

from __future__ import annotations

from tornado import web

from ..errors import Forbidden
from ..monitoring.rules import AlertsReport
from .admin_pages import AdminPage
from .base import APIHandler, operation
from .dashboard import STYLE, e, sidebar, table


async def evaluate(settings) -> AlertsReport:
    monitor = settings["monitor"]
    return monitor.evaluator.evaluate(await monitor.snapshot())


class AlertsHandler(APIHandler):
    @operation("Alert rules evaluated now: firing, pending or ok, with the value (admins)",
               response=AlertsReport, admin=True)
    async def get(self):
        if not self.caller.admin:
            raise Forbidden("Alerts are for admins: ask an admin, or read your own work on the "
                            "dashboard.")
        self.send(await evaluate(self.settings))


def show(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "seconds":
        return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"
    return f"{value:g}"


def render(report: AlertsReport, prefix: str) -> str:
    badge = {"firing": "tag warn", "pending": "tag", "ok": "tag off"}
    sections = []
    for r in report.rules:
        window = f" over {r.window_seconds // 60} min" if r.window_seconds else ""
        condition = (f"value &gt; {e(show(r.threshold, r.unit))}{window}"
                     + (f", at least {r.min_count} events" if r.min_count else "")
                     + (f", for {r.for_seconds // 60} min" if r.for_seconds else ""))
        rows = [[", ".join(f"{e(k)}={e(v)}" for k, v in i.labels.items()),
                 f'<span class="{badge[i.state]}">{e(i.state)}</span>',
                 e(show(i.value, r.unit)) + (f" (events: {i.count:g})" if i.count is not None else ""),
                 e(i.active_since.strftime("%H:%M:%S") if i.active_since else "")]
                for i in r.instances]
        sections.append(f"""<section id="{e(r.slug)}" data-state="{e(r.state)}">
<h2><span class="{badge[r.state]}">{e(r.state)}</span> {e(r.title_zh)} / {e(r.title)}
<span class="muted">{e(r.alert)} · {e(r.severity)}</span></h2>
<p class="hint">Fires when {condition}. <code>{e(r.expr)}</code></p>
{table(["Labels / 标签", "State / 状态", "Value / 当前值", "Since / 起始"], rows,
       "No data: nothing to measure yet. 暂无数据。")}
<p class="hint">{e(r.action)}<br>{e(r.action_zh)}</p></section>""")
    return f"""<div class="layout">{sidebar(prefix, True, "alerts")}
<div><div class="guide"><b>监控告警 / Monitoring and alerts</b> — the platform's alert rules,
evaluated now: {report.firing} firing, {report.pending} pending. The same rules run in Prometheus
from <code>hub_config/prometheus/alerts.yml</code>; the metrics are at <code>/metrics</code>.
告警规则与 Prometheus 的规则文件一致。</div>{"".join(sections)}</div></div>"""


class AlertsPage(AdminPage):
    @web.authenticated
    async def get(self):
        prefix = self.settings["prefix"]
        if not self.caller.admin:
            self.page("Admins only / 仅限管理员", f"""<div class="forbidden" role="alert">
<h1>403 — admins only / 仅限管理员</h1>
<p>{e(self.caller.name)} is not an admin of this platform. The alerts are for admins; your own
jobs, services and costs are on the <a href="{e(prefix)}">dashboard</a>.</p>
<p>告警页面仅限管理员；您自己的任务、服务与费用请看<a href="{e(prefix)}">仪表盘</a>。</p></div>""",
                      status=403)
            return
        body = render(await evaluate(self.settings), prefix)
        self.page("Alerts / 监控告警", body, head=f"<style>{STYLE}</style>")


routes = [("/api/alerts", AlertsHandler)]


def page_routes(prefix: str) -> list[tuple]:
    return [(prefix + "/alerts/?", AlertsPage)]
