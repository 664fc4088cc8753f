"""/api/usage and /api/audit: what was used and what it cost; who changed what (CSV with
?format=csv). Users see their own; admins see everyone's."""

from __future__ import annotations

from ..usage.service import AuditPage, UsageReport, to_csv
from .base import APIHandler, operation


class CSVMixin:
    def send_maybe_csv(self, payload, rows, filename: str) -> None:
        if self.get_query_argument("format", "json") == "csv":
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
        report = self.settings["usage"].report(
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
        page = self.settings["usage"].audit(
            self.caller, actor=self.get_query_argument("actor", None),
            target_kind=self.get_query_argument("target_kind", None),
            action=self.get_query_argument("action", None),
            before_id=self.query_int("before_id", 0) or None, limit=self.query_int("limit", 100))
        self.send_maybe_csv(page, page.events, "fermi-audit.csv")


routes = [("/api/usage", UsageHandler), ("/api/audit", AuditHandler)]
