"""Payloads of the jobs API. The OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .parameters import Parameter

JOB_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def check_job_name(value: str) -> str:
    import re

    if not re.fullmatch(JOB_NAME, value):
        raise ValueError(
            f"job name {value!r} is not allowed: use 1–63 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it names the job's processes, runs and files)"
        )
    return value


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notebook: dict[str, Any] | str = Field(description="the notebook to run, as nbformat JSON")
    name: str | None = Field(None, description="defaults to the notebook's name")
    notebook_name: str | None = Field(None, description="file name shown for the snapshot")
    parameters: dict[str, Any] = Field(default_factory=dict)
    image: str | None = Field(None, description="catalogue image slug (default: the first)")
    image_version: str | None = Field(None, description="a version (tag) of the image "
                                      "(default: its newest)")
    profile: str | None = Field(None, description="catalogue profile slug (default: the default)")
    priority: int = Field(0, ge=-100, le=100, description="higher runs first")
    timeout_seconds: int | None = Field(None, gt=0, le=30 * 24 * 3600)
    max_retries: int = Field(
        1, ge=0, le=5, description="automatic retries when the job is lost to a crash"
    )
    nodes: int = Field(1, ge=1, le=64, description="distributed training: the notebook runs on "
                       "this many nodes at once (torchrun-style ranks; the Kubernetes backend)")
    datasets: list[str] = Field(
        default_factory=list, max_length=20,
        description="datasets to attach, `name` (latest version) or `name:version`; each is at "
                    "datasets/NAME in the job's folder and its location in $FERMI_DATASET_NAME",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_job_name(value)


class JobProgress(BaseModel):
    cells_total: int | None = None
    cells_done: int | None = None
    current_cell: int | None = None


class JobEventOut(BaseModel):
    at: dt.datetime
    kind: str
    message: str


class RegisteredVersion(BaseModel):
    name: str
    version: str


class DescribeJob(BaseModel):
    id: str
    name: str
    owner: str
    status: Status
    reason: str | None = None
    priority: int
    image: str
    profile: str
    notebook_name: str
    parameters: dict[str, Any]
    timeout_seconds: int | None
    attempt: int
    max_retries: int
    retry_of: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_seconds: float | None
    progress: JobProgress
    metrics: dict[str, float]
    models: list[RegisteredVersion] = Field(
        default_factory=list, description="model versions this job registered"
    )
    tracking_run_id: str | None
    queue_position: int | None = None
    events: list[JobEventOut] | None = None
    parameter_spec: list[Parameter] | None = None


class ListJobsResponse(BaseModel):
    jobs: list[DescribeJob]
    total: int
    limit: int
    offset: int


class JobLogs(BaseModel):
    text: str
    offset: int
    next_offset: int
    complete: bool = Field(description="the job has ended: no more log will come")
