"""/api/workflows: train → evaluate → promote if a metric clears a bar, declared once."""

from __future__ import annotations

from .service import CreateWorkflow, DescribeRun, DescribeWorkflow, WorkflowList
from ..control_plane.base import APIHandler, operation


class WorkflowsHandler(APIHandler):
    @operation("Your workflows with their latest runs (admins: all)", response=WorkflowList)
    def get(self):
        self.send(self.services.workflows.list(self.caller))

    @operation("Declare a workflow: job steps and promote steps, run in order; each job step is "
               "checked as a submission", request=CreateWorkflow, response=DescribeWorkflow,
               status=201)
    def post(self):
        self.send(self.services.workflows.create(self.caller, self.parse(CreateWorkflow)), 201)


class WorkflowHandler(APIHandler):
    @operation("A workflow, its steps and its runs with each step's status", response=DescribeWorkflow)
    def get(self, workflow_id: str):
        self.send(self.services.workflows.get(self.caller, workflow_id))

    @operation("Delete a workflow and its run history (jobs and deployments stay)", status=204)
    def delete(self, workflow_id: str):
        self.services.workflows.delete(self.caller, workflow_id)
        self.set_status(204)
        self.finish()


class WorkflowRunsHandler(APIHandler):
    @operation("Start a run of the workflow", response=DescribeRun, status=201)
    def post(self, workflow_id: str):
        self.send(self.services.workflows.start_run(self.caller, workflow_id), 201)


routes = [
    ("/api/workflows", WorkflowsHandler),
    ("/api/workflows/{workflow_id}", WorkflowHandler),
    ("/api/workflows/{workflow_id}/runs", WorkflowRunsHandler),
]
