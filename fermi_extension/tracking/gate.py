"""The tracking server's gate: who may do what in MLflow, checked where MLflow is.

An ASGI middleware around MLflow's app, so each rule holds whatever path a request took.

1. **Model names** (every request, the platform's own too): a model version lands only in a
   model its job's owner owns or that is shared with them for writing
   (``registry.service.version_refusal``), and only from a running Fermi job, found by its
   MLflow run (the control plane records the run before the notebook starts), never by
   anything the request itself claims. Models Fermi knows are never renamed underneath it.
2. **Callers** (requests the control plane's tracking proxy forwards, with a caller it signed,
   ``tracking.identity``): a job's token reaches only its own run (read, log, tag, end, its
   artifacts and the models it logs) and reads its run's experiment; a user reaches the
   experiments they own, with their runs and artifacts, and the registered models they own or
   that are shared with their groups (``registry.service.can_see``); searches return only
   those; an admin reaches everything. Anything else is a 403 that names what is not theirs.
   An experiment is its owner's by its ``fermi.owner`` tag (set here when a user creates one;
   only admins set ``fermi.*`` tags), else by its name ``fermi/USER`` (the experiment the control
   plane makes for USER's jobs; nobody else may take such a name). A run is the owner's of its
   experiment. Endpoints not in ``RULES`` are for admins only.
3. Requests with no caller headers are the control plane's own, on the direct port that only
   the platform's processes reach: served as before (rule 1 only).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, unquote

from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ..caller import Caller
from ..db import GroupMember, Job, RegisteredModel
from ..registry.service import can_see, version_refusal
from .identity import (CALLER_HEADER, SIGNATURE_HEADER, BadSignature, TrackingCaller,
                       secret_from_env, verify)

# MLflow serves its REST API under /api/2.0/mlflow and the same handlers under /ajax-api/2.0/mlflow
# (its UI) and the preview paths, behind an optional static prefix
API = re.compile(r"/(?:ajax-)?api/2\.0/(?:preview/)?mlflow/(?P<endpoint>.+)$")
ARTIFACTS = re.compile(r"/(?:ajax-)?api/2\.0/mlflow-artifacts/"
                       r"(?P<op>artifacts|mpu/create|mpu/complete|mpu/abort)(?:/(?P<path>.*))?$")
GATED = re.compile(r"/(?:ajax-)?api/2\.0/(?:preview/)?mlflow/"
                   r"(model-versions/create|registered-models/rename)$")
OPEN = re.compile(r"/(?:health|version|(?:ajax-)?api/3\.0/mlflow/server-info)$")
OWNER_TAG = "fermi.owner"
RESERVED_TAGS = "fermi."  # the platform's own tags: only admins set or remove them
MAX_JSON_BODY = 32 << 20  # REST calls are small; artifacts (streamed, never read here) are not


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Decision:
    """What the gate lets through: the body (rewritten where the gate adds the owner) and a
    filter of the answer (searches)."""

    body: bytes | None = None
    answer: Callable[[dict], dict] | None = None


def _refusal(status: int, message: str) -> bytes:
    code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
            503: "TEMPORARILY_UNAVAILABLE"}.get(status, "INVALID_PARAMETER_VALUE")
    # MLflow's clients show `message`; the platform's proxy speaks `error`
    return json.dumps({"error_code": code, "message": message, "error": message}).encode()


class RegistryGate:
    def __init__(self, app, db_url: str, secret: bytes | None = None):
        self.app = app
        engine = create_engine(db_url, future=True)
        self.session_factory = sessionmaker(engine, expire_on_commit=False)
        self.secret = secret_from_env() if secret is None else secret
        self._experiment_of_run: dict[str, str] = {}  # runs never change experiment

    # -- the ASGI side ------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        payload, signature = headers.get(CALLER_HEADER.encode()), headers.get(
            SIGNATURE_HEADER.encode())
        method, path = scope.get("method", "GET"), scope.get("path", "")
        who = None
        if payload is not None or signature is not None:
            try:
                who = verify(self.secret, method, path, (payload or b"").decode(),
                             (signature or b"").decode())
            except (BadSignature, ValueError, KeyError, TypeError) as error:
                return await self._answer(send, 401, f"Refused: {error}. Reach the tracking "
                                          "server through the platform's tracking proxy.")
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                          if k not in (CALLER_HEADER.encode(),
                                                       SIGNATURE_HEADER.encode())]}
        gated = GATED.search(path) if method == "POST" else None
        needs_body = gated is not None or (
            who is not None and not who.admin and API.search(path) is not None
            and method in ("POST", "PATCH", "DELETE", "PUT"))
        body = b""
        if needs_body:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_JSON_BODY:
                    return await self._answer(send, 413, "Request body too large for a REST "
                                              "call; upload files as artifacts.")
        decision = Decision()
        if who is not None and not who.admin:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            try:
                decision = await asyncio.to_thread(self.authorize, who, method, path, query, body)
            except Refused as refused:
                return await self._answer(send, refused.status, refused.message)
        if decision.body is not None:
            body = decision.body
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                          if k != b"content-length"]
                     + [(b"content-length", str(len(body)).encode())]}
        if gated is not None:
            status, refusal = await asyncio.to_thread(self.check, gated.group(1), body, who)
            if refusal is not None:
                return await self._answer(send, status, refusal)
        if needs_body:
            receive = _replay(body, receive)
        if decision.answer is not None:
            send = _filtered(send, decision.answer)
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(send, status: int, message: str) -> None:
        payload = _refusal(status, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    # -- rule 1: model names ------------------------------------------------------------------

    def check(self, action: str, body: bytes, who: TrackingCaller | None = None
              ) -> tuple[int, str | None]:
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
                if who is not None and not who.admin and not (
                        job.id == who.grant.job_id if who.grant else job.owner == who.name):
                    return 403, (f"run {run_id} is not yours: register versions from your "
                                 "own job's run")
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

    # -- rule 2: callers ----------------------------------------------------------------------

    def authorize(self, who: TrackingCaller, method: str, path: str, query: dict[str, list[str]],
                  body: bytes) -> Decision:
        """Raises ``Refused`` unless ``who`` (not an admin) may send this request."""
        if OPEN.search(path):
            return Decision()
        if who.grant is not None and who.grant.kind == "replica":
            self._model_server(who, method, path, query)
            return Decision()
        artifacts = ARTIFACTS.search(path)
        if artifacts is not None:
            where = artifacts.group("path") if artifacts.group("path") is not None else \
                (query.get("path") or [""])[0]
            self._artifact_path(who, unquote(where or ""),
                                read=method == "GET" and artifacts.group("op") == "artifacts")
            return Decision()
        api = API.search(path)
        if api is None:
            raise Refused(403, f"{path} is not open through the platform's tracking proxy "
                          "(runs, experiments, models and their artifacts are)")
        params = {k: v[0] for k, v in query.items()}
        request: dict = {}
        if body:
            try:
                request = json.loads(body)
            except ValueError:
                raise Refused(400, "The request body is not valid JSON.") from None
            if not isinstance(request, dict):
                raise Refused(400, "The request body must be a JSON object.")
        args = {**params, **request}
        endpoint = api.group("endpoint")
        rule = RULES.get(endpoint)
        if rule is None and endpoint.startswith("logged-models"):
            rule = Rules.logged_model
        if rule is None:
            raise Refused(403, f"the MLflow endpoint {endpoint!r} is for admins only through "
                          "the platform (runs, experiments, registered models, model versions, "
                          "logged models and artifacts are open to their owners)")
        from mlflow.exceptions import MlflowException

        try:
            with self.session_factory() as session:
                decision = rule(Rules(self, who, session, query), endpoint, method, args)
                session.commit()
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return Decision()  # nothing to protect: MLflow answers the 404 itself
            raise Refused(400, error.message) from None
        except SQLAlchemyError as error:
            raise Refused(503, "the platform cannot check ownership right now "
                          f"({error.__class__.__name__}); retry") from None
        return decision

    def _model_server(self, who: TrackingCaller, method: str, path: str,
                      query: dict[str, list[str]]) -> None:
        """A model server's token (the storage initializer of a revision on Kubernetes) reads
        its one model version: where its files are, and the files under that folder. Nothing
        else, and never a write: the server's own code never holds the token."""
        name, _, version = (who.grant.model or "").removeprefix("models:/").partition("/")
        refused = Refused(403, f"{who.describe()} reads that model version's files only, not "
                          f"{method} {path}")
        if method != "GET" or not name or not version:
            raise refused
        api = API.search(path)
        if api is not None:
            asked = ((query.get("name") or [""])[0], (query.get("version") or [""])[0])
            if api.group("endpoint") in ("model-versions/get", "model-versions/get-download-uri") \
                    and asked == (name, version):
                return
            raise refused
        artifacts = ARTIFACTS.search(path)
        if artifacts is None or artifacts.group("op") != "artifacts":
            raise refused
        where = unquote(artifacts.group("path") if artifacts.group("path") is not None
                        else (query.get("path") or [""])[0]).strip("/")
        from mlflow.exceptions import MlflowException
        from mlflow.server.handlers import _get_model_registry_store

        try:
            location = _get_model_registry_store().get_model_version_download_uri(name, version)
        except MlflowException:
            raise refused from None
        root = str(location).removeprefix("mlflow-artifacts:/").strip("/")
        if not str(location).startswith("mlflow-artifacts:/") or ".." in where.split("/") or \
                not (where == root or where.startswith(root + "/")):
            raise refused

    def _artifact_path(self, who: TrackingCaller, where: str, read: bool) -> None:
        """Proxied artifacts live at EXPERIMENT/RUN/artifacts/… and EXPERIMENT/models/MODEL/…
        (``mlflow-artifacts:/`` root): the experiment is its owner's, a job's token reaches its
        run's folder and its models' folders only; a user also reads the files of a model
        version they may see (a model shared with their group lives in its owner's
        experiment)."""
        parts = where.strip("/").split("/") if where.strip("/") else []
        if any(p in ("", ".", "..") for p in parts):
            raise Refused(400, f"artifact path {where!r} is not a plain relative path")
        if not parts:
            raise Refused(403, "the artifact root is not yours; list EXPERIMENT_ID/RUN_ID/"
                          "artifacts of one of your runs")
        from mlflow.exceptions import MlflowException

        rules = Rules(self, who, None, {})
        try:
            if who.grant is not None:
                if len(parts) >= 3 and parts[1] == "models":
                    if rules.logged_model_of_run(parts[2], write=not read):
                        return  # another run's model its owner may read (an evaluation job)
                elif len(parts) < 2 or parts[1] != who.grant.run_id:
                    raise Refused(403, f"{who.describe()} reaches only its own run's "
                                  f"artifacts, not {where!r}")
                if parts[0] != rules.grant_experiment():
                    raise Refused(403, f"{where!r} is not in the experiment of this job's run")
                return
            try:
                rules.experiment(parts[0], write=False, what=f"artifact path {where!r}")
            except Refused:
                if not (read and len(parts) >= 3 and parts[1] == "models"
                        and self.version_visible(who.caller, parts[2])):
                    raise
        except MlflowException:
            raise Refused(403, f"{where!r} is not among your artifacts") from None

    def version_visible(self, caller: Caller, model_id: str) -> bool:
        """Whether a registered version the user may see was made from logged model
        ``model_id`` (the job that logged it recorded its versions, ``Job.models``)."""
        from mlflow.server.handlers import _get_model_registry_store, _get_tracking_store

        run_id = _get_tracking_store().get_logged_model(model_id).source_run_id
        registry = _get_model_registry_store()
        with self.session_factory() as session:
            job = session.scalar(select(Job).where(Job.tracking_run_id == run_id)) \
                if run_id else None
            for version in (job.models or []) if job is not None else []:
                row = session.get(RegisteredModel, version.get("name", ""))
                if row is None or not can_see(caller, row):
                    continue
                found = registry.get_model_version(row.name, str(version.get("version")))
                # the registry names the logged model by id, or only in the version's source
                # (models:/m-…, or its artifact folder)
                if model_id == getattr(found, "model_id", None) or \
                        model_id in str(found.source or "").split("/"):
                    return True
        return False

    def experiment_of_run(self, run_id: str) -> str:
        if run_id not in self._experiment_of_run:
            if len(self._experiment_of_run) > 100_000:  # a bound, not an eviction policy
                self._experiment_of_run.clear()
            from mlflow.server.handlers import _get_tracking_store

            self._experiment_of_run[run_id] = _get_tracking_store().get_run(
                run_id).info.experiment_id
        return self._experiment_of_run[run_id]


def experiment_owner(experiment) -> str | None:
    tags = experiment.tags or {}
    if tags.get(OWNER_TAG):
        return tags[OWNER_TAG]
    name = experiment.name or ""
    return name[len("fermi/"):] if name.startswith("fermi/") else None


class Rules:
    """One request's checks (``who`` is not an admin). Each rule takes the endpoint, the
    method and the request's arguments (query and JSON body together)."""

    def __init__(self, gate: RegistryGate, who: TrackingCaller, session, query):
        self.gate, self.who, self.session, self.query = gate, who, session, query

    # -- lookups ------------------------------------------------------------------------------

    @staticmethod
    def store():
        from mlflow.server.handlers import _get_tracking_store

        return _get_tracking_store()

    def grant_experiment(self) -> str:
        return self.gate.experiment_of_run(self.who.grant.run_id)

    def not_for_jobs(self, what: str):
        if self.who.grant is not None:
            raise Refused(403, f"{self.who.describe()} cannot {what}: a job logs to its own "
                          "run only (MLFLOW_RUN_ID)")

    def experiment(self, experiment_id, *, write: bool, what: str | None = None) -> None:
        experiment_id = str(experiment_id)
        if self.who.grant is not None:
            if write or experiment_id != self.grant_experiment():
                raise Refused(403, f"{self.who.describe()} may only read its own run's "
                              f"experiment, not {'change ' if write else ''}experiment "
                              f"{experiment_id}")
            return
        owner = experiment_owner(self.store().get_experiment(experiment_id))
        if owner != self.who.name:
            raise Refused(403, f"{what or f'experiment {experiment_id}'} is not yours "
                          f"(experiment {experiment_id} belongs to "
                          f"{'another user' if owner else 'the platform'})")

    def run(self, run_id, *, write: bool) -> None:
        if not run_id:
            raise Refused(400, "Name the run: `run_id` is missing.")
        run_id = str(run_id)
        if self.who.grant is not None:
            if run_id != self.who.grant.run_id:
                raise Refused(403, f"run {run_id} is not this job's: {self.who.describe()} "
                              "reaches its own run only")
            return
        experiment_id = self.gate.experiment_of_run(run_id)
        self.experiment(experiment_id, write=write, what=f"run {run_id}")

    def owner_caller(self) -> Caller:
        """The caller whose models a request reaches: the user, or a job's owner."""
        if self.who.grant is None:
            return self.who.caller
        query = select(GroupMember.group).where(GroupMember.user == self.who.grant.owner)
        if self.session is None:  # an artifact request's check holds no session of its own
            with self.gate.session_factory() as session:
                return Caller(self.who.grant.owner, groups=tuple(session.scalars(query)))
        return Caller(self.who.grant.owner, groups=tuple(self.session.scalars(query)))

    def model(self, name, *, write: bool) -> None:
        if not name:
            raise Refused(400, "Name the registered model: `name` is missing.")
        name = str(name)
        row = self.session.get(RegisteredModel, name)
        owner = self.owner_caller()
        if row is not None and (version_refusal(self.session, name, owner.name) is None
                                if write or self.who.grant is not None
                                else can_see(owner, row)):
            return
        raise Refused(403, f"registered model {name!r} is not yours"
                      + (" to change" if write and row is not None and can_see(owner, row) else
                         " (nor shared with your groups, or it does not exist)"))

    def logged_model_of_run(self, model_id: str, *, write: bool) -> bool:
        """A job's token reaches the models its run logged (MLflow 3's log_model), and reads
        what its owner may read: a model logged in the owner's experiment, or behind a
        registered version shared with the owner (an evaluation or batch-inference job loads
        one). True when it reaches the model as its owner's reader, not as its run's."""
        model = self.store().get_logged_model(model_id)
        if model.source_run_id == self.who.grant.run_id:
            return False
        if not write:
            experiment = self.store().get_experiment(model.experiment_id)
            if experiment_owner(experiment) == self.who.grant.owner or \
                    self.gate.version_visible(self.owner_caller(), model_id):
                return True
        raise Refused(403, f"logged model {model_id} is not from this job's run"
                      + ("" if write else ", nor one its owner may read"))

    # -- the rules ----------------------------------------------------------------------------

    def experiment_rule(self, endpoint: str, method: str, args: dict) -> Decision:
        if endpoint == "experiments/search":
            return Decision(answer=self.visible_experiments)
        if endpoint == "experiments/get-by-name":
            found = self.store().get_experiment_by_name(str(args.get("experiment_name") or ""))
            if found is None:
                return Decision()
            self.experiment(found.experiment_id, write=False)
            return Decision()
        if endpoint == "experiments/create":
            self.not_for_jobs("create experiments")
            return self.own_new_experiment(args)
        self.experiment(args.get("experiment_id"), write=endpoint != "experiments/get")
        if endpoint in ("experiments/set-experiment-tag", "experiments/delete-experiment-tag"):
            self.no_reserved_tag(args.get("key"))
        if endpoint == "experiments/update":
            self.experiment_name_is_theirs(args.get("new_name"))
        return Decision()

    def own_new_experiment(self, args: dict) -> Decision:
        self.experiment_name_is_theirs(args.get("name"))
        tags = [t for t in (args.get("tags") or []) if isinstance(t, dict)
                and not str(t.get("key", "")).startswith(RESERVED_TAGS)]
        args = {**args, "tags": tags + [{"key": OWNER_TAG, "value": self.who.name}]}
        return Decision(body=json.dumps(args).encode())

    def experiment_name_is_theirs(self, name) -> None:
        # fermi/USER is where USER's jobs log: nobody else may take the name
        if name and str(name).startswith("fermi/") and str(name) != f"fermi/{self.who.name}":
            raise Refused(403, f"experiment names under 'fermi/' are the platform's; "
                          f"{name!r} is not yours (use another name, or fermi/{self.who.name})")

    def no_reserved_tag(self, key) -> None:
        if str(key or "").startswith(RESERVED_TAGS):
            raise Refused(403, f"tags starting with {RESERVED_TAGS!r} are the platform's; "
                          f"choose another key than {key!r}")

    def visible_experiments(self, answer: dict) -> dict:
        if self.who.grant is not None:
            mine = self.grant_experiment()
            keep = [e for e in answer.get("experiments", []) if e.get("experiment_id") == mine]
        else:
            keep = [e for e in answer.get("experiments", []) if experiment_owner(_Tagged(e))
                    == self.who.name]
        return {**answer, "experiments": keep}

    def run_rule(self, endpoint: str, method: str, args: dict) -> Decision:
        if endpoint == "runs/create":
            self.not_for_jobs("create runs")
            self.experiment(args.get("experiment_id"), write=True)
            return Decision()
        if endpoint in ("runs/search", "logged-models/search"):
            ids = args.get("experiment_ids") or self.query.get("experiment_ids") or []
            if not ids:
                raise Refused(400, "Name the experiments to search: `experiment_ids`.")
            for experiment_id in ids if isinstance(ids, list) else [ids]:
                self.experiment(experiment_id, write=False)
            if self.who.grant is not None:  # its experiment holds its owner's other runs too
                return Decision(answer=self.own_run_only)
            return Decision()
        if endpoint == "metrics/get-history-bulk-interval":
            for run_id in self.query.get("run_ids") or args.get("run_ids") or []:
                self.run(run_id, write=False)
            return Decision()
        if endpoint in ("runs/set-tag", "runs/delete-tag") and self.who.grant is None:
            self.no_reserved_tag(args.get("key"))
        write = endpoint not in ("runs/get", "metrics/get-history", "artifacts/list")
        self.run(args.get("run_id") or args.get("run_uuid"), write=write)
        return Decision()

    def own_run_only(self, answer: dict) -> dict:
        run_id = self.who.grant.run_id
        return {**answer,
                **({"runs": [r for r in answer["runs"]
                             if r.get("info", {}).get("run_id") == run_id]}
                   if "runs" in answer else {}),
                **({"models": [m for m in answer["models"]
                               if m.get("info", {}).get("source_run_id") == run_id]}
                   if "models" in answer else {})}

    def logged_model(self, endpoint: str, method: str, args: dict) -> Decision:
        if endpoint == "logged-models/search":
            return self.run_rule(endpoint, method, args)
        if endpoint == "logged-models":  # create
            if self.who.grant is not None:
                if str(args.get("source_run_id") or "") != self.who.grant.run_id:
                    raise Refused(403, f"{self.who.describe()} logs models from its own run "
                                  "only (source_run_id)")
                self.experiment(args.get("experiment_id"), write=False)
            else:
                self.experiment(args.get("experiment_id"), write=True)
            return Decision()
        model_id = endpoint.split("/")[1]
        if self.who.grant is not None:
            self.logged_model_of_run(model_id, write=method != "GET")
        else:
            self.experiment(self.store().get_logged_model(model_id).experiment_id,
                            write=method != "GET", what=f"logged model {model_id}")
        return Decision()

    def model_rule(self, endpoint: str, method: str, args: dict) -> Decision:
        if endpoint == "registered-models/search":
            return Decision(answer=lambda a: self.visible_models(a, "registered_models"))
        if endpoint == "model-versions/search":
            return Decision(answer=lambda a: self.visible_models(a, "model_versions"))
        if endpoint == "model-versions/create":
            return Decision()  # rule 1 (RegistryGate.check) decides, with the caller
        if endpoint == "registered-models/create":
            refusal = version_refusal(self.session, str(args.get("name") or ""),
                                      self.owner_caller().name)
            if refusal:
                raise Refused(403, refusal)
            return Decision()
        reads = ("registered-models/get", "registered-models/get-latest-versions",
                 "model-versions/get", "model-versions/get-download-uri")
        write = endpoint not in reads and not (endpoint == "registered-models/alias"
                                               and method == "GET")
        self.model(args.get("name"), write=write)
        return Decision()

    def visible_models(self, answer: dict, key: str) -> dict:
        with self.gate.session_factory() as session:
            rules = Rules(self.gate, self.who, session, {})
            owner = rules.owner_caller()

            def shown(name: str) -> bool:
                row = session.get(RegisteredModel, name)
                if row is None:
                    return False
                if self.who.grant is not None:
                    return row.owner == owner.name
                return can_see(owner, row)

            return {**answer, key: [m for m in answer.get(key, []) if shown(m.get("name", ""))]}


class _Tagged:
    """An experiment of a JSON answer, read like MLflow's entity (name, tags)."""

    def __init__(self, experiment: dict):
        self.name = experiment.get("name")
        self.tags = {t.get("key"): t.get("value") for t in experiment.get("tags", [])}


RULES: dict[str, Callable] = {
    **{f"experiments/{e}": Rules.experiment_rule for e in (
        "get", "get-by-name", "search", "create", "update", "delete", "restore",
        "set-experiment-tag", "delete-experiment-tag")},
    **{f"runs/{e}": Rules.run_rule for e in (
        "create", "get", "search", "update", "delete", "restore", "log-metric", "log-parameter",
        "log-batch", "log-model", "log-inputs", "outputs", "set-tag", "delete-tag")},
    "metrics/get-history": Rules.run_rule,
    "metrics/get-history-bulk-interval": Rules.run_rule,
    "artifacts/list": Rules.run_rule,
    **{f"registered-models/{e}": Rules.model_rule for e in (
        "create", "get", "get-latest-versions", "search", "update", "delete", "rename",
        "set-tag", "delete-tag", "alias")},
    **{f"model-versions/{e}": Rules.model_rule for e in (
        "create", "get", "get-download-uri", "search", "update", "delete", "set-tag",
        "delete-tag", "transition-stage")},
}


def _replay(body: bytes, receive):
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _filtered(send, answer: Callable[[dict], dict]):
    """Send MLflow's JSON answer through ``answer`` (searches keep only what the caller may
    see). Search answers are one page of JSON, so holding one in memory is fine."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def filtered(message):
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if start["status"] == 200:
            try:
                body = json.dumps(await asyncio.to_thread(answer, json.loads(body))).encode()
            except ValueError:
                pass
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return filtered
