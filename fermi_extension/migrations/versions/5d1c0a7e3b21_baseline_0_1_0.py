"""The baseline: the schema of Fermi 0.1.0 (commit cfe7d33), the last made by ``create_all``
and hand ``ALTER TABLE`` statements.

A fresh database gets every table. A database made by an earlier version has no
``alembic_version``: its missing tables are made, and the nullable columns and indexes added to
existing tables since are added, as the hand migrations did; then it is stamped here. The
tables are spelled out (not taken from ``fermi_extension.db``) so that this revision keeps
meaning 0.1.0 when the models change.

Revision ID: 5d1c0a7e3b21
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "5d1c0a7e3b21"
down_revision = None
branch_labels = None
depends_on = None

baseline = sa.MetaData()

sa.Table('audit_events', baseline,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_kind', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.String(length=255), nullable=False),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_audit_events_actor', 'actor'),
    sa.Index('ix_audit_events_at', 'at'),
)

sa.Table('catalog_items', baseline,
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('slug', sa.String(length=63), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('updated_by', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'slug'),
)

sa.Table('catalog_revisions', baseline,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('slug', sa.String(length=63), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ux_catalog_revisions_item', 'kind', 'slug', 'revision', unique=True),
)

sa.Table('datasets', baseline,
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    sa.Index('ix_datasets_owner', 'owner'),
)

sa.Table('deployments', baseline,
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('engine', sa.String(length=32), nullable=False),
    sa.Column('profile', sa.String(length=63), nullable=False),
    sa.Column('runtime', sa.JSON(), nullable=False),
    sa.Column('min_replicas', sa.Integer(), nullable=False),
    sa.Column('max_replicas', sa.Integer(), nullable=False),
    sa.Column('target_concurrency', sa.Float(), nullable=False),
    sa.Column('scale_down_delay_seconds', sa.Integer(), nullable=False),
    sa.Column('desired_replicas', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('stable_revision', sa.String(length=16), nullable=False),
    sa.Column('canary_revision', sa.String(length=16), nullable=True),
    sa.Column('canary_percent', sa.Integer(), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('stopped', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    sa.Index('ix_deployments_owner', 'owner'),
)

sa.Table('gpu_assignments', baseline,
    sa.Column('device', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_started', sa.Float(), nullable=True),
    sa.Column('assigned_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('device'),
    sa.Index('ix_gpu_assignments_holder', 'holder'),
)

sa.Table('group_members', baseline,
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('group', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('user', 'group'),
    sa.Index('ix_group_members_group', 'group'),
)

sa.Table('image_builds', baseline,
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('slug', sa.String(length=63), nullable=False),
    sa.Column('requested_by', sa.String(length=255), nullable=False),
    sa.Column('reference', sa.String(length=255), nullable=False),
    sa.Column('builder', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
)

sa.Table('jobs', baseline,
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('image', sa.String(length=63), nullable=False),
    sa.Column('profile', sa.String(length=63), nullable=False),
    sa.Column('pool', sa.String(length=63), nullable=False),
    sa.Column('runtime', sa.JSON(), nullable=False),
    sa.Column('notebook_name', sa.String(length=255), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('timeout_seconds', sa.Integer(), nullable=True),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('retry_of', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_started', sa.Float(), nullable=True),
    sa.Column('handle_name', sa.String(length=255), nullable=True),
    sa.Column('progress', sa.JSON(), nullable=False),
    sa.Column('tracking_run_id', sa.String(length=64), nullable=True),
    sa.Column('tracking_experiment_id', sa.String(length=64), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('models', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_jobs_created', 'created_at', 'id'),
    sa.Index('ix_jobs_owner_created', 'owner', 'created_at'),
    sa.Index('ix_jobs_status_priority', 'status', 'priority', 'created_at'),
)

sa.Table('quotas', baseline,
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=True),
    sa.Column('running_jobs', sa.Integer(), nullable=True),
    sa.Column('deployments', sa.Integer(), nullable=True),
    sa.Column('monthly_spend', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('updated_by', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'subject'),
)

sa.Table('registered_models', baseline,
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('writer_groups', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    sa.Index('ix_registered_models_owner', 'owner'),
)

sa.Table('schedules', baseline,
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('owner_groups', sa.JSON(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('cron', sa.String(length=128), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('next_run_at', sa.DateTime(), nullable=False),
    sa.Column('last_job_id', sa.String(length=32), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('runs', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_schedules_next_run_at', 'next_run_at'),
    sa.Index('ix_schedules_owner', 'owner'),
)

sa.Table('usage_records', baseline,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('profile', sa.String(length=63), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('price_per_hour', sa.Float(), nullable=False),
    sa.Column('cost', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_usage_records_user', 'user'),
)

sa.Table('workflow_runs', baseline,
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workflow_id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_workflow_runs_status', 'status'),
    sa.Index('ix_workflow_runs_workflow_id', 'workflow_id'),
)

sa.Table('workflows', baseline,
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('owner_groups', sa.JSON(), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_workflows_owner', 'owner'),
)

sa.Table('dataset_versions', baseline,
    sa.Column('dataset', sa.String(length=63), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['dataset'], ['datasets.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset', 'version'),
)

sa.Table('deployment_events', baseline,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=63), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('replicas', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['deployment'], ['deployments.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_deployment_events_deployment', 'deployment'),
)

sa.Table('job_events', baseline,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_job_events_job_id', 'job_id'),
)

sa.Table('replicas', baseline,
    sa.Column('id', sa.String(length=96), nullable=False),
    sa.Column('deployment', sa.String(length=63), nullable=False),
    sa.Column('revision', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('url', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_started', sa.Float(), nullable=True),
    sa.Column('handle_name', sa.String(length=255), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ready_at', sa.DateTime(), nullable=True),
    sa.Column('draining_since', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['deployment'], ['deployments.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_replicas_deployment', 'deployment'),
)

sa.Table('revisions', baseline,
    sa.Column('deployment', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=16), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['deployment'], ['deployments.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('deployment', 'name'),
)

def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in baseline.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"The table {table.name} lacks the column {column.name}, which cannot be "
                    "added empty: this database was not made by a Fermi version that can be "
                    "upgraded. Restore a backup made by Fermi 0.1.0, or start a new data dir.")
            op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(baseline.sorted_tables):
        table.drop(bind, checkfirst=True)
