"""The researcher's day in a real browser (Debian's chromium, driven by Playwright), against a real
hub, real kernels, a real tracking server and real model servers:

sign up → approved → log in → spawn → open the template → "Submit as training job" → change a
parameter → the job succeeds in the sidebar → open its output → promote its model → the
deployment becomes ready → copy its URL (which answers V2) → the same dialog in Chinese → the
misuse guard's hint after a long-running cell → a new notebook from a template, from the
dashboard.

Each step leaves a screenshot in test-output/browser/ (CI keeps that folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("FERMI_SCREENSHOTS", ROOT / "test-output" / "browser"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags this sandbox needs: no sandbox as root, no GPU, and no calls to Google's hosts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct-horse-battery-42"
# the main area's tab in front; the panel it shows names it in aria-labelledby (Lumino's dock)
CURRENT_TAB = "#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current"
SUBMIT_BUTTON = '.jp-NotebookPanel-toolbar [data-command="fermi:submit-job"]'


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Shots:
    def __init__(self, page):
        self.page, self.count = page, 0
        SHOTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, what: str) -> Path:
        self.count += 1
        path = SHOTS / f"{self.count:02d}-{what}.png"
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


def log_in(page, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/hub/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")


def lab_settings(page, base: str, user: str, plugin: str, values: dict) -> None:
    """Change the user's JupyterLab settings through the lab's own settings API (as the settings
    editor does), with the page's cookie and XSRF token."""
    answer = page.evaluate(
        """async ([url, raw]) => {
            const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf='));
            const r = await fetch(url, {method: 'PUT', body: JSON.stringify({raw}),
                headers: {'Content-Type': 'application/json',
                          'X-XSRFToken': xsrf ? decodeURIComponent(xsrf.slice(6)) : ''}});
            return r.status;
        }""",
        [f"{base}/user/{user}/lab/api/settings/{plugin}", json.dumps(values)],
    )
    assert answer == 204, f"settings {plugin}: HTTP {answer}"


def front_notebook(page, name: str, timeout: float = 60_000) -> str:
    """The selector of the notebook panel a user sees once the tab in front is ``name``'s.

    A restored workspace reopens every earlier tab: a selector such as ``.jp-NotebookPanel
    :visible`` is satisfied by whichever notebook shows first, often not the one just opened."""
    tab = page.locator(CURRENT_TAB, has_text=name)
    tab.wait_for(timeout=timeout)
    panel = f'.jp-NotebookPanel[aria-labelledby="{tab.get_attribute("id")}"]'
    page.wait_for_selector(f"{panel} .jp-Cell", timeout=timeout)
    page.wait_for_selector(f"{panel} .jp-Spinner", state="detached", timeout=timeout)
    return panel


def open_notebook(page, base: str, user: str, path: str) -> str:
    """Opens ``path`` in the lab; returns the selector of its panel (see ``front_notebook``)."""
    page.goto(f"{base}/user/{user}/lab/tree/{path}")
    panel = front_notebook(page, path.rsplit("/", 1)[-1])
    # its kernel's indicator in its own toolbar (every open notebook's toolbar has one)
    page.wait_for_selector(f"{panel} .jp-Notebook-ExecutionIndicator", timeout=60_000)
    return panel


def run_first_cell(page, panel: str, tries: int = 6) -> None:
    """Shift+Enter on the first cell of ``panel``; a freshly opened notebook may not take keys
    until its kernel session is connected, so try again until the cell shows it is running."""
    running = page.locator(f"{panel} .jp-InputPrompt", has_text="[*]").first
    for _ in range(tries):
        page.locator(f"{panel} .jp-InputPrompt").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            running.wait_for(timeout=5_000)
            return
        except Exception:  # not taken yet: the cell is still "[ ]"
            page.keyboard.press("Escape")
    raise AssertionError("the cell never started running")


def test_a_researcher_submits_watches_promotes_and_calls_a_model(platform, admin, browser, template):
    base = platform.url
    user = f"carol{int(time.time()) % 100000}"
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    page.set_default_timeout(30_000)
    shot = Shots(page)
    try:

        # sign up; the admin approves (NativeAuthenticator); log in
        page.goto(f"{base}/hub/signup")
        page.fill("input[name=username]", user)
        page.fill("input[name=signup_password]", PASSWORD)
        page.fill("input[name=signup_password_confirmation]", PASSWORD)
        shot("signup")
        page.click("input[type=submit], button[type=submit]")
        page.wait_for_load_state()
        admin_page = browser.new_page()
        log_in(admin_page, base, "admin", (platform.data / "admin-password").read_text().strip())
        admin_page.goto(f"{base}/hub/authorize/{user}")
        admin_page.close()
        events = admin.api("GET", "audit?target_kind=user&limit=200").json()["events"]
        assert {(e["action"], e["actor"]) for e in events if e["target_id"] == user} >= {
            ("sign-up", user), ("authorize", "admin")}, events[:5]

        home = platform.data / "users" / user
        home.mkdir(parents=True, exist_ok=True)
        (home / "tabular-classifier.ipynb").write_text(json.dumps(template))

        log_in(page, base, user, PASSWORD)
        # the spawn form (profile × image from the catalogue): the defaults
        page.wait_for_url(re.compile(r".*/(spawn|lab|tree).*"), timeout=60_000)
        if "/spawn" in page.url:
            shot("spawn-form")
            page.click("input[type=submit], button[type=submit]")
        page.wait_for_url(re.compile(rf".*/user/{user}/lab.*"), timeout=120_000)

        # 1. the template, and the toolbar button
        panel = open_notebook(page, base, user, "tabular-classifier.ipynb")
        button = page.locator(f"{panel} {SUBMIT_BUTTON}")
        button.wait_for()
        shot("notebook-with-submit-button")
        button.click()
        dialog = page.locator(".fermi-submit-dialog")
        dialog.wait_for()
        c_input = dialog.locator('[data-fermi-param="C"]')
        c_input.wait_for()
        assert c_input.input_value() == "1.0" or float(c_input.input_value()) == 1.0
        c_input.fill("0.5")
        model_name = f"wine-{user}"  # a model of this user's own (other tests register wine-classifier)
        dialog.locator('[data-fermi-param="model_name"]').fill(model_name)
        assert "/h" in dialog.locator(".fermi-cost-estimate").inner_text() or dialog.locator(
            ".fermi-cost-estimate").inner_text()
        shot("submit-dialog")
        page.locator(".jp-Dialog-footer button", has_text="Submit").click()
        dialog.wait_for(state="detached")

        # 2. the job in the sidebar, live, until it succeeds
        page.locator('[data-id="fermi-sidebar"], #tab-key-0-fermi-sidebar').first.click() \
            if page.locator("#fermi-sidebar").is_hidden() else None
        page.locator("#fermi-sidebar").wait_for()
        row = page.locator('[data-fermi-section="jobs"] [data-fermi-job]').first
        row.wait_for()
        job_id = row.get_attribute("data-fermi-job")
        shot("job-in-sidebar")
        page.locator(f'[data-fermi-job="{job_id}"][data-fermi-status="succeeded"]').wait_for(timeout=180_000)
        job = httpx.get(f"{base}/services/fermi/api/jobs/{job_id}",
                        headers={"Authorization": f"token {admin.token}"}).json()
        assert job["status"] == "succeeded" and job["parameters"]["C"] == 0.5, job
        assert job["owner"] == user and job["models"][0]["name"] == model_name, job
        shot("job-succeeded")

        # 3. its executed notebook opens in the lab
        page.locator(f'[data-fermi-job="{job_id}"] [data-fermi-action="output"]').click()
        front_notebook(page, job_id)
        shot("output-notebook")

        # 4. promote the model it registered
        model = job["models"][0]
        page.locator('[data-fermi-section="models"]').scroll_into_view_if_needed()
        version = page.locator(
            f'[data-fermi-model="{model["name"]}"] [data-fermi-version="{model["version"]}"]')
        version.wait_for(timeout=60_000)
        version.locator('[data-fermi-action="promote"]').click()
        deploy = page.locator(".fermi-deploy-dialog")
        deploy.wait_for()
        name = f"wine-{user}"[:40]
        deploy.locator('[data-fermi-field="name"]').fill(name)
        shot("deploy-dialog")
        page.locator(".jp-Dialog-footer button", has_text="Deploy").click()
        deploy.wait_for(state="detached")

        # 5. the deployment becomes ready; its URL is copied and answers the V2 protocol
        ready = page.locator(f'[data-fermi-deployment="{name}"][data-fermi-status="ready"]')
        ready.wait_for(timeout=180_000)
        url = ready.locator(".fermi-deployment-url").inner_text().strip()
        assert url.endswith(f"/{name}"), url
        ready.locator('[data-fermi-action="copy-url"]').click()
        assert page.evaluate("navigator.clipboard.readText()").strip() == url
        shot("deployment-ready")
        token = admin.http.post(f"/hub/api/users/{user}/tokens", json={"note": "browser test"}).json()["token"]
        health = httpx.get(f"{url}/v2/health/ready", headers={"Authorization": f"token {token}"})
        assert health.status_code == 200, health.text

        # 6. the same dialog in Chinese, after choosing 中文 in JupyterLab's language setting
        lab_settings(page, base, user, "@jupyterlab/translation-extension:plugin", {"locale": "zh_CN"})
        panel = open_notebook(page, base, user, "tabular-classifier.ipynb")
        page.locator(f"{panel} {SUBMIT_BUTTON}").click()
        dialog = page.locator(".fermi-submit-dialog")
        dialog.wait_for()
        dialog.locator('[data-fermi-param="C"]').wait_for()
        assert page.locator(".jp-Dialog-footer button", has_text="提交").count() >= 1
        assert re.search(r"[\u4e00-\u9fff]", dialog.inner_text()), dialog.inner_text()
        shot("submit-dialog-zh")
        page.keyboard.press("Escape")

        # 7. the misuse guard: a long cell on a dev server offers to submit the notebook as a job
        lab_settings(page, base, user, "@jupyterlab/translation-extension:plugin", {"locale": "en"})
        lab_settings(page, base, user, "fermi-labextension:plugin",
                     {"misuseGuardSeconds": 2, "misuseGuardGpuOnly": False})
        (home / "long.ipynb").write_text(json.dumps({
            "cells": [{"cell_type": "code", "execution_count": None, "id": "a1", "metadata": {},
                       "outputs": [], "source": "import time\ntime.sleep(8)"}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}))
        run_first_cell(page, open_notebook(page, base, user, "long.ipynb"))
        hint = page.locator(".Toastify__toast", has_text="training job")
        hint.first.wait_for(timeout=30_000)
        shot("misuse-guard-hint")

        # 8. new from template: the dashboard's link makes and opens a notebook in the lab
        page.goto(f"{base}/services/fermi/")
        page.locator('a[href*="fermi-template=evaluate-model"]').click()
        front_notebook(page, "evaluate-model.ipynb")
        shot("new-from-template")
        assert (home / "evaluate-model.ipynb").exists()
    except BaseException:
        shot("failure")  # what the page showed when a step failed
        raise
    finally:
        context.close()
