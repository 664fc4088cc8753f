"""Monitoring and alerts (监控告警): one snapshot of the platform (jobs, queues, GPU holders,
deployments and their traffic, running dev servers), read by the metrics endpoint, the
dashboard, the cost analysis and the alert rules, so that all of them tell the same story.

``rules.py`` is the one table of alert conditions and thresholds; the Prometheus rules file
(``hub_config/prometheus/alerts.yml``) is generated from it and the embedded alerts page
evaluates it.
"""
