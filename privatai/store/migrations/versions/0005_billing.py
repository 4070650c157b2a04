"""Billing: the account statuses a subscription moves, Stripe customers, applied
webhook events and reported meter days.

The account status check grows to the whole vocabulary (active, past_due,
pending, inactive, suspended). PostgreSQL replaces the named constraint. SQLite
cannot alter a constraint, and rebuilding ``accounts`` is impossible inside the
migration's transaction while foreign keys are on (dropping the old table
orphans every key), so the stored CREATE TABLE text is rewritten in place, the
procedure SQLite documents for changes that leave the stored rows valid: every
existing row satisfies the wider check. Both forms replace whatever list the
check had, so running this after another revision that widened it is harmless.

Revision ID: 0005
Revises: 0001
"""
from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

STATUSES = ("active", "past_due", "pending", "inactive", "suspended")
_CHECK = "status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES))
_SQLITE_CHECK = re.compile(r"CHECK \(status IN \([^)]*\)\)")


def _widen_status_check() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.execute("ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_status")
        op.execute(f"ALTER TABLE accounts ADD CONSTRAINT accounts_status CHECK ({_CHECK})")
        return
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'accounts'").scalar()
    new_sql, count = _SQLITE_CHECK.subn(f"CHECK ({_CHECK})", sql)
    if count != 1:
        raise RuntimeError("accounts table: status check not found where expected")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'accounts'",
                         (new_sql,))
    # A new schema cookie makes every connection re-read the schema.
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _widen_status_check()
    op.create_table(
        "billing_customers",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False, unique=True),
        sa.Column("subscription_id", sa.Text),
        sa.Column("subscription_status", sa.Text),
        sa.Column("grace_until", sa.Text),
        sa.Column("metered_since", sa.Text),
        sa.Column("updated", sa.Text, nullable=False),
    )
    op.create_table(
        "billing_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("received", sa.Text, nullable=False),
    )
    op.create_table(
        "billing_meter_reports",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("day", sa.Text, nullable=False),
        sa.Column("tokens", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("reported", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "day", name="billing_meter_reports_pkey"),
    )


def downgrade() -> None:
    op.drop_table("billing_meter_reports")
    op.drop_table("billing_events")
    op.drop_table("billing_customers")
