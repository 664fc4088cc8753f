"""Dev-environment options without a hub: the one options model both spawners share (checks,
fallbacks, the form), the local spawner's per-spawn settings and usage records, the GPU
allocator shared by dev servers and jobs, the job runner's wait for a GPU, and the per-profile
idle timeouts of the culler."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from fermi_extension.backends.local.gpus import (
    GpuAllocator,
    NoGpuFree,
    gpu_availability,
    job_holder,
    server_holder,
)
from fermi_extension.backends.local.jobs import LocalJobBackend
from fermi_extension.catalog.schema import Catalog
from fermi_extension.catalog.store import CatalogStore
from fermi_extension.caller import Caller
from fermi_extension.db import GpuAssignment, Job, UsageRecord, make_session_factory
from fermi_extension.errors import Unavailable
from fermi_extension.jobs.models import CreateJob
from fermi_extension.jobs.service import JobRunner, JobService
from fermi_spawner.culler import (
    ProfileTimeouts,
    idle_limit_seconds,
    timeouts_from_profiles,
    timeouts_reader,
)
from fermi_spawner.options import (
    ImageView,
    ProfileView,
    Refused,
    offered_images,
    options_from_form,
    render_form,
    request_carries_options,
    resolve,
)
from tests.mocking import FakeBackend

CATALOG = {
    "pools": [
        {"slug": "cpu", "name": "CPU"},
        {"slug": "gpu", "name": "GPU", "gpus": 2, "max_running_jobs": 4},
    ],
    "images": [
        {"slug": "python-local", "name": "Platform Python", "reference": "quay.io/jupyter/scipy-notebook",
         "local": True, "featured": False,
         "versions": [{"tag": "v2", "labels": {"framework": "scikit-learn"}}, {"tag": "v1"}]},
        {"slug": "pytorch", "name": "PyTorch", "reference": "quay.io/jupyter/pytorch-notebook",
         "local": True, "featured": True, "versions": [{"tag": "cuda12"}]},
        {"slug": "old", "name": "Old", "reference": "example.org/old", "local": True,
         "deprecated": True, "redirect_message": "use pytorch instead",
         "versions": [{"tag": "1"}]},
        {"slug": "gone", "name": "Gone", "reference": "example.org/gone", "local": True,
         "hidden": True, "redirect_message": "replaced by pytorch"},
        {"slug": "container", "name": "Container only", "reference": "registry.example.org/team/x",
         "versions": [{"tag": "v1"}], "pull_secret": "team-registry"},
    ],
    "profiles": [
        {"slug": "cpu-small", "name": "CPU small", "cpu": 1, "memory": "2Gi", "default": True,
         "price_per_hour": 0.05, "idle_cull_minutes": 60},
        {"slug": "cpu-large", "name": "CPU large", "cpu": 4, "memory": "16Gi",
         "idle_cull_minutes": 0},
        {"slug": "gpu-1", "name": "1 GPU", "cpu": 8, "memory": "64Gi", "gpu": 1, "pool": "gpu",
         "price_per_hour": 2.5, "idle_cull_minutes": 30},
        {"slug": "team-only", "name": "Team", "cpu": 2, "memory": "4Gi",
         "allowed_groups": ["team"], "idle_cull_minutes": 15},
    ],
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.model_validate(CATALOG)


def no_gpu(profile, pool):
    return gpu_availability(profile, 0)


def local_images(image):
    return (image.local, None if image.local else "container only")


# -- resolve: what a spawn runs ------------------------------------------------------------------


def test_no_options_mean_the_default_profile_and_image(catalog):
    chosen = resolve(catalog, {})
    assert (chosen.profile.slug, chosen.image.slug, chosen.version) == (
        "cpu-small", "python-local", "v2")
    assert chosen.user_options == {"profile": "cpu-small", "image": "python-local",
                                   "image_version": "v2"}
    assert chosen.spec.image_reference == "quay.io/jupyter/scipy-notebook:v2"
    assert chosen.notices == []


def test_the_kubespawner_shape_picks_profile_image_and_version(catalog):
    chosen = resolve(catalog, {"profile": "gpu-1", "image": "python-local", "image_version": "v1"})
    assert (chosen.profile.gpu, chosen.version) == (1, "v1")
    assert chosen.spec.image_reference.endswith(":v1") and chosen.spec.gpu == 1


@pytest.mark.parametrize("options, status, words", [
    ({"profile": "nope"}, 400, ["Unknown profile 'nope'", "cpu-small, cpu-large, gpu-1"]),
    ({"image": "nope"}, 400, ["Image 'nope' is not in the catalogue", "python-local"]),
    ({"image": "gone"}, 400, ["no longer offered: replaced by pytorch"]),
    ({"image": "pytorch", "image_version": "v9"}, 400, ["has no version 'v9'", "cuda12"]),
    ({"profile": "team-only"}, 403, ["reserved for members of the group(s) team"]),
    ({"profile": 3}, 400, ["user_options.profile must be a string"]),
    (["cpu-small"], 400, ["must be a JSON object"]),
])
def test_requested_options_that_do_not_fit_are_refused_with_the_reason(catalog, options, status,
                                                                       words):
    with pytest.raises(Refused) as refused:
        resolve(catalog, options, requested=True)
    assert refused.value.status == status
    for word in words:
        assert word in refused.value.message


def test_saved_options_that_no_longer_fit_fall_back_to_the_defaults_with_a_notice(catalog):
    chosen = resolve(catalog, {"profile": "removed", "image": "gone", "image_version": "x"},
                     requested=False)
    assert (chosen.profile.slug, chosen.image.slug, chosen.version) == (
        "cpu-small", "python-local", "v2")
    assert "Your saved profile 'removed' is no longer offered" in chosen.notices[0]
    assert "replaced by pytorch" in chosen.notices[1]
    saved_version = resolve(catalog, {"image": "pytorch", "image_version": "old-tag"},
                            requested=False)
    assert saved_version.version == "cuda12"
    assert "Your saved version 'old-tag'" in saved_version.notices[0]


def test_a_user_who_left_the_group_falls_back_but_never_runs_the_reserved_profile(catalog):
    chosen = resolve(catalog, {"profile": "team-only"}, requested=False)
    assert chosen.profile.slug == "cpu-small"
    assert "reserved for members" in chosen.notices[0]
    assert resolve(catalog, {"profile": "team-only"}, groups={"team"}).profile.slug == "team-only"
    assert resolve(catalog, {"profile": "team-only"}, admin=True).profile.slug == "team-only"


def test_a_profile_that_cannot_run_here_is_refused_with_the_machines_reason(catalog):
    for requested in (True, False):
        with pytest.raises(Refused) as refused:
            resolve(catalog, {"profile": "gpu-1"}, requested=requested, profile_check=no_gpu)
        assert refused.value.status == 422
        assert "This machine has no GPU" in refused.value.message


def test_deprecated_images_still_run_and_say_where_to_move(catalog):
    chosen = resolve(catalog, {"image": "old"})
    assert chosen.image.slug == "old"
    assert chosen.notices == ["Image 'old' is deprecated: use pytorch instead. It still runs; "
                              "move on when you can."]


def test_images_the_spawner_cannot_run_are_refused_and_never_the_default(catalog):
    with pytest.raises(Refused) as refused:
        resolve(catalog, {"image": "container"}, image_check=local_images)
    assert refused.value.status == 422
    data = {**CATALOG, "images": [CATALOG["images"][4], CATALOG["images"][1]]}
    chosen = resolve(Catalog.model_validate(data), {}, image_check=local_images)
    assert chosen.image.slug == "pytorch"


def test_featured_images_come_first(catalog):
    assert [i.slug for i in offered_images(catalog)] == [
        "pytorch", "python-local", "old", "container"]


# -- the form and the request ---------------------------------------------------------------------


def test_form_fields_become_kubespawner_shaped_user_options():
    assert options_from_form({"profile": ["gpu-1"], "image": ["pytorch"],
                              "image_version": [""]}) == {"profile": "gpu-1", "image": "pytorch"}
    assert options_from_form({"profile": ["gpu-1"],
                              "profile-option-gpu-1--image": ["pytorch"],
                              "unrelated": ["x"]}) == {"profile": "gpu-1", "image": "pytorch"}
    assert options_from_form({}) == {}


def request(method="POST", body=b"", query=None, form=None):
    return SimpleNamespace(request=SimpleNamespace(
        method=method, body=body, query_arguments=query or {}, body_arguments=form or {}))


@pytest.mark.parametrize("handler, carries", [
    (None, False),
    (request(body=b""), False),
    (request(body=b'{"profile": "cpu-small"}'), True),
    (request(body=b'{"user_options": {"profile": "cpu-small"}}'), True),
    (request(body=b'{"display_name": "x", "user_options": null}'), False),
    (request(body=b"{}"), False),
    (request(form={"profile": [b"gpu-1"], "_xsrf": [b"t"]}), True),
    (request(form={"_xsrf": [b"t"]}), False),
    (request("GET", query={"opt-profile": [b"gpu-1"]}), True),
    (request("GET", query={"next": [b"/x"]}), False),
])
def test_options_a_request_carries_are_told_apart_from_saved_ones(handler, carries):
    assert request_carries_options(handler) is carries


def test_the_form_shows_each_profiles_size_price_and_availability(catalog):
    views = [ProfileView(catalog.profiles[0], True),
             ProfileView(catalog.profiles[2], False, "This machine has no GPU"),
             ProfileView(catalog.profiles[1], True, note="2 of 2 GPUs free")]
    images = [ImageView(i, i.local, None if i.local else "Kubernetes only")
              for i in offered_images(catalog)]
    form = render_form(views, images, {"profile": "cpu-small", "image": "pytorch",
                                       "image_version": "cuda12"})
    assert 'value="cpu-small" checked' in form
    assert 'value="gpu-1" disabled' in form and "This machine has no GPU" in form
    assert "8 CPUs · 64Gi · 1 GPU · 2.50 / h" in form
    assert "2 of 2 GPUs free" in form
    assert '<option value="pytorch" selected>PyTorch ★</option>' in form
    assert 'data-image="python-local"><option value="v2">v2 (framework scikit-learn)' in form
    assert '<option value="container" disabled>' in form and "Kubernetes only" in form
    assert "资源规格" in form and "镜像" in form


def test_the_form_escapes_catalogue_text(catalog):
    evil = catalog.profiles[0].model_copy(update={"name": "<script>alert(1)</script>",
                                                  "description": "</script><b>"})
    form = render_form([ProfileView(evil, True)], [], {})
    assert "<script>alert(1)" not in form and "&lt;script&gt;alert(1)" in form


# -- the GPU allocator -----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path):
    return make_session_factory(f"sqlite:///{tmp_path / 'fermi.sqlite'}")


def test_gpus_are_handed_out_once_and_freed_on_release(db):
    gpus = GpuAllocator(db)
    first = gpus.allocate(server_holder("ann", ""), 1, [0, 1])
    second = gpus.allocate(job_holder("j1"), 1, [0, 1])
    assert sorted(first + second) == [0, 1]
    with pytest.raises(NoGpuFree) as busy:
        gpus.allocate(server_holder("bo", "gpu"), 1, [0, 1])
    assert isinstance(busy.value, Unavailable)
    assert busy.value.message.startswith("No GPU free: this needs 1 GPU, and 2 of the 2 GPUs")
    assert "(1 dev environment(s), 1 training job(s))" in busy.value.message
    assert gpus.release(server_holder("ann", "")) == first
    assert gpus.allocate(server_holder("bo", "gpu"), 1, [0, 1]) == first


def test_asking_again_for_the_same_holder_keeps_its_gpus(db):
    gpus = GpuAllocator(db)
    assert gpus.allocate("job:a", 2, [0, 1, 2]) == [0, 1]
    assert gpus.allocate("job:a", 2, [0, 1, 2]) == [0, 1]
    assert gpus.allocate("job:a", 1, [0, 1, 2]) == [0]
    assert gpus.holders() == {0: "job:a"}


def test_gpus_of_holders_that_died_are_reclaimed(db):
    dead = {4242}
    gpus = GpuAllocator(db, alive=lambda pid, started: pid not in dead)
    gpus.allocate("server:ann/", 1, [0])
    gpus.attach("server:ann/", 4242, 1.0)
    assert gpus.allocate("server:bo/", 1, [0]) == [0]  # ann's server died unseen
    clock = [dt.datetime(2030, 1, 1)]
    slow = GpuAllocator(db, claim_seconds=60, clock=lambda: clock[0])
    slow.release("server:bo/")
    slow.allocate("server:cy/", 1, [0])  # never started (no pid)
    with pytest.raises(NoGpuFree):
        slow.allocate("server:dee/", 1, [0])
    clock[0] += dt.timedelta(seconds=61)
    assert slow.allocate("server:dee/", 1, [0]) == [0]


def test_two_processes_allocating_at_once_never_share_a_gpu(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    allocators = [GpuAllocator(make_session_factory(url)) for _ in range(2)]  # hub, control plane
    won: list[tuple[str, list[int]]] = []
    lock = threading.Lock()

    def grab(index: int) -> None:
        for n in range(10):
            holder = f"job:{index}-{n}"
            try:
                devices = allocators[index % 2].allocate(holder, 1, [0, 1, 2])
            except NoGpuFree:
                continue
            with lock:
                won.append((holder, devices))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(d for _, devices in won for d in devices) == [0, 1, 2]
    with make_session_factory(url)() as session:
        rows = session.scalars(select(GpuAssignment)).all()
    assert sorted(r.device for r in rows) == [0, 1, 2]


def test_the_local_job_backend_reserves_from_the_same_allocator(db):
    backend = LocalJobBackend(gpu_inventory=["A100", "A100"])
    backend._gpus = GpuAllocator(db)
    spec = SimpleNamespace(gpu=2)
    GpuAllocator(db).allocate(server_holder("ann", ""), 1, [0, 1])  # a dev server holds one
    with pytest.raises(NoGpuFree):
        asyncio.run(backend.reserve("j1", spec))
    GpuAllocator(db).release(server_holder("ann", ""))
    asyncio.run(backend.reserve("j1", spec))
    assert backend.gpus.held_by(job_holder("j1")) == [0, 1]
    assert backend.availability(Catalog.model_validate(CATALOG).profiles[2], None) == (True, None)
    assert LocalJobBackend(gpu_inventory=[]).availability(
        Catalog.model_validate(CATALOG).profiles[2], None)[0] is False


class NoTracker:
    def __init__(self):
        self.runs = 0

    async def experiment_id(self, name):
        return "1"

    async def create_run(self, *args, **kwargs):
        self.runs += 1
        return {"run_id": f"run{self.runs}"}


class GpuBackend(FakeBackend):
    """A fake backend whose reservation of GPUs goes through a real allocator."""

    def __init__(self, allocator, **kwargs):
        super().__init__(has_gpu=True, **kwargs)
        self.allocator = allocator

    async def reserve(self, job_id, runtime):
        self.allocator.allocate(job_holder(job_id), runtime.gpu, [0])


def test_a_gpu_job_waits_queued_while_no_gpu_is_free_and_makes_no_run(tmp_path, db, catalog):
    store = CatalogStore(db)
    store.seed_if_empty(catalog)
    allocator = GpuAllocator(db)
    backend = GpuBackend(allocator)
    service = JobService(db, store, backend, tmp_path / "jobs")
    from tests.unit.test_job_service import make_notebook

    job = service.submit(Caller("ann"), CreateJob(notebook=make_notebook(), profile="gpu-1",
                                                  notebook_name="t.ipynb"))
    tracker = NoTracker()
    runner = JobRunner(db, store, backend, tracker, tmp_path / "jobs", tracking_uri="x")
    allocator.allocate(server_holder("bo", ""), 1, [0])
    assert asyncio.run(runner._start(job.id)) is False
    with db() as session:
        waiting = session.get(Job, job.id)
        assert (waiting.status, waiting.attempt, tracker.runs) == ("queued", 0, 0)
        assert waiting.reason.startswith("No GPU free")
    allocator.release(server_holder("bo", ""))

    async def start():
        started = await runner._start(job.id)
        for task in list(runner._watches.values()):
            await task
        return started

    assert asyncio.run(start()) is True
    assert tracker.runs == 1 and len(backend.launches) == 1


# -- the local spawner, one spawn at a time ---------------------------------------------------------


class User(SimpleNamespace):
    pass


def local_spawner(db_path, **traits):
    from jupyterhub.objects import Hub

    from fermi_spawner.local import FermiLocalSpawner

    user = User(name="ann", groups=[SimpleNamespace(name="staff")], admin=False,
                url="/user/ann/")
    return FermiLocalSpawner(user=user, hub=Hub(), platform_db_url=f"sqlite:///{db_path}",
                             gpu_inventory=["GPU 0", "GPU 1"], **traits)


@pytest.fixture
def platform_db(tmp_path, catalog):
    path = tmp_path / "fermi.sqlite"
    CatalogStore(make_session_factory(f"sqlite:///{path}")).seed_if_empty(catalog)
    return path


def test_each_spawn_is_rebuilt_from_scratch(platform_db):
    spawner = local_spawner(platform_db, local_environments={"pytorch": "/opt/torch/bin/python"})
    spawner.cmd = ["/usr/bin/python3", "-m", "jupyterhub.singleuser"]
    spawner.user_options = {"profile": "gpu-1", "image": "pytorch"}
    first = asyncio.run(spawner.load_user_options())
    assert (spawner.cpu_limit, spawner.mem_limit) == (8, 64 * 1024**3)
    assert spawner.cmd == ["/opt/torch/bin/python", "-m", "jupyterhub.singleuser"]
    assert first.profile.gpu == 1
    spawner.clear_state()
    spawner.user_options = {"profile": "cpu-small"}
    second = asyncio.run(spawner.load_user_options())
    assert (spawner.cpu_limit, spawner.mem_limit) == (1, 2 * 1024**3)
    assert spawner.cmd == ["/usr/bin/python3", "-m", "jupyterhub.singleuser"]
    assert spawner.fermi_devices == [] and second.notices == []
    assert spawner.user_options == {"profile": "cpu-small", "image": "python-local",
                                    "image_version": "v2"}


def test_a_spawn_refused_by_the_catalogue_is_the_hubs_http_error(platform_db):
    from tornado import web

    spawner = local_spawner(platform_db)
    spawner.handler = request(body=b'{"profile": "team-only"}')
    spawner.user_options = {"profile": "team-only"}
    with pytest.raises(web.HTTPError) as error:
        asyncio.run(spawner.load_user_options())
    assert error.value.status_code == 403
    assert "reserved for members of the group(s) team" in error.value.jupyterhub_message
    spawner.user.groups.append(SimpleNamespace(name="team"))
    assert asyncio.run(spawner.load_user_options()).profile.slug == "team-only"


def test_a_finished_run_is_billed_once_and_its_gpus_freed(platform_db):
    spawner = local_spawner(platform_db)
    spawner.user_options = {"profile": "gpu-1"}
    asyncio.run(spawner.load_user_options())
    spawner.fermi_devices = spawner.gpus.allocate(spawner.gpu_holder, 1, [0, 1])
    spawner.mark_running(spawner.fermi_devices)
    state = spawner.get_state()
    assert state["fermi"]["devices"] == [0] and state["fermi"]["idle_cull_minutes"] == 30
    restored = local_spawner(platform_db)  # the hub restarted
    restored.load_state(state)
    restored.clear_state()  # the hub found the server gone
    restored.clear_state()  # and cleared again on stop: still one record
    with make_session_factory(f"sqlite:///{platform_db}")() as session:
        records = session.scalars(select(UsageRecord)).all()
    assert [(r.kind, r.ref, r.profile, r.gpus, r.price_per_hour) for r in records] == [
        ("server", "ann/", "gpu-1", 1, 2.5)]
    assert records[0].cost == pytest.approx(records[0].seconds / 3600 * 2.5)
    assert restored.gpus.holders() == {}


def test_the_form_says_how_many_gpus_are_free(platform_db):
    spawner = local_spawner(platform_db)
    form = asyncio.run(spawner.render_options_form())
    assert "2 of 2 GPUs free now" in form
    assert "team-only" not in form  # ann is not in the team
    spawner.gpus.allocate("server:bo/", 2, [0, 1])
    form = asyncio.run(spawner.render_options_form())
    assert 'value="gpu-1" disabled' in form and "all GPUs of this machine are in use" in form


# -- per-profile idle culling --------------------------------------------------------------------


def test_each_server_is_culled_after_its_profiles_idle_minutes():
    timeouts = timeouts_from_profiles(CATALOG["profiles"])
    assert idle_limit_seconds(timeouts, {"profile": "gpu-1"}, 3600) == 30 * 60
    assert idle_limit_seconds(timeouts, {}, 3600) == 60 * 60  # the default profile
    assert idle_limit_seconds(timeouts, {"profile": "removed"}, 3600) == 60 * 60
    assert idle_limit_seconds(timeouts, {"profile": "team-only"}, 3600) == 15 * 60
    assert idle_limit_seconds(timeouts, {"profile": "cpu-large"}, 3600) is None  # 0: never
    assert idle_limit_seconds(None, {"profile": "gpu-1"}, 3600) == 3600
    assert idle_limit_seconds(({}, None), {"profile": "gpu-1"}, 3600) == 3600


def test_the_culler_reads_the_timeouts_the_catalogue_holds(platform_db):
    read = timeouts_reader(f"sqlite:///{platform_db}")
    assert read() == ({"cpu-small": 60, "cpu-large": 0, "gpu-1": 30, "team-only": 15},
                      "cpu-small")


def test_the_cull_arbiter_reads_the_catalogue_once_per_pass():
    reads = []
    now = [0.0]

    def read():
        reads.append(1)
        return timeouts_from_profiles(CATALOG["profiles"])

    arbiter = ProfileTimeouts(read, ttl=10, clock=lambda: now[0])
    server = {"user_options": {"profile": "gpu-1"}}
    minutes = dt.timedelta(minutes=1)
    assert arbiter(inactive=31 * minutes, inactive_limit=3600, server=server) is True
    assert arbiter(inactive=29 * minutes, inactive_limit=3600, server=server) is False
    assert arbiter(inactive=999 * minutes, inactive_limit=60,
                   server={"user_options": {"profile": "cpu-large"}}) is False
    assert len(reads) == 1
    now[0] = 11
    arbiter(inactive=minutes, inactive_limit=3600, server=server)
    assert len(reads) == 2
    broken = ProfileTimeouts(lambda: 1 / 0)
    assert broken(inactive=61 * minutes, inactive_limit=3600, server=server) is True
