"""A small async client for the MLflow tracking server's REST API.

The control plane talks to MLflow over its documented REST API rather than importing the
``mlflow`` package: it keeps the control plane light (start-up, memory) and speaks the same
protocol as every other MLflow client. Notebooks inside jobs use ``mlflow`` itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from ..errors import Unavailable

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


class TrackingError(Unavailable):
    pass


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in tags.items()]


class Tracker:
    def __init__(self, uri: str, timeout: float = 10.0, token: str = ""):
        """``token``: sent as MLflow's clients send $MLFLOW_TRACKING_TOKEN, for a workload that
        reaches the tracking server through the platform's tracking proxy (the control plane
        itself uses the direct address, with none)."""
        self.uri = uri.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client = httpx.AsyncClient(base_url=self.uri, timeout=timeout, headers=headers)
        self._experiments: dict[str, str] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise TrackingError(
                f"The tracking server at {self.uri} is not answering ({error.__class__.__name__}); "
                "the platform retries on its own."
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text}
            error = TrackingError(f"Tracking server: {body.get('message', body)}")
            error.code = body.get("error_code")  # type: ignore[attr-defined]
            error.http_status = response.status_code  # type: ignore[attr-defined]
            raise error
        return response.json() if response.content else {}

    async def ready(self) -> bool:
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def warm_up(self, attempts: int = 60) -> None:
        """Make the server create its database on our time, not the first job's."""
        import asyncio

        for _ in range(attempts):
            try:
                await self._call("GET", f"{API}/experiments/search", params={"max_results": 1})
                return
            except TrackingError:
                await asyncio.sleep(1)

    async def experiment_id(self, name: str) -> str:
        """Id of the experiment ``name``, created on first use."""
        if name in self._experiments:
            return self._experiments[name]
        try:
            found = await self._call(
                "GET", f"{API}/experiments/get-by-name", params={"experiment_name": name}
            )
            experiment_id = found["experiment"]["experiment_id"]
        except TrackingError as error:
            if getattr(error, "code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                created = await self._call("POST", f"{API}/experiments/create", json={"name": name})
                experiment_id = created["experiment_id"]
            except TrackingError as again:  # created meanwhile by a concurrent submit
                if getattr(again, "code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = await self._call(
                    "GET", f"{API}/experiments/get-by-name", params={"experiment_name": name}
                )
                experiment_id = found["experiment"]["experiment_id"]
        self._experiments[name] = experiment_id
        return experiment_id

    async def create_run(
        self, experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any]
    ) -> dict:
        created = await self._call(
            "POST",
            f"{API}/runs/create",
            json={
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": int(time.time() * 1000),
                "tags": _tags(tags),
            },
        )
        run = created["run"]["info"]
        if params:
            await self._call(
                "POST",
                f"{API}/runs/log-batch",
                json={
                    "run_id": run["run_id"],
                    "params": [{"key": k, "value": _param_text(v)} for k, v in params.items()],
                },
            )
        return run

    async def upload_artifact(self, run: dict, content: bytes, name: str) -> None:
        artifact_uri = run["artifact_uri"]
        prefix = "mlflow-artifacts:/"
        if not artifact_uri.startswith(prefix):
            return
        path = artifact_uri[len(prefix):].strip("/") + "/" + name
        await self._call("PUT", f"{ARTIFACTS}/{path}", content=content)

    async def get_run(self, run_id: str) -> dict:
        return (await self._call("GET", f"{API}/runs/get", params={"run_id": run_id}))["run"]

    async def registered_versions(self, run_id: str) -> list[dict]:
        """Model versions registered from ``run_id``: [{"name", "version"}]."""
        found = await self._call(
            "GET", f"{API}/model-versions/search", params={"filter": f"run_id='{run_id}'"}
        )
        return [{"name": v["name"], "version": v["version"]}
                for v in found.get("model_versions", [])]

    async def delete_model_version(self, name: str, version: str) -> None:
        await self._call("DELETE", f"{API}/model-versions/delete",
                         json={"name": name, "version": str(version)})

    async def model_versions(self, name: str) -> list[dict]:
        found = await self._call(
            "GET", f"{API}/model-versions/search",
            params={"filter": f"name='{name}'", "max_results": 1000},
        )
        return found.get("model_versions", [])

    async def download_model(self, name: str, version: str, target: Path) -> Path:
        """Copy a model version's files into ``target`` (as KServe's storage initializer does)."""
        uri = (await self._call(
            "GET", f"{API}/model-versions/get-download-uri",
            params={"name": name, "version": version},
        ))["artifact_uri"]
        prefix = "mlflow-artifacts:/"
        if not uri.startswith(prefix):
            raise TrackingError(f"Cannot fetch model files from {uri!r}.")
        tmp = target.with_name(target.name + ".partial")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        await self._download_tree(uri[len(prefix):].strip("/"), tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target

    async def _download_tree(self, path: str, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        listing = await self._call("GET", ARTIFACTS, params={"path": path})
        for entry in listing.get("files", []):
            name = entry["path"].rsplit("/", 1)[-1]
            if entry.get("is_dir"):
                await self._download_tree(f"{path}/{name}", into / name)
                continue
            try:
                response = await self._client.get(f"{ARTIFACTS}/{path}/{name}")
            except httpx.HTTPError as error:
                raise TrackingError(f"Could not download {name}: {error}") from None
            if response.status_code != 200:
                raise TrackingError(f"Could not download {name}: HTTP {response.status_code}")
            (into / name).write_bytes(response.content)

    async def end_run(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED. MLflow leaves runs of failed notebooks FINISHED
        and of killed kernels RUNNING, so the platform sets the truth from the job's outcome."""
        await self._call(
            "POST",
            f"{API}/runs/update",
            json={"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)},
        )

    async def metrics(self, run_id: str) -> dict[str, float]:
        run = await self.get_run(run_id)
        return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}


def _param_text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
