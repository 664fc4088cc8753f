"""Training jobs in containers, on the real engine: from the pinned image, within the profile's
limits, out-of-memory kills told apart, containers re-adopted across a control-plane restart and
removed when nothing owns them."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from fermi_extension.containers.runtime import LABEL, platform_id

from ..platform import make_notebook
from ..test_restart import platform_processes, wait_until

pytestmark = pytest.mark.hub


def job_containers(engine_client, platform, job_id: str) -> list:
    """The job's container: labelled with the job when made for it, or a warm one it took
    (named in the job's row, as the platform re-finds it after a restart)."""
    with sqlite3.connect(platform.data / "fermi.sqlite") as db:
        row = db.execute("SELECT handle_name FROM jobs WHERE id = ?", (job_id,)).fetchone()
    named = engine_client.containers.list(all=True, filters={"name": row[0]}) \
        if row and row[0] else []
    labelled = engine_client.containers.list(all=True, filters={"label": [
        f"{LABEL}.job={job_id}", f"{LABEL}.platform={platform_id(str(platform.data))}"]})
    return list({c.id: c for c in [*named, *labelled]}.values())


def small_profile(admin, slug: str, memory: str) -> None:
    response = admin.api("POST", "catalog/profiles", json={
        "slug": slug, "name": f"Test {memory}", "cpu": 0.5, "memory": memory, "pool": "cpu"})
    assert response.status_code in (201, 409), response.text


def test_a_job_runs_in_its_own_container_from_the_pinned_image_within_its_profile(
        container_platform, engine_client, official_image):
    alice = container_platform.user("alice-c1")
    body = ("import os, json, time\n"
            "facts = {'pid1': open('/proc/1/cmdline').read(), 'pids': len([p for p in "
            "os.listdir('/proc') if p.isdigit()]), 'data_dir': os.path.exists(%r), "
            "'root': sorted(os.listdir('/'))}\n"
            "json.dump(facts, open('facts.json', 'w'))\n"
            "time.sleep(3)" % str(container_platform.data))
    job = alice.submit(make_notebook(body), profile="cpu-small")
    alice.wait(job["id"], statuses=("running",))
    wait_until(lambda: job_containers(engine_client, container_platform, job["id"]),
               what="the job's container")
    container = job_containers(engine_client, container_platform, job["id"])[0]
    config = container.attrs["HostConfig"]
    # made from exactly the image the catalogue pins
    assert container.attrs["Config"]["Image"] == official_image.reference
    assert container.image.id == engine_client.images.get(official_image.reference).id
    assert config["Memory"] == 2 * 2**30  # cpu-small: 2Gi
    assert config["MemorySwap"] == config["Memory"]  # no swap past the limit
    assert config["NanoCpus"] == 1_000_000_000 or config.get("CpuQuota") == 100000
    assert config["PidsLimit"] == 1024
    assert "CAP_SYS_ADMIN" not in (container.attrs.get("EffectiveCaps") or [])
    done = alice.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    facts = json.loads((container_platform.data / "jobs" / job["id"] / "work" / "facts.json")
                       .read_text())
    assert "sleep" not in facts["pid1"] and facts["pids"] < 20  # a PID namespace of its own
    assert facts["data_dir"] is False  # the platform's data dir is not in the container
    # the container is removed once its outcome is read
    wait_until(lambda: not job_containers(engine_client, container_platform, job["id"]),
               what="the job's container to be removed")


def test_a_job_over_its_memory_fails_saying_so_and_naming_a_larger_profile(
        container_platform):
    admin = container_platform.admin
    small_profile(admin, "cpu-tiny", "256Mi")
    alice = container_platform.user("alice-c2")
    job = alice.submit(make_notebook("x = bytearray(700 * 2**20)\nfor i in range(0, len(x), 4096):"
                                     "\n    x[i] = 1"), profile="cpu-tiny")
    done = alice.wait(job["id"], timeout=180)
    assert done["status"] == "failed", done
    assert "exceeded the 256Mi memory of profile cpu-tiny" in done["reason"], done["reason"]
    assert "; pick " in done["reason"], done["reason"]  # a profile with more memory


def test_a_restarted_control_plane_readopts_the_running_job_container(
        container_platform, engine_client):
    alice = container_platform.user("alice-c3")
    # the job runs until the test lets it go, however slow the restart is
    job = alice.submit(make_notebook("import os, time\nwhile not os.path.exists('go'):\n"
                                     "    time.sleep(0.1)"))
    alice.wait(job["id"], statuses=("running",))
    wait_until(lambda: job_containers(engine_client, container_platform, job["id"]),
               what="the job's container")
    first = job_containers(engine_client, container_platform, job["id"])[0].id
    old = platform_processes(container_platform)["control plane"]
    old.send_signal(signal.SIGKILL)
    wait_until(lambda: getattr(platform_processes(container_platform).get("control plane"),
                               "pid", old.pid) != old.pid, what="the control plane's restart")
    wait_until(lambda: alice.api("GET", f"jobs/{job['id']}").status_code == 200,
               what="the new control plane to answer")
    assert [c.id for c in job_containers(engine_client, container_platform, job["id"])] == [first]
    (container_platform.data / "jobs" / job["id"] / "work" / "go").write_text("")
    done = alice.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1  # re-adopted, not run again


def test_a_job_container_no_job_owns_is_removed_at_start(container_platform, engine_client,
                                                         official_image):
    orphan = engine_client.containers.create(
        official_image.reference, ["sleep", "600"], name=f"fermi-job-orphan-{time.time_ns()}",
        labels={f"{LABEL}.kind": "job", f"{LABEL}.job": "orphan",
                f"{LABEL}.platform": platform_id(str(container_platform.data))})
    orphan.start()
    old = platform_processes(container_platform)["control plane"]
    old.send_signal(signal.SIGKILL)
    wait_until(lambda: getattr(platform_processes(container_platform).get("control plane"),
                               "pid", old.pid) != old.pid, what="the control plane's restart")
    wait_until(lambda: not engine_client.containers.list(all=True, filters={"id": orphan.id}),
               timeout=90, what="the orphan container to be removed")
    wait_until(lambda: container_platform.admin.api("GET", "health").status_code == 200,
               what="the new control plane to answer")


def warm_containers(engine_client, platform) -> list:
    return engine_client.containers.list(filters={"label": [
        f"{LABEL}.kind=warm", f"{LABEL}.platform={platform_id(str(platform.data))}"]})


def test_cpu_jobs_take_a_warm_container_that_serves_one_job_and_is_replaced(
        container_platform, engine_client):
    alice = container_platform.user("alice-c5")
    wait_until(lambda: warm_containers(engine_client, container_platform), timeout=120,
               what="a warm container for the default image and profile")
    first = alice.submit(make_notebook(
        "import os, pathlib\npathlib.Path('/tmp/left-by-first').write_text('x')\n"
        "print('env', os.environ.get('FERMI_JOB_ID'))"))
    done = alice.wait(first["id"], timeout=120)
    assert done["status"] == "succeeded", done
    lineage = json.loads((container_platform.data / "jobs" / first["id"] / "lineage.json")
                         .read_text())
    assert lineage["warm_kernel"] is True  # it ran on a kernel started before it came
    # the job's own environment reached the warm kernel before its first cell
    log = (container_platform.data / "jobs" / first["id"] / "job.log").read_text()
    assert f"env {first['id']}" in log, log
    wait_until(lambda: warm_containers(engine_client, container_platform), timeout=120,
               what="the pool to be refilled")
    second = alice.submit(make_notebook(
        "import os\nassert not os.path.exists('/tmp/left-by-first'), 'state carried over'"))
    done = alice.wait(second["id"], timeout=120)
    assert done["status"] == "succeeded", done  # a fresh container: nothing of the first job


def test_a_job_in_a_container_logs_metrics_and_registers_its_model_through_the_platform(
        container_platform):
    alice = container_platform.user("alice-c6")
    body = ("import mlflow, os\n"
            "assert '127.0.0.1' not in os.environ['MLFLOW_TRACKING_URI']  # via the platform\n"
            "mlflow.log_metric('accuracy', 0.93)\n"
            "from sklearn.linear_model import LogisticRegression\n"
            "model = LogisticRegression().fit([[0], [1], [2], [3]], [0, 0, 1, 1])\n"
            "mlflow.sklearn.log_model(model, name='model', registered_model_name="
            "'alice-c6-model')")
    job = alice.submit(make_notebook(body))
    done = alice.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert done["metrics"].get("accuracy") == pytest.approx(0.93), done["metrics"]
    assert [m["name"] for m in done["models"]] == ["alice-c6-model"], done["models"]
