"""Usage and billing (计费管理), and the audit log (审计日志): read sides over the records every
module writes as it goes (job attempts, replicas, dev servers; every change)."""
