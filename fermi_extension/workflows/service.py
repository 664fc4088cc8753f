"""Workflows (工作流编排): "train → evaluate → promote if a metric clears a bar", declared once.

A workflow is a list of steps run in order, each a **job** (a notebook, as a submission) or a
**promote** (deploy the model a job step registered, if a metric clears a bar). A job step's
parameters may name what an earlier step produced:

    "${train.model.name}", "${train.model.version}", "${evaluate.metrics.accuracy}"

Each ``POST workflows/{id}/runs`` starts a run; the control plane advances it (``WorkflowEngine``)
from the database, so a run survives a restart. A run stops at the first step that fails, with
the step's reason; a promote whose bar is not cleared ends the run without deploying and says so.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..caller import Caller, audit, owned, visible
from ..db import Job, Workflow, WorkflowRun, utcnow
from ..deployments.models import Canary, CreateDeployment, UpdateDeployment
from ..errors import FermiError, InvalidInput, NotFound
from ..jobs.models import CreateJob

log = logging.getLogger("fermi.workflows")

REFERENCE = re.compile(r"^\$\{(\w[\w-]*)\.(model\.name|model\.version|metrics\.[\w.-]+)\}$")
OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
STEP_NAME = r"^[a-z][a-z0-9-]{0,30}$"


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="STEP.METRIC, e.g. evaluate.accuracy")
    op: Literal[">=", ">", "<=", "<"] = ">="
    value: float


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_from: str = Field(description="the job step whose registered model is deployed")
    when: Bar | None = Field(None, description="deploy only if this holds")
    deployment: str = Field(description="created on the first promotion, updated afterwards")
    profile: str | None = None
    min_replicas: int = Field(1, ge=1, le=20)
    max_replicas: int = Field(1, ge=1, le=20)


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    job: CreateJob | None = None
    promote: Promote | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(STEP_NAME, value):
            raise ValueError(f"step name {value!r}: lowercase letters, digits and '-', "
                             "starting with a letter")
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.job is None) == (self.promote is None):
            raise ValueError(f"step {self.name!r} must have exactly one of `job` or `promote`")
        return self


class CreateWorkflow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    steps: list[Step] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _references(self):
        seen: dict[str, Step] = {}
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"two steps are named {step.name!r}")
            for ref in references(step):
                if ref not in seen or seen[ref].job is None:
                    raise ValueError(f"step {step.name!r} refers to {ref!r}, which is not an "
                                     "earlier job step")
            seen[step.name] = step
        return self


class StepState(BaseModel):
    name: str
    status: str = "pending"  # pending | running | succeeded | failed | skipped
    job_id: str | None = None
    deployment: str | None = None
    reason: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    model: dict | None = None


class DescribeRun(BaseModel):
    id: str
    workflow: str
    status: str  # running | succeeded | failed
    reason: str | None
    steps: list[StepState]
    started_at: Any
    finished_at: Any


class DescribeWorkflow(BaseModel):
    id: str
    name: str
    owner: str
    steps: list[dict]
    runs: list[DescribeRun] = Field(default_factory=list)


class WorkflowList(BaseModel):
    workflows: list[DescribeWorkflow]


def references(step: Step) -> set[str]:
    found = set()
    if step.job is not None:
        for value in step.job.parameters.values():
            if isinstance(value, str) and (match := REFERENCE.match(value)):
                found.add(match.group(1))
    if step.promote is not None:
        found.add(step.promote.model_from)
        if step.promote.when:
            found.add(step.promote.when.metric.split(".", 1)[0])
    return found


def lookup(states: dict[str, StepState], step: str, path: str) -> Any:
    state = states[step]
    if path == "model.name" or path == "model.version":
        if not state.model:
            raise FermiError(f"step {step!r} registered no model")
        return state.model[path.split(".")[1]]
    metric = path.split(".", 1)[1]
    if metric not in state.metrics:
        raise FermiError(f"step {step!r} logged no metric {metric!r} "
                         f"(it has: {', '.join(state.metrics) or 'none'})")
    return state.metrics[metric]


def substitute(parameters: dict, states: dict[str, StepState]) -> dict:
    out = {}
    for key, value in parameters.items():
        match = REFERENCE.match(value) if isinstance(value, str) else None
        out[key] = lookup(states, match.group(1), match.group(2)) if match else value
    return out


def describe_run(run: WorkflowRun) -> DescribeRun:
    return DescribeRun(id=run.id, workflow=run.workflow_id, status=run.status, reason=run.reason,
                       steps=[StepState.model_validate(s) for s in run.steps],
                       started_at=run.started_at, finished_at=run.finished_at)


class WorkflowService:
    def __init__(self, session_factory: sessionmaker, jobs, deployments):
        self.session_factory = session_factory
        self.jobs = jobs
        self.deployments = deployments
        self.changed = asyncio.Event()

    def create(self, caller: Caller, request: CreateWorkflow) -> DescribeWorkflow:
        for step in request.steps:  # each job is checked as a submission, references aside
            if step.job is not None:
                literal = {k: v for k, v in step.job.parameters.items()
                           if not (isinstance(v, str) and REFERENCE.match(v))}
                try:
                    self.jobs.prepare(caller, step.job.model_copy(update={"parameters": literal}))
                except FermiError as error:
                    raise type(error)(f"Step {step.name!r}: {error.message}") from None
        with self.session_factory() as session:
            row = Workflow(name=request.name, owner=caller.name,
                           owner_groups=list(caller.groups),
                           steps=[s.model_dump(mode="json", exclude_none=True) for s in request.steps])
            session.add(row)
            session.flush()
            audit(session, caller, "create", "workflow", row.id,
                  after={"name": row.name, "steps": [s.name for s in request.steps]})
            session.commit()
            return DescribeWorkflow(id=row.id, name=row.name, owner=row.owner,
                                    steps=_summaries(row.steps))

    def _visible(self, session, caller: Caller, workflow_id: str) -> Workflow:
        return owned(session, Workflow, workflow_id, caller, "workflow")

    def list(self, caller: Caller) -> WorkflowList:
        query = visible(select(Workflow).order_by(Workflow.created_at.desc()), Workflow.owner, caller)
        with self.session_factory() as session:
            return WorkflowList(workflows=[self._describe(session, w) for w in session.scalars(query)])

    def get(self, caller: Caller, workflow_id: str) -> DescribeWorkflow:
        with self.session_factory() as session:
            return self._describe(session, self._visible(session, caller, workflow_id))

    def _describe(self, session, row: Workflow) -> DescribeWorkflow:
        runs = session.scalars(select(WorkflowRun).where(WorkflowRun.workflow_id == row.id)
                               .order_by(WorkflowRun.started_at.desc()).limit(20))
        return DescribeWorkflow(id=row.id, name=row.name, owner=row.owner,
                                steps=_summaries(row.steps), runs=[describe_run(r) for r in runs])

    def delete(self, caller: Caller, workflow_id: str) -> None:
        with self.session_factory() as session:
            row = self._visible(session, caller, workflow_id)
            if session.scalar(select(WorkflowRun.id).where(
                    WorkflowRun.workflow_id == row.id, WorkflowRun.status == "running")):
                raise InvalidInput("A run of this workflow is going on; wait for it to end.")
            for run in session.scalars(select(WorkflowRun).where(WorkflowRun.workflow_id == row.id)):
                session.delete(run)
            audit(session, caller, "delete", "workflow", row.id, before={"name": row.name})
            session.delete(row)
            session.commit()

    def start_run(self, caller: Caller, workflow_id: str) -> DescribeRun:
        with self.session_factory() as session:
            row = self._visible(session, caller, workflow_id)
            run = WorkflowRun(workflow_id=row.id, owner=row.owner, status="running",
                              steps=[StepState(name=s["name"]).model_dump() for s in row.steps])
            session.add(run)
            session.flush()
            audit(session, caller, "run", "workflow", row.id, after={"run": run.id})
            session.commit()
            described = describe_run(run)
        self.changed.set()
        return described

    # -- the engine -----------------------------------------------------------------------------

    async def advance_all(self) -> None:
        with self.session_factory() as session:
            running = list(session.scalars(select(WorkflowRun.id).where(WorkflowRun.status == "running")))
        for run_id in running:
            try:
                await self.advance(run_id)
            except Exception:
                log.exception("workflow run %s could not advance", run_id)

    async def advance(self, run_id: str) -> None:
        """Move one run as far as it can go now."""
        with self.session_factory() as session:
            run = session.get(WorkflowRun, run_id)
            workflow = session.get(Workflow, run.workflow_id)
            steps = [Step.model_validate(s) for s in workflow.steps]
            states = {s["name"]: StepState.model_validate(s) for s in run.steps}
            owner = Caller(workflow.owner, False, tuple(workflow.owner_groups or ()))
            for step in steps:
                state = states[step.name]
                if state.status in ("succeeded", "skipped"):
                    continue
                try:
                    done = await (self._job_step(session, owner, step, state, states) if step.job
                                  else self._promote_step(owner, step, state, states))
                except FermiError as error:
                    state.status, state.reason = "failed", error.message
                    done = True
                if state.status == "failed":
                    run.status, run.finished_at = "failed", utcnow()
                    run.reason = f"Step {step.name!r} failed: {state.reason}"
                elif state.status == "skipped":
                    run.status, run.finished_at = "succeeded", utcnow()
                    run.reason = state.reason
                if not done or run.status != "running":
                    break
            else:
                run.status, run.finished_at = "succeeded", utcnow()
            run.steps = [states[s.name].model_dump() for s in steps]
            session.commit()

    async def _job_step(self, session, owner: Caller, step: Step, state: StepState,
                        states: dict[str, StepState]) -> bool:
        if state.job_id is None:
            request = step.job.model_copy(update={
                "parameters": substitute(step.job.parameters, states),
                "name": step.job.name or f"{step.name}"})
            job = self.jobs.submit(owner, request, origin=f"step {step.name!r} of a workflow")
            state.job_id, state.status = job.id, "running"
            return False
        job = session.get(Job, state.job_id)
        session.refresh(job)
        if job.status in ("queued", "running"):
            return False
        if job.status != "succeeded":
            state.status, state.reason = "failed", f"job {job.id} {job.status}: {job.reason or ''}".strip()
            return True
        state.status, state.metrics = "succeeded", dict(job.metrics or {})
        state.model = (job.models or [None])[-1]
        return True

    async def _promote_step(self, owner: Caller, step: Step, state: StepState,
                            states: dict[str, StepState]) -> bool:
        promote = step.promote
        model = states[promote.model_from].model
        if not model:
            raise FermiError(f"step {promote.model_from!r} registered no model to promote")
        if promote.when:
            source, path = promote.when.metric.split(".", 1)
            value = lookup(states, source, f"metrics.{path}")
            if not OPERATORS[promote.when.op](value, promote.when.value):
                state.status = "skipped"
                state.reason = (f"Not promoted: {promote.when.metric} = {value:g}, the bar is "
                                f"{promote.when.op} {promote.when.value:g}.")
                return True
        try:
            self.deployments.get(owner, promote.deployment)
            exists = True
        except NotFound:
            exists = False
        if exists:
            await self.deployments.update(owner, promote.deployment, UpdateDeployment(
                canary=Canary(version=str(model["version"]), traffic_percent=100)))
            await self.deployments.update(owner, promote.deployment, UpdateDeployment(action="promote"))
        else:
            await self.deployments.create(owner, CreateDeployment(
                name=promote.deployment, model=model["name"], version=str(model["version"]),
                profile=promote.profile, min_replicas=promote.min_replicas,
                max_replicas=promote.max_replicas))
        state.status, state.deployment = "succeeded", promote.deployment
        state.reason = f"{model['name']} version {model['version']} serves at {promote.deployment}"
        return True

    async def run(self, interval: float = 2.0) -> None:
        while True:
            self.changed.clear()
            await self.advance_all()
            try:
                await asyncio.wait_for(self.changed.wait(), interval)
            except asyncio.TimeoutError:
                pass


def _summaries(steps: list[dict]) -> list[dict]:
    return [{"name": s["name"], "kind": "job" if "job" in s else "promote",
             **({"promote": s["promote"]} if "promote" in s else
                {"parameters": s["job"].get("parameters", {}), "profile": s["job"].get("profile")})}
            for s in steps]
