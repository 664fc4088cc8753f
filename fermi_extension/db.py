"""Platform state in a database through SQLAlchemy (SQLite by default, PostgreSQL in production).

Everything a user or an operator relies on lives here, so that any process can die and a new one
picks up where it stopped. Job processes also write their own outcome into their job folder, which
is how a job that finished while the control plane was down is still accounted for.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from .errors import FermiError


def utcnow() -> dt.datetime:
    """The one clock of the platform (a seam: tests replace it)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    image: Mapped[str] = mapped_column(String(63))
    profile: Mapped[str] = mapped_column(String(63))
    pool: Mapped[str] = mapped_column(String(63))
    runtime: Mapped[dict] = mapped_column(JSON)
    notebook_name: Mapped[str] = mapped_column(String(255))
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    max_retries: Mapped[int] = mapped_column(Integer, default=1)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    retry_of: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)
    # the process that runs the current attempt: pid plus its start time, so a reused pid is never
    # mistaken for the job after a restart
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    pid_started: Mapped[float | None] = mapped_column(Float, default=None)
    # or the attempt's object on a cluster (the Kubernetes backend's Job name)
    handle_name: Mapped[str | None] = mapped_column(String(255), default=None, nullable=True)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    tracking_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    tracking_experiment_id: Mapped[str | None] = mapped_column(String(64), default=None)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    models: Mapped[list] = mapped_column(JSON, default=list)  # versions this job registered

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_status_priority", "status", "priority", "created_at"),
        Index("ix_jobs_created", "created_at", "id"),  # the admins' list of everyone's jobs
    )


class JobEvent(Base):
    """What happened to a job and why (queued, started, retried, reconciled, ...)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class CatalogItem(Base):
    """One image, profile or pool; ``data`` is validated by ``catalog.schema`` on the way in."""

    __tablename__ = "catalog_items"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), primary_key=True)
    data: Mapped[dict] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    position: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    updated_by: Mapped[str] = mapped_column(String(255), default="seed")


class AuditEvent(Base):
    """Append-only record of every change: who, what, when, from where, before and after."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow(), index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(255))
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    before: Mapped[dict | None] = mapped_column(JSON, default=None)
    after: Mapped[dict | None] = mapped_column(JSON, default=None)


class Schedule(Base):
    """A job submitted again at each time of a cron expression (periodic retraining)."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    # the owner's groups when the schedule was made: profile restrictions apply at each run
    owner_groups: Mapped[list] = mapped_column(JSON, default=list)
    name: Mapped[str] = mapped_column(String(63))
    cron: Mapped[str] = mapped_column(String(128))
    # the job request (notebook snapshot included), exactly as it was checked at creation
    request: Mapped[dict] = mapped_column(JSON)
    next_run_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    last_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class Quota(Base):
    """Limits for a user, or for a group's members together (``quotas.py``); null: no limit."""

    __tablename__ = "quotas"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # user | group
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    gpus: Mapped[int | None] = mapped_column(Integer, default=None)
    running_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    deployments: Mapped[int | None] = mapped_column(Integer, default=None)
    monthly_spend: Mapped[float | None] = mapped_column(Float, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    updated_by: Mapped[str] = mapped_column(String(255))


class GroupMember(Base):
    """A user's hub groups as last seen with one of their requests (for group quotas)."""

    __tablename__ = "group_members"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    group: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class Dataset(Base):
    """A named dataset: its versions are locations (``datasets.py``)."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    groups: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"

    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name", ondelete="CASCADE"),
                                         primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    location: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class Workflow(Base):
    """Steps declared once (train → evaluate → promote); each run is a ``WorkflowRun``."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(255), index=True)
    owner_groups: Mapped[list] = mapped_column(JSON, default=list)
    steps: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(String(32), index=True)
    owner: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    steps: Mapped[list] = mapped_column(JSON)  # one StepState each
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)


class UsageRecord(Base):
    """Billable time: one row per finished job attempt (later: dev servers and replicas)."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(63))
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime] = mapped_column(DateTime)
    seconds: Mapped[float] = mapped_column(Float)
    price_per_hour: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)


def platform_db_url(data_dir) -> str:
    """The platform database of a data dir: $FERMI_DB_URL, else its SQLite file."""
    import os

    return os.environ.get("FERMI_DB_URL") or f"sqlite:///{os.path.join(data_dir, 'fermi.sqlite')}"


def platform_db_url_from_env() -> str:
    """Where every platform process (hub, spawner, culler, control plane) finds the database:
    $FERMI_DB_URL, else the SQLite file of $FERMI_DATA_DIR (empty when neither is set)."""
    import os

    data = os.environ.get("FERMI_DATA_DIR")
    return os.environ.get("FERMI_DB_URL") or (platform_db_url(data) if data else "")


def make_session_factory(url: str) -> sessionmaker:
    """Sessions on the platform database, its schema brought to this version first
    (``ensure_schema``)."""
    engine = make_engine(url)
    ensure_schema(engine)
    return sessionmaker(engine, expire_on_commit=False)


def make_engine(url: str):
    engine = create_engine(url, future=True)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer, and a kill -9 never corrupts the file
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


# -- the schema: Alembic revisions in migrations/versions ------------------------------------------

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
logger = logging.getLogger(__name__)


class DatabaseSchemaMismatch(FermiError):
    """The database was made by an earlier version and is not upgraded automatically."""


def alembic_config(url: str = "", connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def ensure_schema(engine) -> None:
    """What every process does before its first session: a new database gets the schema, a
    SQLite file of an earlier version is upgraded (a copy kept aside); an older database
    elsewhere (PostgreSQL) is left to `fermi db upgrade`, after the operator's own backup."""
    if engine.dialect.name == "sqlite":
        upgrade_if_needed(engine)
        return
    with schema_lock(engine) as connection:
        current = current_revision(connection)
        if current != head_revision() and _holds_platform_tables(connection):
            raise DatabaseSchemaMismatch(
                f"The platform database is at schema revision {current or 'none (Fermi 0.1.0)'}, "
                f"this version needs {head_revision()}: back it up, then run `fermi db upgrade`.")
    upgrade_if_needed(engine)


def upgrade_if_needed(url_or_engine, log: logging.Logger | None = None) -> bool:
    """Bring the platform database to this version's schema; True when anything was done.

    Under a lock that every process takes (``schema_lock``), so two processes starting at once
    on a new or old database neither race nor upgrade twice. A SQLite file that holds data is
    copied aside first (``backup_sqlite``); the copy's path is logged."""
    from alembic import command

    if isinstance(url_or_engine, str):
        engine = make_engine(url_or_engine)
        try:
            return upgrade_if_needed(engine, log)
        finally:
            engine.dispose()
    log, engine, head = log or logger, url_or_engine, head_revision()
    with schema_lock(engine) as connection:
        current = current_revision(connection)
        if current == head:
            return False
        existing = _holds_platform_tables(connection)
        where = engine.url.render_as_string(hide_password=True)
        if existing:
            if current is None:
                log.warning("%s was made by Fermi 0.1.0 or earlier (no schema revision): "
                            "bringing it to the baseline, then upgrading", where)
            database = _sqlite_file(engine)
            if database:
                log.warning("Upgrading %s from schema revision %s to %s; the database before "
                            "the upgrade is kept at %s", where, current or "none", head,
                            backup_sqlite(database))
            else:
                log.warning("Upgrading %s from schema revision %s to %s", where,
                            current or "none", head)
        command.upgrade(alembic_config(connection=connection), "head")
        connection.commit()
        return True


def _sqlite_file(engine) -> str | None:
    database = engine.url.database
    return database if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:") \
        else None


def _holds_platform_tables(connection) -> bool:
    from sqlalchemy import inspect

    return bool(set(inspect(connection).get_table_names()) & set(Base.metadata.tables))


def backup_sqlite(path: str) -> str:
    """``fermi.sqlite.2026-12-03-101500.bak`` beside the file. Through SQLite's backup API, not
    a file copy: in WAL mode committed transactions may still be in ``-wal`` only."""
    import os
    import sqlite3

    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    target = f"{path}.{stamp}.bak"
    for n in range(1, 100):
        if not os.path.exists(target):
            break
        target = f"{path}.{stamp}.{n}.bak"
    source, copy = sqlite3.connect(path), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    os.chmod(target, 0o600)  # it holds what the database holds
    return target


@contextmanager
def schema_lock(engine):
    """A connection held while no other process changes or creates the schema: a lock file
    beside a SQLite database (flock, released by the kernel if the process dies); a
    session-level advisory lock on PostgreSQL."""
    database = _sqlite_file(engine)
    if database:
        import fcntl

        with open(f"{database}.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                with engine.connect() as connection:
                    yield connection
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": SCHEMA_LOCK_KEY})
                connection.commit()
    else:  # an in-memory database belongs to one process; other backends are not supported
        with engine.connect() as connection:
            yield connection


SCHEMA_LOCK_KEY = 0x6665726D69  # "fermi": one advisory lock key for the platform's schema


class RegisteredModel(Base):
    """Who owns a model of the MLflow registry and who it is shared with (versions live there)."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    groups: Mapped[list] = mapped_column(JSON, default=list)
    # groups whose members' jobs may add versions (``groups`` may only see and deploy it)
    writer_groups: Mapped[list | None] = mapped_column(JSON, default=list, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class Deployment(Base):
    """An inference service: its declared state. Replicas are reconciled towards it."""

    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    model: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(63))
    runtime: Mapped[dict] = mapped_column(JSON)
    min_replicas: Mapped[int] = mapped_column(Integer)
    max_replicas: Mapped[int] = mapped_column(Integer)
    target_concurrency: Mapped[float] = mapped_column(Float)
    scale_down_delay_seconds: Mapped[int] = mapped_column(Integer, default=30)
    desired_replicas: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    stable_revision: Mapped[str] = mapped_column(String(16))
    canary_revision: Mapped[str | None] = mapped_column(String(16), default=None)
    canary_percent: Mapped[int] = mapped_column(Integer, default=0)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    stopped: Mapped[bool] = mapped_column(default=False)


class Revision(Base):
    """One model version of a deployment (r1, r2, …); a canary is a second live revision."""

    __tablename__ = "revisions"

    deployment: Mapped[str] = mapped_column(
        ForeignKey("deployments.name", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class Replica(Base):
    """A model-server process of a revision."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    deployment: Mapped[str] = mapped_column(
        ForeignKey("deployments.name", ondelete="CASCADE"), index=True
    )
    revision: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="starting")  # starting|ready|draining
    url: Mapped[str | None] = mapped_column(String(255), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    pid_started: Mapped[float | None] = mapped_column(Float, default=None)
    # or the replica on a cluster (the Kubernetes backend's object and slot)
    handle_name: Mapped[str | None] = mapped_column(String(255), default=None, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    ready_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)
    draining_since: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)


class DeploymentEvent(Base):
    """Scaling decisions and their reasons, crashes, canary steps: what users see as events."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(
        ForeignKey("deployments.name", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    replicas: Mapped[int | None] = mapped_column(Integer, default=None)


class CatalogRevision(Base):
    """One version of a catalogue item, kept for ever: what it became, through which change, by
    whom and when. ``data`` is the whole item after the change (None after a deletion)."""

    __tablename__ = "catalog_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    slug: Mapped[str] = mapped_column(String(63))
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # create|update|delete|revert|import
    data: Mapped[dict | None] = mapped_column(JSON, default=None)
    by: Mapped[str] = mapped_column(String(255))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())

    __table_args__ = (
        Index("ux_catalog_revisions_item", "kind", "slug", "revision", unique=True),
    )


class GpuAssignment(Base):
    """A GPU of this machine, by device index, handed to one holder: a dev server
    (``server:USER/NAME``) or a job attempt (``job:ID``). The device is the primary key, so the
    database itself refuses to give one GPU to two holders, whichever process (hub or control
    plane) asks. ``pid`` + ``pid_started`` name the holder's process: the assignment of a process
    that died while nobody watched is reclaimed (``backends.local.gpus.GpuAllocator``)."""

    __tablename__ = "gpu_assignments"

    device: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(255), index=True)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    pid_started: Mapped[float | None] = mapped_column(Float, default=None)
    assigned_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())


class ImageBuild(Base):
    """A custom image built from a Dockerfile (by a real builder; never pretended)."""

    __tablename__ = "image_builds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(63))
    requested_by: Mapped[str] = mapped_column(String(255))
    reference: Mapped[str] = mapped_column(String(255))  # where the result is pushed / tagged
    builder: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)


class WorkloadToken(Base):
    """A token handed to one workload (a job attempt; a model server's storage initializer),
    scoped to what it needs (``workload_tokens.Grant``). Only the token's sha256 is kept: the
    database never holds a credential a reader of it could use."""

    __tablename__ = "workload_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # a model server's: the deployment it serves, and the one version it may read
    # (models:/NAME/VERSION)
    deployment: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    model: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: utcnow())
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=None)
