"""The dashboard (仪表盘) on a running platform: an HTML page at /services/fermi/ that sends
strangers to the hub login, and its JSON twin /api/dashboard with the same figures, scoped to
the caller; admins also see the platform (pools, queues, failing work, usage by user × profile ×
GPUs with links to the audit log)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import httpx
import pytest

pytestmark = pytest.mark.hub

CJK = re.compile(r"[\u4e00-\u9fff]")
SWITCH = re.compile(r'<nav class="lang".*?</nav>', re.S)


def chinese_in(text: str):
    """Chinese in a page outside the language switch (whose "中文" names the other language)."""
    return CJK.search(SWITCH.sub("", text))


def dashboard(user) -> dict:
    response = user.api("GET", "dashboard")
    assert response.status_code == 200, response.text
    return response.json()


def page(user) -> str:
    response = user.http.get("/services/fermi/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def test_strangers_are_sent_to_the_hub_login(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as browser:
        response = browser.get("/services/fermi/", follow_redirects=False)
        assert response.status_code == 302
        assert "/hub/" in response.headers["location"]
        api = browser.get("/services/fermi/api/dashboard")
        assert api.status_code in (401, 403) and "message" in api.json()


def test_a_new_user_sees_quick_create_entries_and_clear_empty_states(platform, bob):
    text = page(bob)
    assert f"Signed in as <b>{bob.name}</b>" in text
    for link in ('href="/hub/spawn"', 'href="/hub/user-redirect/lab"',
                 'href="/services/fermi/api/models"', "fermi jobs submit", "fermi deploy"):
        assert link in text, link
    for empty in ("No running dev environment", "No training job yet",
                  "No inference service", "Nothing wasted right now"):
        assert empty in text, empty
    assert "Dashboard" in text and "Billing" in text and "Platform (admin)" not in text
    assert not chinese_in(text), chinese_in(text)  # one language at a time: English by default
    board = dashboard(bob)
    assert [q["module"] for q in board["quick_create"]] == [
        "dev-environment", "training-job", "inference-service"]
    # "new from template" opens the lab, which makes the notebook (labextension/src/templates.ts)
    templates = {t["name"]: t for t in board["templates"]}
    assert {"tabular-classifier", "pytorch-image-classifier", "llm-lora-finetune",
            "evaluate-model", "batch-inference"} <= set(templates)
    link = templates["tabular-classifier"]["href"]
    assert link == "/hub/user-redirect/lab?fermi-template=tabular-classifier" and link in text
    assert board["jobs"]["recent"] == [] and board["deployments"] == []
    assert board["environments"]["items"] == []
    assert board["environments"]["source"] in ("hub", "gpu-assignments")
    assert board["cost"]["total"] == 0 and board["admin_view"] is None
    pools = {p["slug"]: p for p in board["pools"]}
    assert pools["gpu-a100"]["gpus"] == 8 and pools["cpu"]["max_running_jobs"] >= 1


def test_jobs_and_cost_show_for_their_owner_only(platform, admin, alice, bob, tiny_notebook):
    job = alice.wait(alice.submit(tiny_notebook(), name="dash-demo")["id"])
    assert job["status"] == "succeeded"
    board = dashboard(alice)
    assert board["jobs"]["counts"]["succeeded"] >= 1
    assert job["id"] in [j["id"] for j in board["jobs"]["recent"]]
    month = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")
    usage = alice.api("GET", "usage", params={"month": month}).json()
    assert board["cost"]["month"] == month
    assert board["cost"]["billed"] == pytest.approx(usage["total_cost"], rel=1e-9)
    assert board["cost"]["billed"] > 0 and board["cost"]["by_kind"]["job"] > 0
    assert job["id"] in page(alice)
    assert job["id"] not in [j["id"] for j in dashboard(bob)["jobs"]["recent"]]
    assert job["id"] not in page(bob)

    everyone = dashboard(admin)["admin_view"]
    assert everyone is not None
    lines = [u for u in everyone["usage"] if u["user"] == alice.name and u["kind"] == "job"]
    assert lines and lines[0]["profile"] == "cpu-small" and lines[0]["gpus"] == 0
    assert lines[0]["audit"] == f"/services/fermi/api/audit?actor={alice.name}"
    assert {p["slug"] for p in everyone["pools"]} >= {"cpu", "gpu-a100"}
    assert "failing_jobs" in everyone and "failing_deployments" in everyone
    text = page(admin)
    assert "Platform (admin)" in text and "Who used which GPUs" in text
    assert f"api/audit?actor={alice.name}" in text


def test_the_dashboard_is_in_the_openapi_document(platform, alice):
    doc = alice.api("GET", "openapi.json").json()
    for path in ("/dashboard", "/alerts", "/usage/preview", "/usage/totals", "/usage/waste"):
        assert "get" in doc["paths"][path], path
    assert "Dashboard" in doc["components"]["schemas"]


# -- with the scope the dashboard asks the hub for (read:servers) -----------------------------------


@pytest.fixture(scope="module")
def servers_platform(tmp_path_factory):
    """A platform whose control plane may read server models (the scope read:servers added to
    its role, as hub_config/jupyterhub_config.py should grant), with two fake GPUs for dev
    servers."""
    from .platform import start_platform

    config = tmp_path_factory.mktemp("dash-config") / "hub_config.py"
    config.write_text(
        'c.FermiLocalSpawner.gpu_inventory = ["Fake GPU 0", "Fake GPU 1"]\n'
        "c.JupyterHub.load_roles.append({'name': 'fermi-read-servers', 'services': ['fermi'],\n"
        "                                 'scopes': ['read:servers']})\n")
    running = start_platform(tmp_path_factory.mktemp("fermi-dash-data"),
                             env={"FERMI_HUB_CONFIG": str(config)})
    yield running
    running.stop()


def test_running_dev_environments_come_from_the_hub(servers_platform):
    import time

    user = servers_platform.user(f"dana-{uuid.uuid4().hex[:6]}")
    started = user.http.post(f"/hub/api/users/{user.name}/server",
                             json={"profile": "gpu-a100-1"})
    assert started.status_code in (201, 202), started.text
    try:
        deadline = time.monotonic() + 90
        while True:
            board = dashboard(user)
            items = board["environments"]["items"]
            if items or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert board["environments"]["source"] == "hub" and board["environments"]["note"] is None
        [env] = items
        assert (env["name"], env["profile"], env["gpus"]) == ("", "gpu-a100-1", 1)
        assert env["started"] and env["url"] == f"/user/{user.name}/"
        assert board["cost"]["accruing"] >= 0 and "server" in board["cost"]["by_kind"]
        gpu = next(p for p in board["pools"] if p["slug"] == "gpu-a100")
        assert gpu["gpus_allocated"] == 1 and gpu["gpus_mine"] == 1
        admin = servers_platform.admin
        pools = {p["slug"]: p for p in dashboard(admin)["admin_view"]["pools"]}
        assert pools["gpu-a100"]["gpus_by_kind"] == {"server": 1}
        text = admin.http.get("/services/fermi/metrics").text
        assert f'holder="server:{user.name}/"' in text and 'activity="hub"' in text
        assert "gpu-a100-1" in page(user)
        # recently active: not waste
        assert user.api("GET", "usage/waste").json()["items"] == []
    finally:
        user.http.delete(f"/hub/api/users/{user.name}/server")


def test_pages_speak_one_language_chosen_by_the_switch_then_the_browser(platform, bob, admin):
    """English by default and for Accept-Language en; Chinese only for zh-CN or after the switch
    (remembered); the switch on every page, the 403 page included."""
    pages = ["/services/fermi/", "/services/fermi/images", "/services/fermi/audit",
             "/services/fermi/guide"]
    with httpx.Client(base_url=platform.url, timeout=60,
                      headers={"Authorization": f"token {bob.token}"}) as browser:
        for path in pages + ["/services/fermi/alerts", "/services/fermi/admin/catalog"]:
            for accept in (None, "en-GB,en;q=0.9", "fr-FR,de;q=0.8"):
                headers = {"Accept-Language": accept} if accept else {}
                text = browser.get(path, headers=headers).text
                assert 'lang="en"' in text and not chinese_in(text), (path, accept, chinese_in(text))
                # the switch: this page in each language
                assert '?lang=zh_CN"' in text and '?lang=en"' in text and ">中文</a>" in text, path
            chinese = browser.get(path, headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
            assert 'lang="zh-CN"' in chinese.text, path
            assert chinese.headers["content-language"] == "zh-CN"
        board = browser.get("/services/fermi/", headers={"Accept-Language": "zh-CN"}).text
        assert "仪表盘" in board and "计费管理" in board and "我的训练任务" in board
        assert "My training jobs" not in board and "Billing" not in board
        forbidden = browser.get("/services/fermi/alerts", headers={"Accept-Language": "zh-CN"})
        assert forbidden.status_code == 403 and "仅限管理员" in forbidden.text
        assert "admins only" not in forbidden.text

        # the switch wins over the browser, and is remembered for every page
        switched = browser.get("/services/fermi/images?lang=zh_CN",
                               headers={"Accept-Language": "en"})
        assert "镜像管理" in switched.text and "Start a dev environment" not in switched.text
        for path in pages:
            text = browser.get(path, headers={"Accept-Language": "en"}).text
            assert 'lang="zh-CN"' in text and 'aria-current="true">中文' in text, path
        back = browser.get("/services/fermi/?lang=en", headers={"Accept-Language": "zh-CN"})
        assert 'lang="en"' in back.text and not chinese_in(back.text)
        # other arguments survive the switch (the audit page's filters)
        audit = browser.get("/services/fermi/audit?action=create").text
        assert "?action=create&amp;lang=zh_CN" in audit
