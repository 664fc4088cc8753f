"""Payloads of the models API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobLineage(BaseModel):
    id: str
    name: str
    owner: str
    notebook_name: str
    parameters: dict[str, Any]
    metrics: dict[str, float]
    image: str
    profile: str
    finished_at: dt.datetime | None
    notebook_url: str = Field(description="API path of the job's executed notebook")


class ModelVersionOut(BaseModel):
    version: str
    status: str
    created_at: dt.datetime
    run_id: str | None
    job: JobLineage | None = Field(None, description="the training job that registered it")


class ModelSummary(BaseModel):
    name: str
    owner: str
    groups: list[str]
    writer_groups: list[str] = Field(default_factory=list,
                                     description="groups whose jobs may add versions")
    latest_version: str | None
    updated_at: dt.datetime | None


class ListModelsResponse(BaseModel):
    models: list[ModelSummary]


class DescribeModel(ModelSummary):
    versions: list[ModelVersionOut]


class ShareModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[str] = Field(description="groups whose members may see and deploy the model")
    writer_groups: list[str] | None = Field(
        None, description="groups whose members' jobs may also add versions to it (default: "
                          "unchanged); a version lands only in a model its job's owner may write")
