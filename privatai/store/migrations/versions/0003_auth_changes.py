"""auth_changes: the change counter every key and account change adds one to.

Revision ID: 0003_auth_changes
Revises: 0002_accounts
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_auth_changes"
down_revision = "0002_accounts"
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
