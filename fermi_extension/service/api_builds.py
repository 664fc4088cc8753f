"""/api/catalog/builds: custom images built from a Dockerfile (admins)."""

from __future__ import annotations

from ..catalog.builds import CreateBuild, DescribeBuild
from .base import APIHandler, operation


class BuildsHandler(APIHandler):
    @operation("Build an image from a Dockerfile with this machine's builder (422 where none is "
               "installed)", request=CreateBuild, response=DescribeBuild, status=202, admin=True)
    def post(self):
        self.send(self.settings["builds"].start(self.caller, self.parse(CreateBuild)), 202)


class BuildHandler(APIHandler):
    @operation("A build's status and log", response=DescribeBuild)
    def get(self, build_id: str):
        self.send(self.settings["builds"].get(self.caller, build_id))


routes = [
    ("/api/catalog/builds", BuildsHandler),
    ("/api/catalog/builds/{build_id}", BuildHandler),
]
