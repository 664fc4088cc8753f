"""Workload tokens for model servers: the deployment a token serves and the one model version
(models:/NAME/VERSION) it may read, for the storage initializer of a revision on Kubernetes.

Revision ID: 3f7a9c1d2b64
Revises: 8c41f2b9d7e5
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "3f7a9c1d2b64"
down_revision = "8c41f2b9d7e5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the previous revision creates the table with today's columns where it made it itself
    # (a database adopted without a revision, see the baseline)
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("workload_tokens")}
    if {"deployment", "model"} <= columns:
        return
    with op.batch_alter_table("workload_tokens") as batch:
        batch.add_column(sa.Column("deployment", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("model", sa.String(length=255), nullable=True))
        batch.create_index("ix_workload_tokens_deployment", ["deployment"])


def downgrade() -> None:
    with op.batch_alter_table("workload_tokens") as batch:
        batch.drop_index("ix_workload_tokens_deployment")
        batch.drop_column("model")
        batch.drop_column("deployment")
