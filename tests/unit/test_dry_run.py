"""Resolve and prepare a submission once: the real submission, its dry run
(``JobService.submit(dry_run=True)``), a schedule, and the offline Kubernetes render
(``fermi jobs submit --dry-run``) all take the same path (``jobs.service.check_submission`` then
``JobService.prepare``); a dry run is that path stopped before anything is written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from fermi_extension.backends.kubernetes.render import catalog_from, render_job
from fermi_extension.caller import Caller
from fermi_extension.db import AuditEvent, Job
from fermi_extension.errors import FermiError, Forbidden
from fermi_extension.jobs.models import CreateJob
from fermi_extension.jobs.schedules import CreateSchedule, ScheduleService
from fermi_extension.jobs.service import Prepared
from fermi_extension.quotas.service import QuotaLimits
from tests.platform import make_notebook

ANN = Caller("ann")
ROOT = Caller("root", admin=True)


def written(service) -> tuple[int, int, list]:
    with service.session_factory() as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
        audits = session.scalar(select(func.count()).select_from(AuditEvent))
    folders = sorted(service.jobs_dir.iterdir()) if service.jobs_dir.exists() else []
    return jobs, audits, folders


def test_a_dry_run_returns_what_the_submission_queues_and_writes_nothing(service):
    request = CreateJob(notebook=make_notebook(), parameters={"x": 3}, profile="cpu-large",
                        notebook_name="sub/train.ipynb", nodes=1)
    dry = service.submit(ANN, request, dry_run=True)
    assert isinstance(dry, Prepared)
    assert written(service) == (0, 0, [])
    assert (dry.name, dry.notebook_name, dry.parameters) == ("train", "train.ipynb", {"x": 3})
    real = service.submit(ANN, request)
    with service.session_factory() as session:
        job = session.get(Job, real.id)
        assert job.runtime == dry.spec.model_dump(mode="json")  # the same runtime, exactly
        assert (job.name, job.notebook_name, job.parameters) == (
            dry.name, dry.notebook_name, dry.parameters)


def notebook_file(folder):
    path = folder / "train.ipynb"
    path.write_text(json.dumps(make_notebook()))
    return path


@pytest.mark.parametrize("fields, phrase", [
    ({"parameters": {"epochs": 3}}, "Unknown parameter 'epochs'"),
    ({"image": "tensorflow-99"}, "Unknown image 'tensorflow-99'"),
    ({"profile": "huge"}, "Unknown profile 'huge'"),
    ({"image": "python-local", "image_version": "v0"}, "has no version 'v0'"),
])
def test_every_path_refuses_a_bad_submission_with_the_same_sentence(service, tmp_path, fields,
                                                                     phrase):
    request = CreateJob(notebook=make_notebook(), **fields)
    answers = []
    for path in (service.submit, lambda c, r: service.submit(c, r, dry_run=True),
                 service.prepare):
        with pytest.raises(FermiError) as refused:
            path(ANN, request)
        answers.append((refused.value.status, refused.value.message))
    schedules = ScheduleService(service.session_factory, service)
    with pytest.raises(FermiError) as refused:
        schedules.create(ANN, CreateSchedule(cron="0 3 * * *", notebook=make_notebook(), **fields))
    answers.append((refused.value.status, refused.value.message))
    if "image_version" not in fields:  # the offline render takes no version
        with pytest.raises(FermiError) as refused:
            render_job(notebook_file(tmp_path), fields.get("parameters", {}),
                       catalog=catalog_from(None), image=fields.get("image"),
                       profile=fields.get("profile"))
        answers.append((refused.value.status, refused.value.message))
    assert len(set(answers)) == 1, answers
    assert phrase in answers[0][1] and answers[0][0] == 400
    assert written(service)[0] == 0


def test_a_dry_run_is_refused_by_a_spent_quota_like_the_submission(service):
    service.quotas.put(ROOT, "user", "ann", QuotaLimits(monthly_spend=0))
    request = CreateJob(notebook=make_notebook())
    for dry_run in (True, False):
        with pytest.raises(Forbidden) as refused:
            service.submit(ANN, request, dry_run=dry_run)
        assert "spend this month is reached" in refused.value.message
    assert written(service)[0] == 0


def test_a_dry_run_refuses_what_this_platform_cannot_run(service, tmp_path):
    with pytest.raises(FermiError) as refused:
        service.submit(ANN, CreateJob(notebook=make_notebook(), profile="gpu-a100-1"), dry_run=True)
    assert refused.value.status == 422
    # the offline render is for a cluster that has GPUs: it does not ask this machine
    objects = render_job(notebook_file(tmp_path), {}, catalog=catalog_from(None), image=None,
                         profile="gpu-a100-1")
    assert any(o["kind"] == "Job" for o in objects)
