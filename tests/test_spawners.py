"""Dev environments on a real hub: the spawn form from the catalogue (and an admin's edit seen by
the next form), REST spawns with KubeSpawner-shaped options, real GPU assignment through
``CUDA_VISIBLE_DEVICES`` shared with training jobs, group restrictions, stale saved options,
named servers, usage records, the culler's per-profile timeouts and the images page.

These tests start their own platform (``gpu_platform``): the hub's local spawner and the control
plane's job backend are both given two fake GPUs (``FERMI_HUB_CONFIG``, ``FERMI_SERVICE_CONFIG``),
so GPU profiles are available and the allocator is exercised for real. Every catalogue item they
add has a slug of its own. A server's environment is read from ``/proc/PID/environ`` (its pid is
in the spawner state the admin sees).
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from .platform import Platform, User, start_platform

pytestmark = pytest.mark.hub

PASSWORD = "correct-horse-battery-9"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def gpu_platform(tmp_path_factory) -> Platform:
    config = tmp_path_factory.mktemp("gpu-config")
    hub_config = config / "hub_config.py"
    hub_config.write_text('c.FermiLocalSpawner.gpu_inventory = ["Fake GPU 0", "Fake GPU 1"]\n')
    service_config = config / "service_config.py"
    service_config.write_text('c.LocalJobBackend.gpu_inventory = ["Fake GPU 0", "Fake GPU 1"]\n')
    running = start_platform(tmp_path_factory.mktemp("fermi-gpu-data"), env={
        "FERMI_HUB_CONFIG": str(hub_config), "FERMI_SERVICE_CONFIG": str(service_config),
        "FERMI_CULL_EVERY": "5"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def idle_servers(gpu_platform) -> dict[str, User]:
    """Two servers left idle from the first test of the module on: one on a profile culled after
    1 idle minute, one on cpu-small (60 minutes); the culler test, last, looks at them."""
    create_profile(gpu_platform.admin, "t-quick-cull", idle_cull_minutes=1)
    servers = {"quick": gpu_platform.user(unique("quick")),
               "slow": gpu_platform.user(unique("slow"))}
    start(servers["quick"], {"profile": "t-quick-cull"})
    start(servers["slow"], {"profile": "cpu-small"})
    return servers


# -- helpers ----------------------------------------------------------------------------------------


def browser_login(platform: Platform, name: str, password: str) -> httpx.Client:
    browser = httpx.Client(base_url=platform.url, follow_redirects=True, timeout=60)
    browser.get("/hub/login")
    response = browser.post("/hub/login", data={"username": name, "password": password,
                                                "_xsrf": browser.cookies.get("_xsrf", "")})
    assert response.status_code == 200 and "/hub/login" not in str(response.url), response.text
    return browser


def person(platform: Platform, name: str) -> httpx.Client:
    """A researcher who signed up and was approved by the admin, logged in with a browser."""
    admin = browser_login(platform, "admin",
                          (platform.data / "admin-password").read_text().strip())
    signup = httpx.Client(base_url=platform.url, follow_redirects=True, timeout=60)
    signup.get("/hub/signup")
    signup.post("/hub/signup", data={"username": name, "signup_password": PASSWORD,
                                     "signup_password_confirmation": PASSWORD,
                                     "_xsrf": signup.cookies.get("_xsrf", "")})
    assert admin.get(f"/hub/authorize/{name}").status_code == 200
    return browser_login(platform, name, PASSWORD)


def server_url(name: str, server: str = "") -> str:
    return f"/hub/api/users/{name}/servers/{server}" if server else f"/hub/api/users/{name}/server"


def start(user: User, options: dict | None = None, server: str = "",
          expect: tuple = (201, 202)) -> httpx.Response:
    kwargs = {"json": options} if options is not None else {}
    response = user.http.post(server_url(user.name, server), **kwargs)
    assert response.status_code in expect, response.text
    return response


def server_model(platform: Platform, name: str, server: str = "", ready: bool = True,
                 timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        model = platform.admin.http.get(f"/hub/api/users/{name}").json()
        found = model["servers"].get(server)
        if found and (found["ready"] or not ready):
            return found
        assert time.monotonic() < deadline, platform.log_tail()
        time.sleep(0.3)


def environ(model: dict) -> dict[str, str]:
    raw = Path(f"/proc/{model['state']['pid']}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def stop(user: User, server: str = "", platform: Platform | None = None) -> None:
    response = user.http.delete(server_url(user.name, server))
    assert response.status_code in (202, 204), response.text
    if platform is not None:
        deadline = time.monotonic() + 60
        while platform.admin.http.get(f"/hub/api/users/{user.name}").json()[
                "servers"].get(server):
            assert time.monotonic() < deadline
            time.sleep(0.3)


def usage(platform: Platform, ref: str) -> list[tuple]:
    engine = create_engine(f"sqlite:///{platform.data / 'fermi.sqlite'}")
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(
                "SELECT kind, profile, gpus, seconds, price_per_hour, cost FROM usage_records "
                "WHERE ref = :ref ORDER BY id"), {"ref": ref})]
    finally:
        engine.dispose()


def create_profile(admin: User, slug: str, **fields) -> dict:
    body = {"slug": slug, "name": f"Test {slug}", "cpu": 2, "memory": "4Gi",
            "price_per_hour": 0.1, **fields}
    response = admin.api("POST", "catalog/profiles", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# -- the form ----------------------------------------------------------------------------------


def test_the_spawn_form_is_the_catalogue_and_shows_an_admin_edit_at_once(gpu_platform,
                                                                         idle_servers):
    admin = gpu_platform.admin
    slug, reserved = unique("t-form"), unique("t-team")
    create_profile(admin, slug, description="Form test <b>profile</b>")
    create_profile(admin, reserved, allowed_groups=[unique("g")])
    browser = person(gpu_platform, unique("form"))
    form = browser.get("/hub/spawn")
    assert form.status_code == 200
    card = re.search(rf'<label class="fermi-card" data-profile="{slug}">.*?</label>', form.text,
                     re.S).group(0)
    assert "2 CPUs · 4Gi · 0.10 / h" in card and "available / 可用" in card
    assert "Form test &lt;b&gt;profile&lt;/b&gt;" in card
    assert reserved not in form.text  # reserved for a group this person is not in
    gpu_card = re.search(r'data-profile="gpu-a100-1">.*?</label>', form.text, re.S).group(0)
    assert "1 GPU (nvidia-a100)" in gpu_card and "of 2 GPUs free now" in gpu_card
    assert '<option value="python-local" selected>' in form.text
    assert "0.1.0 (python 3.11, framework scikit-learn)" in form.text

    current = admin.api("GET", f"catalog/profiles/{slug}")
    edited = admin.api("PATCH", f"catalog/profiles/{slug}", json={"cpu": 3, "price_per_hour": 0.75},
                       headers={"If-Match": current.headers["ETag"]})
    assert edited.status_code == 200, edited.text
    again = browser.get("/hub/spawn").text
    card = re.search(rf'data-profile="{slug}">.*?</label>', again, re.S).group(0)
    assert "3 CPUs · 4Gi · 0.75 / h" in card


# -- spawning through the REST API ---------------------------------------------------------------


def test_a_rest_spawn_runs_the_profiles_environment_and_is_billed_on_stop(gpu_platform):
    user = gpu_platform.user(unique("rest"))
    start(user, {"profile": "cpu-small"})
    model = server_model(gpu_platform, user.name)
    assert model["user_options"] == {"profile": "cpu-small", "image": "python-local",
                                     "image_version": "0.1.0"}
    env = environ(model)
    assert env["FERMI_PROFILE"] == "cpu-small" and env["FERMI_IMAGE"] == "python-local"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU server sees no GPU
    assert (env["CPU_LIMIT"], env["MEM_LIMIT"]) == ("1.0", str(2 * 1024**3))
    assert model["state"]["fermi"]["idle_cull_minutes"] == 60
    time.sleep(1)
    stop(user, platform=gpu_platform)
    [(kind, profile, gpus, seconds, price, cost)] = usage(gpu_platform, f"{user.name}/")
    assert (kind, profile, gpus, price) == ("server", "cpu-small", 0, 0.05)
    assert seconds >= 1 and cost == pytest.approx(seconds / 3600 * 0.05)


def test_gpus_are_never_shared_a_third_waits_and_stop_frees_them(gpu_platform, tiny_notebook):
    ann, bo, cy = (gpu_platform.user(unique(n)) for n in ("ann", "bo", "cy"))
    start(ann, {"profile": "gpu-a100-1"})
    start(bo, {"profile": "gpu-a100-1"}, server="train")  # a named server
    devices = {
        environ(server_model(gpu_platform, ann.name))["CUDA_VISIBLE_DEVICES"],
        environ(server_model(gpu_platform, bo.name, "train"))["CUDA_VISIBLE_DEVICES"],
    }
    assert devices == {"0", "1"}

    refused = cy.http.post(server_url(cy.name), json={"profile": "gpu-a100-1"})
    assert refused.status_code == 409
    assert refused.json()["message"].startswith("No GPU free: this needs 1 GPU, and 2 of the 2 "
                                                "GPUs of this machine are in use")
    # a training job on a GPU profile waits too, queued and saying why
    job = cy.submit(tiny_notebook("import os\nprint('devices=' + os.environ['CUDA_VISIBLE_DEVICES'])"),
                    profile="gpu-a100-1")
    # the scheduler has looked at the job once it says why it waits
    deadline = time.monotonic() + 60
    while not ((waiting := cy.job(job["id"])).get("reason") or "").startswith("No GPU free"):
        assert time.monotonic() < deadline and waiting["status"] == "queued", waiting
        time.sleep(0.2)
    assert waiting["status"] == "queued", waiting

    ann_device = environ(server_model(gpu_platform, ann.name))["CUDA_VISIBLE_DEVICES"]
    stop(ann, platform=gpu_platform)
    done = cy.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    output = cy.api("GET", f"jobs/{job['id']}/output").text
    assert f"devices={ann_device}" in output  # the job got the device the server gave back

    start(cy, {"profile": "gpu-a100-1"})  # the job ended: its GPU is free again
    assert environ(server_model(gpu_platform, cy.name))["CUDA_VISIBLE_DEVICES"] == ann_device
    [record] = usage(gpu_platform, f"{ann.name}/")
    assert record[:3] == ("server", "gpu-a100-1", 1)
    stop(bo, "train", gpu_platform)
    stop(cy, platform=gpu_platform)


def test_a_group_restricted_profile_is_refused_to_non_members_through_the_rest_api(gpu_platform):
    group = unique("team")
    slug = unique("t-team")
    create_profile(gpu_platform.admin, slug, allowed_groups=[group])
    outsider = gpu_platform.user(unique("out"))
    refused = outsider.http.post(server_url(outsider.name), json={"profile": slug})
    assert refused.status_code == 403
    assert f"reserved for members of the group(s) {group}" in refused.json()["message"]
    assert not gpu_platform.admin.http.get(f"/hub/api/users/{outsider.name}").json()["servers"]
    member = gpu_platform.user(unique("in"), groups=[group])
    start(member, {"profile": slug})
    assert environ(server_model(gpu_platform, member.name))["FERMI_PROFILE"] == slug
    stop(member, platform=gpu_platform)


def test_unknown_choices_in_a_request_are_refused_with_the_choices(gpu_platform):
    user = gpu_platform.user(unique("bad"))
    for options, words in (({"profile": "nope"}, "Unknown profile 'nope'; choose one of: "),
                           ({"image": "nope"}, "Image 'nope' is not in the catalogue"),
                           ({"profile": ["x"]}, "user_options.profile must be a string")):
        response = user.http.post(server_url(user.name), json=options)
        assert response.status_code == 400 and words in response.json()["message"], response.text


def test_a_stale_saved_profile_falls_back_to_the_default_with_a_notice(gpu_platform):
    admin = gpu_platform.admin
    slug = unique("t-stale")
    create_profile(admin, slug)
    user = gpu_platform.user(unique("stale"))
    start(user, {"profile": slug})
    assert environ(server_model(gpu_platform, user.name))["FERMI_PROFILE"] == slug
    stop(user, platform=gpu_platform)
    current = admin.api("GET", f"catalog/profiles/{slug}")
    deleted = admin.api("DELETE", f"catalog/profiles/{slug}",
                        headers={"If-Match": current.headers["ETag"]})
    assert deleted.status_code == 200, deleted.text

    start(user)  # no options: the saved ones, whose profile is gone
    model = server_model(gpu_platform, user.name)
    assert environ(model)["FERMI_PROFILE"] == "cpu-small"
    assert model["user_options"]["profile"] == "cpu-small"
    [notice] = model["state"]["fermi"]["notices"]
    assert notice.startswith(f"Your saved profile {slug!r} is no longer offered: starting on "
                             "the default profile 'cpu-small'")
    assert "Your saved profile" in (gpu_platform.data / "logs" / "hub.log").read_text()
    stop(user, platform=gpu_platform)


# -- culling and the images page ---------------------------------------------------------------------


def test_the_images_page_lists_searches_and_starts_with_an_image(gpu_platform):
    admin = gpu_platform.admin
    old = unique("t-old")
    created = admin.api("POST", "catalog/images", json={
        "slug": old, "name": "Old trainer", "reference": "registry.example.com/team/old",
        "deprecated": True, "redirect_message": "use pytorch instead",
        "versions": [{"tag": "v1", "labels": {"framework": "tensorflow"}}]})
    assert created.status_code == 201, created.text
    browser = person(gpu_platform, unique("img"))
    page = browser.get("/services/fermi/images")
    assert page.status_code == 200
    html = page.text
    assert "Images" in html and "Search" in html and "Framework" in html and "镜像" not in html
    assert html.index('data-slug="python-local"') < html.index(f'data-slug="{old}"')  # featured
    article = re.search(rf'<article class="image deprecated" data-slug="{old}".*?</article>',
                        html, re.S).group(0)
    assert "deprecated" in article and "use pytorch instead" in article
    assert "tensorflow" in article and f'href="/hub/spawn#image={old}"' in article
    assert '<option value="tensorflow">tensorflow</option>' in html
    anonymous = httpx.get(f"{gpu_platform.url}/services/fermi/images", follow_redirects=False)
    assert anonymous.status_code in (302, 303)  # to the hub login


def test_the_culler_stops_each_server_after_its_profiles_idle_minutes(gpu_platform, idle_servers):
    """Runs last: the servers of ``idle_servers`` have been idle since the first test."""
    from fermi_spawner.culler import ProfileTimeouts, timeouts_reader

    service = gpu_platform.admin.http.get("/hub/api/services/idle-culler").json()
    assert service["roles"] == ["idle-culler"]  # list:users, read:users:activity,
    # read:servers, delete:servers (hub_config/jupyterhub_config.py)
    quick, slow = idle_servers["quick"], idle_servers["slow"]
    arbiter = ProfileTimeouts(timeouts_reader(f"sqlite:///{gpu_platform.data / 'fermi.sqlite'}"))
    model = server_model(gpu_platform, slow.name)
    minutes = dt.timedelta(minutes=1)
    assert arbiter(inactive=59 * minutes, inactive_limit=1, server=model) is False
    assert arbiter(inactive=61 * minutes, inactive_limit=1, server=model) is True
    deadline = time.monotonic() + 150
    while gpu_platform.admin.http.get(f"/hub/api/users/{quick.name}").json()["servers"]:
        assert time.monotonic() < deadline, "the 1-minute profile's server was not culled"
        time.sleep(1)
    assert "Culling server " + quick.name in (gpu_platform.data / "logs" / "hub.log").read_text()
    [record] = usage(gpu_platform, f"{quick.name}/")
    assert record[:2] == ("server", "t-quick-cull") and record[3] >= 60
    assert server_model(gpu_platform, slow.name)["ready"]  # 60 minutes: still running
    stop(slow, platform=gpu_platform)
