"""/api/usage and /api/audit: what was used and what it cost; who changed what (CSV with
?format=csv). Users see their own; admins see everyone's. Also under /api/usage: the cost
preview (before spawning, submitting or deploying), totals per user, group, month, profile or
kind, and the cost analysis (waste: idle GPU dev environments, over-provisioned services)."""

from __future__ import annotations

from ..errors import InvalidInput
from .service import (
    TOTALS_BY,
    AuditPage,
    CostPreview,
    TotalsReport,
    UsageReport,
    preview,
    to_csv,
)
from .waste import WasteReport, analyse
from ..control_plane.base import APIHandler, operation

FORMATS = ("json", "csv")


class CSVMixin:
    def send_maybe_csv(self, payload, rows, filename: str) -> None:
        chosen = self.get_query_argument("format", "json")
        if chosen not in FORMATS:
            raise InvalidInput(f"`format` must be json or csv, not {chosen!r}.")
        if chosen == "csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.finish(to_csv(rows))
        else:
            self.send(payload)


class UsageHandler(CSVMixin, APIHandler):
    @operation("Usage and cost per user, kind and month (admins: everyone's)", response=UsageReport,
               query={"user": "admins: one user", "month": "YYYY-MM", "kind": "job|replica|server",
                      "format": "json (default) or csv"})
    def get(self):
        report = self.services.usage.report(
            self.caller, user=self.get_query_argument("user", None),
            month=self.get_query_argument("month", None), kind=self.get_query_argument("kind", None))
        self.send_maybe_csv(report, report.rows, "fermi-usage.csv")


class AuditHandler(CSVMixin, APIHandler):
    @operation("The audit log, newest first (admins: everyone's; users: their own actions)",
               response=AuditPage,
               query={"actor": "admins: one user", "target_kind": "job|deployment|model|image|…",
                      "action": "submit|cancel|deploy|update|…", "before_id": "paging",
                      "limit": "1–1000, default 100", "format": "json (default) or csv"})
    def get(self):
        page = self.services.usage.audit(
            self.caller, actor=self.get_query_argument("actor", None),
            target_kind=self.get_query_argument("target_kind", None),
            action=self.get_query_argument("action", None),
            before_id=self.query_int("before_id", 0) or None, limit=self.query_int("limit", 100))
        self.send_maybe_csv(page, page.events, "fermi-audit.csv")


class UsagePreviewHandler(APIHandler):
    @operation("Cost preview: price per hour × hours × replicas of a profile, before spawning a "
               "dev environment, submitting a job or deploying", response=CostPreview,
               query={"profile": "profile slug (required)", "hours": "hours, default 1",
                      "replicas": "copies (deployment replicas), default 1"})
    def get(self):
        self.send(preview(self.services.catalog.catalog(), self.caller,
                          self.get_query_argument("profile", None),
                          self.get_query_argument("hours", None),
                          self.get_query_argument("replicas", None)))


class UsageTotalsHandler(CSVMixin, APIHandler):
    @operation("Usage totals per user, group, month, profile or kind (admins: everyone's; groups "
               "from the hub)", response=TotalsReport,
               query={"by": " | ".join(TOTALS_BY) + " (default user)", "month": "YYYY-MM",
                      "format": "json (default) or csv"})
    async def get(self):
        by = self.get_query_argument("by", "user")
        month = self.get_query_argument("month", None)
        groups = None
        if by == "group" and self.caller.admin:
            # a bill is read rarely and must be right: groups as the hub has them now
            view = await self.services.hub.view(max_age=0)
            groups = view.groups if view.reachable else None
        report = self.services.usage.totals(self.caller, by=by, month=month, groups=groups)
        if by == "group" and self.caller.admin and groups is None:
            for row in report.rows:  # without the hub, only the admin's own groups are known
                if row.key == "(no group)":
                    row.key = "(groups unknown: the hub did not answer)"
        self.send_maybe_csv(report, report.rows, f"fermi-usage-by-{by}.csv")


class UsageWasteHandler(CSVMixin, APIHandler):
    @operation("Cost analysis: GPU dev environments idle for hours, GPUs held without a job, "
               "inference services far below their target; each with the cost at stake and "
               "what to do (admins: everyone's)", response=WasteReport,
               query={"format": "json (default) or csv"})
    async def get(self):
        report = analyse(await self.services.monitor.snapshot(), self.caller)
        self.send_maybe_csv(report, report.items, "fermi-waste.csv")


routes = [("/api/usage", UsageHandler), ("/api/usage/preview", UsagePreviewHandler),
          ("/api/usage/totals", UsageTotalsHandler), ("/api/usage/waste", UsageWasteHandler),
          ("/api/audit", AuditHandler)]
