"""The tracking server's gate in front of MLflow's model registry.

Notebooks register models with MLflow's own calls, straight to the tracking server, so the rule
for model names must hold there, not only in Fermi's view of the registry: a version lands only
in a model its job's owner owns or that is shared with them for writing
(``registry.service.version_refusal``). This ASGI middleware wraps MLflow's app and checks every
request that creates a model version (or renames a model) against the platform database before
MLflow sees it. The job is found by its MLflow run (the control plane records the run before the
notebook starts), never by anything the request itself claims.
"""

from __future__ import annotations

import asyncio
import json
import re

from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ..db import Job, RegisteredModel
from ..registry.service import version_refusal

# MLflow serves its REST API under /api/2.0/mlflow and the same handlers under /ajax-api/2.0/mlflow
# (its UI) and the preview paths, behind an optional static prefix
GATED = re.compile(r"/(?:ajax-)?api/2\.0/(?:preview/)?mlflow/"
                   r"(model-versions/create|registered-models/rename)$")


class RegistryGate:
    def __init__(self, app, db_url: str):
        self.app = app
        engine = create_engine(db_url, future=True)
        self.session_factory = sessionmaker(engine, expire_on_commit=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        gated = GATED.search(scope.get("path", ""))
        if gated is None:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, refusal = await asyncio.to_thread(self.check, gated.group(1), body)
        if refusal is not None:
            payload = json.dumps({"error_code": "PERMISSION_DENIED" if status == 403 else
                                  "TEMPORARILY_UNAVAILABLE", "message": refusal}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def check(self, action: str, body: bytes) -> tuple[int, str | None]:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 200, None  # MLflow answers a malformed body itself
        if not isinstance(request, dict):
            return 200, None
        try:
            with self.session_factory() as session:
                if action == "registered-models/rename":
                    return self._rename_refusal(session, request)
                name, run_id = request.get("name"), self.run_of(request)
                job = session.scalar(select(Job).where(Job.tracking_run_id == run_id)) \
                    if run_id else None
                if job is None or job.status != "running":
                    return 403, ("model versions are registered from a running Fermi training "
                                 "job (its MLflow run); submit the notebook as a job")
                try:
                    refusal = version_refusal(session, str(name), job.owner)
                    session.commit()
                except IntegrityError:  # another job claimed the name at this instant
                    session.rollback()
                    refusal = version_refusal(session, str(name), job.owner)
                return (403, refusal) if refusal else (200, None)
        except SQLAlchemyError as error:
            return 503, f"the platform cannot check model ownership right now ({error.__class__.__name__}); retry"

    @staticmethod
    def run_of(request: dict) -> str | None:
        """The run a new version comes from: named in the request (MLflow 2 clients), or the
        run that logged the model it promotes (MLflow 3 sends only ``model_id`` for
        ``log_model(..., registered_model_name=...)``), or the run in a ``runs:/`` source."""
        if request.get("run_id"):
            return str(request["run_id"])
        source = str(request.get("source") or "")
        model_id = request.get("model_id") or (
            source[len("models:/"):].split("/", 1)[0] if source.startswith("models:/m-") else None)
        if model_id:
            from mlflow.exceptions import MlflowException
            from mlflow.server.handlers import _get_tracking_store

            try:
                return _get_tracking_store().get_logged_model(str(model_id)).source_run_id
            except MlflowException:
                return None
        if source.startswith("runs:/"):
            return source[len("runs:/"):].split("/", 1)[0] or None
        return None

    @staticmethod
    def _rename_refusal(session, request: dict) -> tuple[int, str | None]:
        """Fermi keeps who owns a model by its name: a model it knows is never renamed in the
        registry underneath, nor another renamed onto a name it knows."""
        for name in (request.get("name"), request.get("new_name")):
            if name and session.get(RegisteredModel, str(name)) is not None:
                return 403, (f"model {name!r} is owned through Fermi; models are not renamed "
                             "in the registry (register a new name from a job instead)")
        return 200, None
