"""Jobs behave the same on every backend: submit, watch, fail, cancel, disruption, timeout, and a
restarted control plane re-attaching to running attempts (or accounting for ended ones)."""

from __future__ import annotations

import asyncio
import json

from .drivers import FAILS, SUCCEEDS, WAITS


async def test_an_attempt_runs_and_succeeds_with_output_and_log(driver, runtime):
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, SUCCEEDS, runtime, {"x": 21})
    outcome = await asyncio.wait_for(backend.wait(handle, files, None), 60)
    assert (outcome.status, outcome.lost) == ("succeeded", False), outcome
    assert not backend.alive(handle)
    assert json.loads(files.output.read_text())["cells"]  # the executed notebook is there
    assert files.log.read_text().strip()
    assert backend.outcome(files).status == "succeeded"  # also what a later look finds


async def test_a_failing_notebook_fails_with_its_error_and_is_not_retried(driver, runtime):
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, FAILS, runtime)
    outcome = await asyncio.wait_for(backend.wait(handle, files, None), 60)
    assert outcome.status == "failed" and not outcome.lost
    assert "ValueError" in outcome.reason and "boom" in outcome.reason


async def test_cancel_stops_the_attempt(driver, runtime):
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, WAITS, runtime)
    await driver.until_running(backend, handle, files)
    assert backend.alive(handle)
    waiting = asyncio.create_task(backend.wait(handle, files, None))
    await backend.kill(handle)
    outcome = await asyncio.wait_for(waiting, 30)
    assert outcome.status == "failed"  # the runner records it as cancelled (the user's word)
    await driver.until_ended(backend, handle)


async def test_an_attempt_lost_to_the_infrastructure_is_marked_lost(driver, runtime):
    """A killed process or an evicted pod is not the notebook's fault: the runner retries it."""
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, WAITS, runtime)
    await driver.until_running(backend, handle, files)
    waiting = asyncio.create_task(backend.wait(handle, files, None))
    await driver.disrupt(handle)
    outcome = await asyncio.wait_for(waiting, 30)
    assert outcome.status == "failed" and outcome.lost, outcome


async def test_a_timeout_stops_the_attempt(driver, runtime):
    backend = await driver.job_backend()
    handle, files = await driver.launch(backend, WAITS, runtime)
    await driver.until_running(backend, handle, files)
    outcome = await asyncio.wait_for(backend.wait(handle, files, 0.5), 30)
    assert outcome.status == "failed" and "Timed out" in outcome.reason
    await driver.until_ended(backend, handle)


async def test_a_restarted_control_plane_reattaches_to_a_running_attempt(driver, runtime):
    first = await driver.job_backend()
    handle, files = await driver.launch(first, WAITS, runtime)
    await driver.until_running(first, handle, files)
    await driver.forget(first)  # the control plane stops; the attempt goes on
    second = await driver.job_backend()
    assert second.alive(handle)  # found again from its handle alone
    waiting = asyncio.create_task(second.wait(handle, files, None))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    driver.release(files)
    outcome = await asyncio.wait_for(waiting, 60)
    assert outcome.status == "succeeded", outcome


async def test_an_attempt_that_ended_while_the_control_plane_was_down_is_accounted_for(
        driver, runtime):
    first = await driver.job_backend()
    handle, files = await driver.launch(first, WAITS, runtime)
    await driver.until_running(first, handle, files)
    await driver.forget(first)
    driver.release(files)
    watcher = await driver.job_backend()
    await driver.until_ended(watcher, handle)
    await driver.forget(watcher)
    second = await driver.job_backend()
    assert not second.alive(handle)
    assert second.outcome(files).status == "succeeded"
