"""/api/datasets: register, version, share and attach datasets (access follows ownership; where
a location may be is the admin's: ``datasets.DatasetPolicy``)."""

from __future__ import annotations

from .service import CreateDataset, DatasetList, DescribeDataset, NewVersion, PatchDataset
from ..control_plane.base import APIHandler, operation


class DatasetsHandler(APIHandler):
    @operation("Datasets you own or that are shared with your groups (admins: all)",
               response=DatasetList)
    def get(self):
        self.send(self.services.datasets.list(self.caller))

    @operation("Register a dataset with its first version's location (only where the admin "
               "allows datasets)", request=CreateDataset, response=DescribeDataset, status=201)
    def post(self):
        self.send(self.services.datasets.create(self.caller, self.parse(CreateDataset)), 201)


class DatasetHandler(APIHandler):
    @operation("A dataset with its versions, mount path and environment variable",
               response=DescribeDataset)
    def get(self, name: str):
        self.send(self.services.datasets.get(self.caller, name))

    @operation("Change the description or the groups it is shared with (owner, admins)",
               request=PatchDataset, response=DescribeDataset)
    def patch(self, name: str):
        self.send(self.services.datasets.patch(self.caller, name, self.parse(PatchDataset)))

    @operation("Forget the dataset (owner, admins); the data itself stays where it is",
               status=204)
    def delete(self, name: str):
        self.services.datasets.delete(self.caller, name)
        self.set_status(204)
        self.finish()


class DatasetVersionsHandler(APIHandler):
    @operation("Add a version (a new location, only where the admin allows datasets) to a "
               "dataset (owner, admins)", request=NewVersion, response=DescribeDataset,
               status=201)
    def post(self, name: str):
        self.send(self.services.datasets.add_version(self.caller, name, self.parse(NewVersion)),
                  201)


routes = [
    ("/api/datasets", DatasetsHandler),
    ("/api/datasets/{name}", DatasetHandler),
    ("/api/datasets/{name}/versions", DatasetVersionsHandler),
]
