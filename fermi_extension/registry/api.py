"""/api/models: the model repository (registered models, versions, lineage, sharing)."""

from __future__ import annotations

from .models import DescribeModel, ListModelsResponse, ShareModel
from ..control_plane.base import APIHandler, operation


class ModelsHandler(APIHandler):
    @operation("Models you own or that are shared with you (admins: all)", response=ListModelsResponse)
    async def get(self):
        self.send(ListModelsResponse(models=await self.services.registry.list(self.caller)))


class ModelHandler(APIHandler):
    @operation("A model with its versions and their lineage (job, parameters, metrics)",
               response=DescribeModel)
    async def get(self, name: str):
        self.send(await self.services.registry.get(self.caller, name))

    @operation("Share a model with groups (owner or admin)", request=ShareModel,
               response=DescribeModel)
    async def patch(self, name: str):
        request = self.parse(ShareModel)
        self.services.registry.share(self.caller, name, request.groups,
                                     request.writer_groups)
        self.send(await self.services.registry.get(self.caller, name))


routes = [
    ("/api/models", ModelsHandler),
    ("/api/models/{name}", ModelHandler),
]
