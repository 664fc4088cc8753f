"""The local backend's warm kernels (backends/local/kernels.py): a CPU job takes a kernel started
ahead of it, gets its own environment and folder before its first cell, and leaves nothing for
the next job; GPU jobs start their own; the pool stops with the backend."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest

from .drivers import LocalDriver, default_runtime, notebook

# what the notebook's kernel is, and whether an earlier job left anything in it
PROBE = notebook(
    "import builtins, json, os\n"
    "json.dump({'pid': os.getpid(), 'cwd': os.getcwd(), 'job': os.environ.get('FERMI_JOB_ID'),\n"
    "           'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "           'secret': os.environ.get('JUPYTERHUB_API_TOKEN'),\n"
    "           'left_over': getattr(builtins, 'fermi_left_over', None)},\n"
    "          open('probe.json', 'w'))\n"
    "builtins.fermi_left_over = os.environ.get('FERMI_JOB_ID')")


@pytest.fixture
async def local(tmp_path, monkeypatch):
    # a platform secret in the control plane's environment, which no kernel may see
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "platform-secret")
    async with LocalDriver(tmp_path) as driver:
        yield driver


async def probe(driver, backend, runtime) -> tuple[dict, dict]:
    handle, files = await driver.launch(backend, PROBE, runtime)
    outcome = await asyncio.wait_for(backend.wait(handle, files, None), 60)
    assert outcome.status == "succeeded", (outcome, files.log.read_text())
    seen = json.loads((files.workdir / "probe.json").read_text())
    lineage = json.loads((files.root / "lineage.json").read_text())
    return seen, {"warm": lineage["warm_kernel"], "job": files.root.name,
                  "workdir": str(files.workdir), "pid": handle.pid}


def slots(backend) -> list[psutil.Process]:
    """The launcher's waiting slots (each holding a started kernel)."""
    return psutil.Process(backend._launcher.pid).children()


async def until(predicate, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_each_cpu_job_takes_its_own_warm_kernel_and_leaves_nothing_behind(local):
    runtime = default_runtime()
    backend = await local.job_backend()
    await backend.prewarm(runtime)
    first_seen, first = await probe(local, backend, runtime)
    await until(lambda: len(slots(backend)) >= 1)  # refilled after the first took its kernel
    second_seen, second = await probe(local, backend, runtime)
    assert first["warm"] and second["warm"]
    for seen, job in ((first_seen, first), (second_seen, second)):
        # the job's own id and folder, handed over before its first cell
        assert (seen["job"], seen["cwd"]) == (job["job"], job["workdir"])
        assert seen["secret"] is None and seen["gpus"] == ""
    assert first_seen["pid"] != second_seen["pid"]  # a kernel serves one job
    assert second_seen["left_over"] is None  # nothing the first job did reached the second


async def test_a_gpu_job_starts_its_own_kernel_with_its_gpus(local):
    runtime = default_runtime().model_copy(update={"gpu": 1, "gpu_type": None})
    backend = local.make_job_backend(gpu_inventory=["NVIDIA A100-SXM4-80GB"])
    local.backends.append(backend)
    await backend.start()
    await backend.prewarm(runtime)  # nothing to warm for a GPU job
    assert slots(backend) == []
    seen, job = await probe(local, backend, runtime)
    assert not job["warm"] and seen["gpus"] == "0"


async def test_the_pool_is_refilled_to_its_size_and_stopped_with_the_backend(local):
    runtime = default_runtime()
    backend = local.make_job_backend(warm_kernels=2)
    local.backends.append(backend)
    await backend.start()
    await backend.prewarm(runtime)
    waiting = slots(backend)
    assert len(waiting) == 2
    await until(lambda: all(len(s.children()) == 1 for s in waiting))  # each kernel started
    kernels = [k for s in waiting for k in s.children()]
    await local.forget(backend)  # the control plane stops
    _, alive = psutil.wait_procs(waiting + kernels, timeout=20)
    assert alive == []
