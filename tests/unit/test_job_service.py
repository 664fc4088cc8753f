"""The jobs API's logic: submit, read, list, cancel and retry, scoped to the caller."""

from __future__ import annotations

import json

import nbformat
import pytest
from sqlalchemy import func, select

from fermi_extension.db import AuditEvent, Job
from fermi_extension.errors import Conflict, InvalidInput, NotFound, Unprocessable, http_status
from fermi_extension.jobs.models import CreateJob
from fermi_extension.caller import Caller

ALICE = Caller("alice")
BOB = Caller("bob")
ADMIN = Caller("root", admin=True)


def make_notebook(parameters: str = "epochs = 10  # passes\nlr = 0.1\n") -> dict:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(epochs * lr)")]
    return json.loads(nbformat.writes(nb))


def request(**fields) -> CreateJob:
    fields.setdefault("notebook", make_notebook())
    fields.setdefault("notebook_name", "train.ipynb")
    return CreateJob(**fields)


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def assert_nothing_written(session_factory, jobs_dir):
    assert count(session_factory, Job) == 0
    assert count(session_factory, AuditEvent) == 0
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


def set_status(session_factory, job_id: str, status: str) -> None:
    """What the runner does when an attempt starts or ends."""
    with session_factory() as session:
        session.get(Job, job_id).status = status
        session.commit()


# -- submit -------------------------------------------------------------------------------


def test_submit_queues_the_job_on_the_default_image_and_profile(service, wakes):
    job = service.submit(ALICE, request(parameters={"epochs": 3}))
    assert job.status == "queued"
    assert job.owner == "alice"
    assert (job.image, job.profile) == ("python-local", "cpu-small")
    assert job.name == "train"
    assert job.parameters == {"epochs": 3}
    assert wakes.count == 1


def test_submit_writes_the_notebook_snapshot_into_the_job_folder(service, jobs_dir):
    notebook = make_notebook()
    job = service.submit(ALICE, request(notebook=notebook))
    snapshot = jobs_dir / job.id / "input.ipynb"
    assert json.loads(snapshot.read_text()) == notebook


def test_submit_is_recorded_in_the_audit_log(service, session_factory):
    job = service.submit(ALICE, request(parameters={"lr": 0.5}, profile="cpu-large"))
    with session_factory() as session:
        events = session.scalars(select(AuditEvent)).all()
    assert [(e.actor, e.action, e.target_kind, e.target_id) for e in events] == [
        ("alice", "submit", "job", job.id)
    ]
    assert events[0].after["profile"] == "cpu-large"
    assert events[0].after["parameters"] == {"lr": 0.5}


def test_submitted_job_records_its_runtime_from_the_catalogue(service, session_factory, backend):
    backend.has_gpu = True
    job = service.submit(ALICE, request(image="pytorch", profile="gpu-a100-1"))
    with session_factory() as session:
        row = session.get(Job, job.id)
        assert row.pool == "gpu-a100"
        assert row.runtime["gpu"] == 1
        assert row.runtime["price_per_hour"] == 2.5


def test_notebook_name_with_a_path_is_reduced_to_its_file_name(service):
    job = service.submit(ALICE, request(notebook_name="../../etc/evil.ipynb", name="x"))
    assert job.notebook_name == "evil.ipynb"


def test_non_ascii_job_name_is_refused_before_the_request_reaches_the_service():
    with pytest.raises(ValueError, match="ASCII"):
        request(name="训练")


def test_non_ascii_job_name_is_invalid_input(service):
    bad = CreateJob.model_construct(**request().model_dump() | {"name": "训练"})
    with pytest.raises(InvalidInput):
        service.submit(ALICE, bad)


def test_non_ascii_job_name_writes_nothing(service, session_factory, jobs_dir):
    bad = CreateJob.model_construct(**request().model_dump() | {"name": "训练"})
    with pytest.raises(InvalidInput):
        service.submit(ALICE, bad)
    assert_nothing_written(session_factory, jobs_dir)


def test_non_ascii_notebook_file_name_gives_an_ascii_job_name(service):
    job = service.submit(ALICE, request(notebook_name="训练.ipynb"))
    assert job.name == "notebook"
    assert job.notebook_name == "训练.ipynb"


@pytest.mark.parametrize(
    ("parameters", "named"),
    [({"epoch": 3}, "'epoch'"), ({"epochs": "ten"}, "'epochs'"), ({"lr": True}, "'lr'")],
)
def test_bad_parameters_are_invalid_input_and_write_nothing(
    service, session_factory, jobs_dir, parameters, named
):
    with pytest.raises(InvalidInput) as caught:
        service.submit(ALICE, request(parameters=parameters))
    assert named in caught.value.message
    assert_nothing_written(session_factory, jobs_dir)


def test_invalid_notebook_is_invalid_input_and_writes_nothing(service, session_factory, jobs_dir):
    notebook = make_notebook()
    del notebook["metadata"]["kernelspec"]
    with pytest.raises(InvalidInput, match="kernel"):
        service.submit(ALICE, request(notebook=notebook))
    assert_nothing_written(session_factory, jobs_dir)


def test_unknown_profile_is_invalid_input_and_writes_nothing(service, session_factory, jobs_dir):
    with pytest.raises(InvalidInput, match="cpu-small"):
        service.submit(ALICE, request(profile="cpu-tiny"))
    assert_nothing_written(session_factory, jobs_dir)


def test_gpu_profile_where_the_backend_has_no_gpu_is_unprocessable(
    service, session_factory, jobs_dir, backend
):
    with pytest.raises(Unprocessable) as caught:
        service.submit(ALICE, request(profile="gpu-a100-1"))
    assert http_status(caught.value) == 422
    assert caught.value.message == backend.no_gpu_reason
    assert_nothing_written(session_factory, jobs_dir)


def test_gpu_profile_where_the_backend_has_a_gpu_is_queued(service, backend):
    backend.has_gpu = True
    assert service.submit(ALICE, request(profile="gpu-a100-1")).status == "queued"


# -- reads and ownership ------------------------------------------------------------------


def test_owner_gets_the_job_with_its_parameter_spec_and_queue_position(service):
    first = service.submit(ALICE, request())
    second = service.submit(ALICE, request())
    described = service.get(ALICE, second.id)
    assert described.id == second.id
    assert [p.name for p in described.parameter_spec] == ["epochs", "lr"]
    assert [e.kind for e in described.events] == ["queued"]
    assert service.get(ALICE, first.id).queue_position == 1
    assert described.queue_position == 2


def test_higher_priority_job_is_ahead_in_the_queue(service):
    low = service.submit(ALICE, request())
    high = service.submit(ALICE, request(priority=5))
    assert service.get(ALICE, high.id).queue_position == 1
    assert service.get(ALICE, low.id).queue_position == 2


def test_another_users_job_is_not_found_everywhere(service, session_factory):
    job = service.submit(ALICE, request())
    with pytest.raises(NotFound):
        service.get(BOB, job.id)
    with pytest.raises(NotFound):
        service.logs(BOB, job.id)
    with pytest.raises(NotFound):
        service.output(BOB, job.id)
    with pytest.raises(NotFound):
        service.record_cancel(BOB, job.id)
    set_status(session_factory, job.id, "failed")
    with pytest.raises(NotFound):
        service.retry(BOB, job.id)
    assert service.get(ALICE, job.id).status == "failed"


def test_missing_job_is_not_found(service):
    with pytest.raises(NotFound, match="nope"):
        service.get(ALICE, "nope")


def test_admin_sees_and_cancels_anyones_job(service):
    job = service.submit(ALICE, request())
    assert service.get(ADMIN, job.id).owner == "alice"
    described, _ = service.record_cancel(ADMIN, job.id)
    assert described.status == "cancelled"
    assert "root" in described.reason


def test_logs_are_read_from_an_offset(service, jobs_dir):
    job = service.submit(ALICE, request())
    (jobs_dir / job.id / "job.log").write_text("hello\nworld\n")
    first = service.logs(ALICE, job.id)
    assert first.text == "hello\nworld\n"
    assert first.complete is False
    more = service.logs(ALICE, job.id, offset=first.next_offset)
    assert more.text == ""


def test_output_before_the_job_ran_is_a_conflict(service):
    job = service.submit(ALICE, request())
    with pytest.raises(Conflict):
        service.output(ALICE, job.id)


# -- listing ------------------------------------------------------------------------------


def test_list_shows_only_the_callers_jobs_newest_first(service):
    mine = [service.submit(ALICE, request()).id for _ in range(3)]
    service.submit(BOB, request())
    jobs, total = service.list(ALICE)
    assert total == 3
    assert [j.id for j in jobs] == list(reversed(mine))
    assert all(j.owner == "alice" for j in jobs)


def test_admin_lists_everyone_and_can_filter_by_owner(service):
    service.submit(ALICE, request())
    service.submit(BOB, request())
    assert service.list(ADMIN)[1] == 2
    jobs, total = service.list(ADMIN, owner="bob")
    assert total == 1 and jobs[0].owner == "bob"


def test_list_is_paginated_with_a_total(service):
    ids = {service.submit(ALICE, request()).id for _ in range(5)}
    page1, total1 = service.list(ALICE, limit=2, offset=0)
    page2, total2 = service.list(ALICE, limit=2, offset=2)
    page3, total3 = service.list(ALICE, limit=2, offset=4)
    assert (total1, total2, total3) == (5, 5, 5)
    assert [len(p) for p in (page1, page2, page3)] == [2, 2, 1]
    assert {j.id for j in page1 + page2 + page3} == ids


def test_list_filters_by_status(service):
    kept = service.submit(ALICE, request())
    cancelled = service.submit(ALICE, request())
    service.record_cancel(ALICE, cancelled.id)
    jobs, total = service.list(ALICE, status="cancelled")
    assert (total, [j.id for j in jobs]) == (1, [cancelled.id])
    jobs, total = service.list(ALICE, status="queued")
    assert (total, [j.id for j in jobs]) == (1, [kept.id])
    assert service.list(ALICE, status="running") == ([], 0)


def test_unknown_status_filter_is_invalid_input_listing_the_statuses(service):
    with pytest.raises(InvalidInput) as caught:
        service.list(ALICE, status="done")
    assert "'done'" in caught.value.message
    assert "succeeded" in caught.value.message


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (501, 0), (10, -1)])
def test_out_of_range_paging_is_invalid_input(service, limit, offset):
    with pytest.raises(InvalidInput):
        service.list(ALICE, limit=limit, offset=offset)


# -- cancel and retry ---------------------------------------------------------------------


def test_cancel_a_queued_job(service, session_factory, wakes):
    job = service.submit(ALICE, request())
    described, handle = service.record_cancel(ALICE, job.id)
    assert described.status == "cancelled"
    assert described.finished_at is not None
    assert handle is None  # nothing runs yet, so there is nothing to stop
    assert service.get(ALICE, job.id).status == "cancelled"
    assert wakes.count == 2
    with session_factory() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["submit", "cancel"]


def test_cancel_a_running_job_returns_its_attempt_to_stop(service, session_factory):
    job = service.submit(ALICE, request())
    with session_factory() as session:
        row = session.get(Job, job.id)
        row.status, row.pid, row.pid_started = "running", 4242, 123.5
        session.commit()
    described, handle = service.record_cancel(ALICE, job.id)
    assert described.status == "cancelled"
    assert (handle.pid, handle.started) == (4242, 123.5)


def test_cancel_twice_is_a_conflict(service):
    job = service.submit(ALICE, request())
    service.record_cancel(ALICE, job.id)
    with pytest.raises(Conflict) as caught:
        service.record_cancel(ALICE, job.id)
    assert http_status(caught.value) == 409
    assert "cancelled" in caught.value.message


@pytest.mark.parametrize("status", ["queued", "running"])
def test_retry_of_a_job_that_has_not_ended_is_a_conflict(service, session_factory, status):
    job = service.submit(ALICE, request())
    set_status(session_factory, job.id, status)
    with pytest.raises(Conflict, match=status):
        service.retry(ALICE, job.id)
    assert count(session_factory, Job) == 1


def test_retry_of_an_ended_job_is_a_new_job_from_the_same_snapshot(service, jobs_dir,
                                                                    session_factory):
    old = service.submit(ALICE, request(parameters={"epochs": 2}, profile="cpu-large"))
    set_status(session_factory, old.id, "failed")
    new = service.retry(ALICE, old.id)
    assert new.id != old.id
    assert new.retry_of == old.id
    assert new.status == "queued"
    assert (new.parameters, new.profile, new.owner) == ({"epochs": 2}, "cpu-large", "alice")
    assert (jobs_dir / new.id / "input.ipynb").read_text() == \
        (jobs_dir / old.id / "input.ipynb").read_text()


def test_admin_retry_keeps_the_owner_and_audits_the_admin(service, session_factory):
    old = service.submit(ALICE, request())
    set_status(session_factory, old.id, "succeeded")
    new = service.retry(ADMIN, old.id)
    assert new.owner == "alice"
    with session_factory() as session:
        audited = session.scalars(
            select(AuditEvent.actor).where(AuditEvent.target_id == new.id)
        ).all()
    assert "root" in audited


def test_an_image_version_is_pinned_or_refused_with_the_choices(service, session_factory):
    job = service.submit(ALICE, request(image="pytorch", image_version="0.1.0"))
    with session_factory() as session:
        assert session.get(Job, job.id).runtime["image_version"] == "0.1.0"
    with pytest.raises(InvalidInput, match="no version '9.9'; choose one of"):
        service.submit(ALICE, request(image="pytorch", image_version="9.9"))


def test_distributed_training_is_refused_where_jobs_run_on_one_node(service, session_factory):
    with pytest.raises(Unprocessable, match="needs the Kubernetes backend"):
        service.submit(ALICE, request(nodes=2))
    assert count(session_factory, Job) == 0
    service.backend.max_nodes = 4  # a backend that spans nodes gets the ranks in the spec
    job = service.submit(ALICE, request(nodes=4))
    with session_factory() as session:
        assert session.get(Job, job.id).runtime["nodes"] == 4
