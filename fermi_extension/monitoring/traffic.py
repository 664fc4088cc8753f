"""A short history of the router's counters, so that rates and averages over a window exist
between scrapes (the router only has totals since it started and the current in-flight count).

Sampled every ``every`` seconds by a background task of the control plane, and on every read.
Times come from the platform clock (``db.utcnow``) so that tests script them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .. import db

log = logging.getLogger("fermi.monitoring")


@dataclass(frozen=True)
class Sample:
    at: dt.datetime
    requests: float
    errors: float
    in_flight: float
    ready_replicas: int


@dataclass(frozen=True)
class WindowStats:
    requests: float  # increase over the window (counter resets handled as Prometheus does)
    errors: float
    mean_in_flight: float
    mean_ready_replicas: float
    covered_seconds: float  # how much of the window the samples cover
    samples: int


def ready_replicas(stats: dict) -> int:
    return sum(1 for r in (stats.get("replicas") or {}).values() if r.get("state") == "ready")


def increase(values: list[float]) -> float:
    """Prometheus' ``increase`` without extrapolation: a drop means the counter restarted."""
    total = 0.0
    for before, after in zip(values, values[1:]):
        total += after - before if after >= before else after
    return total


class TrafficHistory:
    def __init__(self, source: Callable[[], dict], keep_seconds: float = 3 * 3600,
                 every: float = 15.0):
        self.source = source  # the router's latest counters per deployment
        self.keep = dt.timedelta(seconds=keep_seconds)
        self.every = every
        self.samples: dict[str, deque[Sample]] = {}
        self._task: asyncio.Task | None = None
        self._stopped = False

    def record(self, name: str, sample: Sample) -> None:
        series = self.samples.setdefault(name, deque())
        if series and (sample.at - series[-1].at).total_seconds() < 1:
            series[-1] = sample  # two reads in the same second: keep the newer
        else:
            series.append(sample)
        while series and sample.at - series[0].at > self.keep:
            series.popleft()

    def sample(self) -> None:
        now = db.utcnow()
        try:
            stats = self.source() or {}
        except Exception:  # the history must never break a page
            log.exception("reading traffic counters failed")
            return
        for name, s in stats.items():
            self.record(name, Sample(now, float(s.get("requests", 0)), float(s.get("errors", 0)),
                                     float(s.get("in_flight", 0)), ready_replicas(s)))
        for name in set(self.samples) - set(stats):  # deleted deployments
            if self.samples[name] and now - self.samples[name][-1].at > self.keep:
                del self.samples[name]

    def window(self, name: str, seconds: float, now: dt.datetime | None = None) -> WindowStats:
        now = now or db.utcnow()
        start = now - dt.timedelta(seconds=seconds)
        inside = [s for s in self.samples.get(name, ()) if start <= s.at <= now]
        if not inside:
            return WindowStats(0, 0, 0, 0, 0, 0)
        return WindowStats(
            requests=increase([s.requests for s in inside]),
            errors=increase([s.errors for s in inside]),
            mean_in_flight=sum(s.in_flight for s in inside) / len(inside),
            mean_ready_replicas=sum(s.ready_replicas for s in inside) / len(inside),
            covered_seconds=(inside[-1].at - inside[0].at).total_seconds(),
            samples=len(inside),
        )

    # -- the background sampler -----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> bool:
        """Start sampling in the running event loop (False when there is none yet, or after
        ``stop``)."""
        if self._stopped:
            return False
        if self._task is not None and not self._task.done():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._task = loop.create_task(self.run())
        return True

    async def stop(self) -> None:
        """End the sampler for good (the control plane's shutdown): a later read starts no new one."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
