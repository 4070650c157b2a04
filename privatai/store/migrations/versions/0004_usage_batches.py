"""Batches of usage already written, so that a retried batch is not counted twice.

Revision ID: 0004_usage_batches
Revises: 0003_auth_changes
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_usage_batches"
down_revision = "0003_auth_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("usage_batches",
                    sa.Column("id", sa.Text(), primary_key=True),
                    sa.Column("written", sa.Text(), nullable=False))
    op.create_index("usage_batches_written", "usage_batches", ["written"])


def downgrade() -> None:
    op.drop_index("usage_batches_written", table_name="usage_batches")
    op.drop_table("usage_batches")
