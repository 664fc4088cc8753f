"""Fixtures for Fermi's tests.

Hub-level tests run the real platform: ``fermi up`` in a temporary data dir on a free port
(JupyterHub, its proxy, the control plane, the MLflow tracking server, real papermill jobs).

Fixtures:
- ``platform``: one platform for the whole session (module ``tests/platform.py`` does the work),
  allowing datasets inside the session's temporary folders and on the claim ``claim``.
  Tests that kill platform processes start their own with ``start_platform``.
- ``alice``, ``bob``: ordinary users (created through the hub REST API with the admin token),
  each a ``tests.platform.User`` with an authenticated API client.
- ``admin``: the admin, through ``FERMI_ADMIN_TOKEN``.
- ``template``: the tabular-classifier template notebook (nbformat dict).
- ``tiny_notebook``: a fast 2-cell parameterized notebook factory: ``tiny_notebook(body)``.

Unit tests (``tests/unit``) use none of these and run in seconds.

At the end of the session, the run fails if a process the suite started is still alive: a child
of pytest, or any process whose working folder, command line or environment lies inside the
session's temporary folder (every platform's data dir does), wherever it was reparented.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

from .platform import Platform, User, dataset_settings, make_notebook, start_platform

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Platform:
    # datasets may be in the tests' temporary folders (tmp_path), which also hold the data dir:
    # the rule keeps that one out by itself; "claim" is the one volume listed for datasets
    settings = dataset_settings(tmp_path_factory.mktemp("fermi-config"),
                                [tmp_path_factory.getbasetemp()], ["claim"])
    running = start_platform(tmp_path_factory.mktemp("fermi-data"), env=settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin(platform) -> User:
    return platform.admin


@pytest.fixture
def alice(platform) -> User:
    return platform.user(f"alice-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def bob(platform) -> User:
    return platform.user(f"bob-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def template() -> dict:
    return json.loads((ROOT / "notebooks/templates/tabular-classifier.ipynb").read_text())


@pytest.fixture
def tiny_notebook():
    return make_notebook


def leftover_processes(basetemp: Path) -> list[psutil.Process]:
    """Processes of this session still alive (see the docstring above)."""
    me = psutil.Process()
    mine = {p.pid for p in me.children(recursive=True)}
    marker = str(basetemp) + os.sep
    found = []
    for process in psutil.process_iter():
        if process.pid == me.pid:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.pid in mine or (process.cwd() + os.sep).startswith(marker) or any(
                    marker in part for part in process.cmdline()) or any(
                    marker in value for value in process.environ().values()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown stopped the platforms
def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return
    basetemp = session.config._tmp_path_factory.getbasetemp()
    # processes told to stop may take a moment to exit: wait for that, with a deadline
    deadline = time.monotonic() + float(os.environ.get("FERMI_TEST_LEFTOVER_GRACE", "20"))
    while (left := leftover_processes(basetemp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    lines = []
    for process in left:
        try:
            lines.append(f"  pid {process.pid} (parent {process.ppid()}): "
                         f"{' '.join(process.cmdline())[:200]}")
            process.kill()  # so that the next run starts clean
        except psutil.NoSuchProcess:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = ("the suite left processes behind (killed now); a test or teardown must stop "
               "them:\n" + "\n".join(lines))
    if reporter:
        reporter.write_line("\nERROR: " + message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
