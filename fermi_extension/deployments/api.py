"""/api/deployments: inference services (deploy, scale, canary, promote, rollback, delete)."""

from __future__ import annotations

from .models import (
    CreateDeployment,
    DescribeDeployment,
    ListDeploymentsResponse,
    UpdateDeployment,
)
from ..control_plane.base import APIHandler, operation


class DeploymentsHandler(APIHandler):
    @operation("Your deployments (admins: everyone's)", response=ListDeploymentsResponse)
    def get(self):
        self.send(ListDeploymentsResponse(deployments=self.services.deployments.list(self.caller)))

    @operation("Deploy a model version as an inference service (the answer shows its API key once)",
               request=CreateDeployment, response=DescribeDeployment, status=201)
    async def post(self):
        described = await self.services.deployments.create(self.caller, self.parse(CreateDeployment))
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{described.name}")
        self.send(described, 201)


class DeploymentHandler(APIHandler):
    @operation("Status, URL, replicas, revisions, traffic and events", response=DescribeDeployment)
    def get(self, name: str):
        self.send(self.services.deployments.get(self.caller, name))

    @operation("Change bounds or target; start, move, promote or roll back a canary; stop, start, "
               "rotate the key", request=UpdateDeployment, response=DescribeDeployment)
    async def patch(self, name: str):
        self.send(await self.services.deployments.update(
            self.caller, name, self.parse(UpdateDeployment)))

    @operation("Delete: replicas drain, then stop", status=204)
    async def delete(self, name: str):
        await self.services.deployments.delete(self.caller, name)
        self.set_status(204)
        self.finish()


routes = [
    ("/api/deployments", DeploymentsHandler),
    ("/api/deployments/{name}", DeploymentHandler),
]
