"""Billing: Stripe customers, applied webhook events and reported meter days.

The account statuses billing moves (active, past_due, inactive) are allowed
by 0002_accounts, which widened the status check.

Revision ID: 0005_billing
Revises: 0004_usage_batches
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_billing"
down_revision = "0004_usage_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
