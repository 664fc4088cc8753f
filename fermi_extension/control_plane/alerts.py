"""Alerts (监控告警) on the embedded default: ``GET /api/alerts`` and the admins' page at
``{prefix}alerts``, evaluating the rules of ``monitoring.rules`` (the table the Prometheus rules
file is generated from) over the same snapshot ``/metrics`` is rendered from."""

from __future__ import annotations

from tornado import web

from ..errors import Forbidden
from ..monitoring.rules import AlertsReport
from ..i18n import translations
from .base import APIHandler, operation
from .pages import PageHandler, environment


async def evaluate(services) -> AlertsReport:
    monitor = services.monitor
    return monitor.evaluator.evaluate(await monitor.snapshot())


class AlertsHandler(APIHandler):
    @operation("Alert rules evaluated now: firing, pending or ok, with the value (admins)",
               response=AlertsReport, admin=True)
    async def get(self):
        if not self.caller.admin:
            raise Forbidden("Alerts are for admins: ask an admin, or read your own work on the "
                            "dashboard.")
        self.send(await evaluate(self.services))


def show(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "seconds":
        return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"
    return f"{value:g}"


def condition(rule, language: str) -> str:
    """When a rule fires, in words: "Fires when value > 5% over 60 min, …"."""
    _ = translations(language).gettext
    parts = [_("value > {threshold}").format(threshold=show(rule.threshold, rule.unit))]
    if rule.window_seconds:
        parts[0] += " " + _("over {minutes} min").format(minutes=rule.window_seconds // 60)
    if rule.min_count:
        parts.append(_("at least {n} events").format(n=rule.min_count))
    if rule.for_seconds:
        parts.append(_("for {minutes} min").format(minutes=rule.for_seconds // 60))
    return _("Fires when {condition}.").format(condition=", ".join(parts))


def context(report: AlertsReport, language: str) -> dict:
    return dict(report=report, show=show, condition=lambda rule: condition(rule, language))


def render(report: AlertsReport, prefix: str, language: str = "en") -> str:
    """The alerts page's content without a request (what the page shows, for tests and tools)."""
    return environment(language).get_template("alerts.html").render(
        prefix=prefix, lang=language.replace("_", "-"), user=None, switch=[],
        **context(report, language))


class AlertsPage(PageHandler):
    @web.authenticated
    async def get(self):
        if not self.caller.admin:
            self.forbidden("alerts")
            return
        self.render_page("alerts.html", **context(await evaluate(self.services), self.language))


routes = [("/api/alerts", AlertsHandler)]


def page_routes(prefix: str) -> list[tuple]:
    return [(prefix + "/alerts/?", AlertsPage)]
