"""Payloads of the deployments API. Field names follow KServe where one exists (the camelCase
KServe spelling is accepted as an alias: minReplicas, maxReplicas, scaleTarget)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEPLOYMENT_NAME = r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$"
Engine = Literal["auto", "sklearn", "mlflow", "vllm"]
MAX_REPLICAS = 16


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(description="model version the canary revision serves")
    traffic_percent: int = Field(ge=0, le=100, alias="trafficPercent")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="DNS-style: lowercase letters, digits and '-', ≤ 40 characters")
    model: str
    version: str
    profile: str | None = Field(None, description="catalogue profile (default: the default)")
    engine: Engine = "auto"
    min_replicas: int = Field(1, ge=1, le=MAX_REPLICAS, alias="minReplicas")
    max_replicas: int = Field(1, ge=1, le=MAX_REPLICAS, alias="maxReplicas")
    target_concurrency: float = Field(
        4, gt=0, le=1000, alias="scaleTarget",
        description="in-flight requests per replica the autoscaler aims at",
    )
    scale_down_delay_seconds: int = Field(30, ge=0, le=3600)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        import re

        if not re.fullmatch(DEPLOYMENT_NAME, value):
            raise ValueError(
                f"deployment name {value!r} is not allowed: use lowercase letters, digits and '-', "
                "starting with a letter, at most 40 characters (it becomes part of the URL)"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value):
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _bounds(self) -> "CreateDeployment":
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})"
            )
        return self


class UpdateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    min_replicas: int | None = Field(None, ge=1, le=MAX_REPLICAS, alias="minReplicas")
    max_replicas: int | None = Field(None, ge=1, le=MAX_REPLICAS, alias="maxReplicas")
    target_concurrency: float | None = Field(None, gt=0, le=1000, alias="scaleTarget")
    scale_down_delay_seconds: int | None = Field(None, ge=0, le=3600)
    canary: Canary | None = Field(None, description="start or move a canary revision")
    action: Literal["promote", "rollback", "stop", "start", "rotate-key"] | None = None

    @field_validator("canary", mode="before")
    @classmethod
    def _canary_version(cls, value):
        if isinstance(value, dict) and isinstance(value.get("version"), int):
            value = {**value, "version": str(value["version"])}
        return value


class ReplicaOut(BaseModel):
    id: str
    revision: str
    state: str
    started_at: dt.datetime
    ready_at: dt.datetime | None
    in_flight: int = 0
    requests: int = 0


class RevisionOut(BaseModel):
    name: str
    version: str
    traffic_percent: int
    role: Literal["stable", "canary", "retired"]
    ready_replicas: int


class EventOut(BaseModel):
    at: dt.datetime
    kind: str
    message: str
    replicas: int | None = None


class ReplicaCount(BaseModel):
    at: dt.datetime
    replicas: int


class TrafficOut(BaseModel):
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    latency_ms: dict[str, float] = Field(default_factory=dict)


class DescribeDeployment(BaseModel):
    name: str
    owner: str
    model: str
    version: str = Field(description="the stable revision's model version")
    engine: str
    profile: str
    status: Literal["pending", "ready", "failed", "stopped"]
    reason: str | None
    url: str = Field(description="absolute URL; Open Inference Protocol V2 under it")
    min_replicas: int
    max_replicas: int
    target_concurrency: float
    scale_down_delay_seconds: int
    desired_replicas: int
    replicas: list[ReplicaOut]
    revisions: list[RevisionOut]
    traffic: TrafficOut
    events: list[EventOut] | None = None
    replica_history: list[ReplicaCount] | None = Field(
        None, description="replica count over time: each scaling decision")
    created_at: dt.datetime
    api_key: str | None = Field(None, description="shown once, at creation or key rotation")


class ListDeploymentsResponse(BaseModel):
    deployments: list[DescribeDeployment]
