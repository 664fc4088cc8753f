"""The tests both pod suites run — ``tests/containers/test_kube_play.py`` (``podman kube play``
behind the API stand-in) and ``tests/kube/test_real_cluster.py`` (a real cluster) — written
once: each of those modules defines ``world`` (its ``scenarios.Place``, the tracking server
started) and imports these (``from tests.kube.suite import *``), so pytest collects them there,
with that module's ``world`` and marks. They read one world in order, as one user's day goes:
train, serve, split traffic, a dev server started and used, then stopped (the last test).
"""

from __future__ import annotations

import pytest_asyncio

from . import scenarios

__all__ = [
    "trained", "serving", "dev_server",
    "test_the_training_jobs_pod_runs_the_notebook_to_succeeded_and_logs_metric_and_model",
    "test_a_failing_notebook_fails_the_pod_and_the_job_says_why",
    "test_the_model_server_pod_fetches_its_version_and_answers_v2_infer",
    "test_the_router_pod_splits_traffic_in_the_canary_ratio_and_follows_new_weights",
    "test_the_dev_server_pod_answers_its_user_only",
    "test_the_dev_server_pod_runs_in_its_profiles_limits_as_its_user_without_hub_secrets",
    "test_what_the_user_saves_in_the_dev_server_lands_in_their_home_volume",
    "test_stopping_the_dev_server_removes_its_pod_and_keeps_the_home_claim",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(world):
    return await scenarios.train(world)


async def test_the_training_jobs_pod_runs_the_notebook_to_succeeded_and_logs_metric_and_model(
        world, trained):
    scenarios.check_trained(world, trained)


async def test_a_failing_notebook_fails_the_pod_and_the_job_says_why(world):
    await scenarios.check_failing_notebook(world)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serving(world, trained, tmp_path_factory):
    async with scenarios.serving(world, trained, tmp_path_factory.mktemp("serving")) as served:
        yield served


async def test_the_model_server_pod_fetches_its_version_and_answers_v2_infer(world, serving):
    _, handles = serving
    await scenarios.check_model_server(world, handles["1"])


async def test_the_router_pod_splits_traffic_in_the_canary_ratio_and_follows_new_weights(
        world, serving):
    await scenarios.check_canary_split(world, *serving)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev_server(world, tmp_path_factory):
    async with scenarios.dev_server(world, tmp_path_factory.mktemp("catalog")) as server:
        yield server


async def test_the_dev_server_pod_answers_its_user_only(dev_server):
    await scenarios.check_dev_server_serves_its_user_only(dev_server)


async def test_the_dev_server_pod_runs_in_its_profiles_limits_as_its_user_without_hub_secrets(
        world, dev_server):
    scenarios.check_dev_server_limits_user_and_environment(
        await scenarios.inspect_dev_server(world, dev_server))


async def test_what_the_user_saves_in_the_dev_server_lands_in_their_home_volume(
        world, dev_server):
    await scenarios.save_notebook(dev_server, "notes.txt", "kept across servers")
    scenarios.check_home_volume(await scenarios.inspect_dev_server(world, dev_server),
                                "notes.txt")


async def test_stopping_the_dev_server_removes_its_pod_and_keeps_the_home_claim(
        world, dev_server):
    await scenarios.check_stopping_the_dev_server(world, dev_server)
