"""The local queue's decision: which queued jobs start now.

Each pool has a number of job slots and of GPUs. Jobs are taken by priority, then in order of
submission; within a pool, a job that does not fit holds back the ones behind it (no one jumps
a big job forever), while other pools go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..catalog.schema import Pool


@dataclass(frozen=True)
class Waiting:
    job_id: str
    pool: str
    gpus: int
    owner: str = ""


@dataclass
class PoolUse:
    jobs: int = 0
    gpus: int = 0


def plan_starts(
    queued: list[Waiting], running: dict[str, PoolUse], pools: dict[str, Pool],
    held_back: Callable[[Waiting], bool] = lambda job: False,
) -> list[str]:
    """``queued`` in queue order (priority desc, then oldest first); returns ids to start.
    ``held_back``: jobs that may not start for a reason of their own (their owner's quota);
    they are passed over without holding back the pool."""
    use = {slug: PoolUse(u.jobs, u.gpus) for slug, u in running.items()}
    blocked: set[str] = set()
    starts = []
    for job in queued:
        pool = pools.get(job.pool)
        if pool is None or job.pool in blocked:
            continue
        now = use.setdefault(job.pool, PoolUse())
        fits = now.jobs < pool.max_running_jobs and (
            job.gpus == 0 or now.gpus + job.gpus <= pool.gpus
        )
        if not fits:
            blocked.add(job.pool)
            continue
        if held_back(job):
            continue
        now.jobs += 1
        now.gpus += job.gpus
        starts.append(job.job_id)
    return starts
