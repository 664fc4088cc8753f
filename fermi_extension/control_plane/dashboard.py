"""The dashboard (仪表盘): ``GET /api/dashboard`` (JSON) and the HTML of the home page
(``pages.HomeHandler``), both from ``monitoring.overview.build`` so they show the same figures.
The page also shows the cost analysis (``usage.waste``) and, for admins, the alert count.
"""

from __future__ import annotations

import asyncio
import logging

from ..monitoring.overview import Dashboard, build
from ..usage.waste import WasteReport, analyse
from .base import APIHandler, operation

log = logging.getLogger("fermi.api")

MODELS_TIMEOUT = 3.0  # seconds the dashboard waits for the model repository (MLflow)


async def models_for(registry, caller) -> tuple[list, str | None]:
    try:
        return await asyncio.wait_for(registry.list(caller), MODELS_TIMEOUT), None
    except Exception as error:  # the dashboard shows the rest when the tracking server is slow
        log.warning("dashboard: models not listed: %s", error)
        return [], "The model repository did not answer in time; try again or use `fermi models list`."


async def dashboard_for(handler: APIHandler, language: str = "en") -> tuple[Dashboard, WasteReport]:
    services, caller = handler.services, handler.caller
    monitor = services.monitor
    snapshot = await monitor.snapshot()
    models, note = await models_for(services.registry, caller)
    firing = monitor.evaluator.evaluate(snapshot).firing if caller.admin else 0
    dashboard = build(snapshot, caller, services.usage, handler.settings["prefix"], models=models,
                      models_note=note, alerts_firing=firing)
    return dashboard, analyse(snapshot, caller, language)


class DashboardHandler(APIHandler):
    @operation("The dashboard's figures: quick-create entries, your dev environments, jobs, "
               "inference services and models, GPU pool use, this month's cost; admins also "
               "pools, queues, failing work and usage by user × profile × GPUs", response=Dashboard)
    async def get(self):
        dashboard, _ = await dashboard_for(self)
        self.send(dashboard)


routes = [("/api/dashboard", DashboardHandler)]
