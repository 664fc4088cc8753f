"""/api/quotas: limits per user and group (admins set them; everyone sees their own)."""

from __future__ import annotations

from .service import DescribeQuota, MyQuota, QuotaLimits, QuotaList
from ..control_plane.base import APIHandler, operation


class QuotasHandler(APIHandler):
    @operation("Quotas (admins: all; users: those that apply to them)", response=QuotaList)
    def get(self):
        self.send(self.services.quotas.list(self.caller))


class MyQuotaHandler(APIHandler):
    @operation("What you hold now against each limit that applies to you", response=MyQuota)
    def get(self):
        self.send(self.services.quotas.mine(self.caller))


class QuotaHandler(APIHandler):
    @operation("Set the quota of a user or a group (admins); null fields: no limit",
               request=QuotaLimits, response=DescribeQuota, admin=True)
    def put(self, scope: str, subject: str):
        limits = self.parse(QuotaLimits)
        self.send(self.services.quotas.put(self.caller, scope, subject, limits))

    @operation("Remove a quota (admins)", status=204, admin=True)
    def delete(self, scope: str, subject: str):
        self.services.quotas.delete(self.caller, scope, subject)
        self.set_status(204)
        self.finish()


routes = [
    ("/api/quotas", QuotasHandler),
    ("/api/quotas/me", MyQuotaHandler),
    ("/api/quotas/{scope}/{subject}", QuotaHandler),
]
