"""The local queue's decision of which queued jobs start now."""

from __future__ import annotations

from fermi_extension.catalog.schema import Pool
from fermi_extension.jobs.queue import PoolUse, Waiting, plan_starts

POOLS = {
    "cpu": Pool(slug="cpu", name="CPU", max_running_jobs=2),
    "gpu": Pool(slug="gpu", name="GPU", max_running_jobs=8, gpus=4),
}


def cpu(job_id: str) -> Waiting:
    return Waiting(job_id, "cpu", 0)


def gpu(job_id: str, gpus: int) -> Waiting:
    return Waiting(job_id, "gpu", gpus)


def test_nothing_queued_starts_nothing():
    assert plan_starts([], {}, POOLS) == []


def test_a_pool_runs_at_most_max_running_jobs():
    assert plan_starts([cpu("a"), cpu("b"), cpu("c")], {}, POOLS) == ["a", "b"]


def test_running_jobs_count_against_the_pool_capacity():
    queued = [cpu("a"), cpu("b")]
    assert plan_starts(queued, {"cpu": PoolUse(jobs=1)}, POOLS) == ["a"]
    assert plan_starts(queued, {"cpu": PoolUse(jobs=2)}, POOLS) == []


def test_gpus_in_use_count_against_the_pool_gpus():
    queued = [gpu("a", 2), gpu("b", 2)]
    assert plan_starts(queued, {}, POOLS) == ["a", "b"]
    assert plan_starts(queued, {"gpu": PoolUse(jobs=1, gpus=3)}, POOLS) == []
    assert plan_starts(queued, {"gpu": PoolUse(jobs=1, gpus=2)}, POOLS) == ["a"]


def test_jobs_start_in_the_order_given_which_is_the_priority_order():
    queued = [cpu("high"), cpu("middle"), cpu("low")]
    assert plan_starts(queued, {}, POOLS) == ["high", "middle"]
    assert plan_starts(list(reversed(queued)), {}, POOLS) == ["low", "middle"]


def test_a_job_that_does_not_fit_holds_back_later_jobs_of_its_pool():
    # "big" needs 3 of the 2 free GPUs; "small" would fit but must not jump ahead of it
    queued = [gpu("big", 3), gpu("small", 1)]
    assert plan_starts(queued, {"gpu": PoolUse(jobs=1, gpus=2)}, POOLS) == []


def test_a_blocked_pool_does_not_hold_back_other_pools():
    queued = [gpu("big", 8), cpu("a"), gpu("small", 1), cpu("b")]
    assert plan_starts(queued, {}, POOLS) == ["a", "b"]


def test_jobs_started_in_one_plan_count_against_later_ones():
    queued = [gpu("a", 3), gpu("b", 2), cpu("c")]
    assert plan_starts(queued, {}, POOLS) == ["a", "c"]


def test_cpu_jobs_in_a_gpu_pool_need_only_a_slot():
    queued = [gpu("cpu-only", 0)]
    assert plan_starts(queued, {"gpu": PoolUse(jobs=1, gpus=4)}, POOLS) == ["cpu-only"]


def test_a_job_of_an_unknown_pool_is_skipped_without_blocking_others():
    queued = [Waiting("orphan", "removed-pool", 0), cpu("a")]
    assert plan_starts(queued, {}, POOLS) == ["a"]

