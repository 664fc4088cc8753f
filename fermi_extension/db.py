"""Platform state in a database through SQLAlchemy (SQLite by default, PostgreSQL in production).

Everything a user or an operator relies on lives here, so that any process can die and a new one
picks up where it stopped. Job processes also write their own outcome into their job folder, which
is how a job that finished while the control plane was down is still accounted for.
"""

from __future__ import annotations

import datetime as dt
import uuid

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


def platform_db_url_from_env() -> str:
    """Where every platform process (hub, spawner, culler, control plane) finds the database:
    $FERMI_DB_URL, else the SQLite file of $FERMI_DATA_DIR (empty when neither is set)."""
    import os

    if os.environ.get("FERMI_DB_URL"):
        return os.environ["FERMI_DB_URL"]
    data = os.environ.get("FERMI_DATA_DIR")
    return f"sqlite:///{os.path.join(data, 'fermi.sqlite')}" if data else ""


def make_session_factory(url: str) -> sessionmaker:
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

    Base.metadata.create_all(engine)
    add_missing_nullable_columns(engine)
    return sessionmaker(engine, expire_on_commit=False)


def add_missing_nullable_columns(engine) -> None:
    """A database made by an earlier version lacks the nullable columns added since
    (``create_all`` makes only missing tables): add them, empty."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable and not column.primary_key:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(
                        f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


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
