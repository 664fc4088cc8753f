"""Workload tokens: the scoped tokens jobs reach the tracking server with (their sha256 only).

Revision ID: 8c41f2b9d7e5
Revises: 5d1c0a7e3b21
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8c41f2b9d7e5"
down_revision = "5d1c0a7e3b21"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database adopted without a revision (see the baseline) may hold the table already
    if "workload_tokens" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "workload_tokens",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("workload_tokens") as batch:
        batch.create_index("ix_workload_tokens_job_id", ["job_id"])


def downgrade() -> None:
    with op.batch_alter_table("workload_tokens") as batch:
        batch.drop_index("ix_workload_tokens_job_id")
    op.drop_table("workload_tokens")
