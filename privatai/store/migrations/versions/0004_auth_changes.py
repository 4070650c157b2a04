"""auth_changes: the change counter every key and account change adds one to.

Revision ID: 0004
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "auth_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("counter", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  server_default=sa.text("0")),
    )
    op.bulk_insert(table, [{"id": 1, "counter": 0}])


def downgrade() -> None:
    op.drop_table("auth_changes")
