"""People on the website: users, memberships, sessions, mailed links,
invitations, the audit log; accounts get billing's status vocabulary.

Revision ID: 0002_accounts
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_accounts"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_STATUS = "CHECK (status IN ('active', 'suspended'))"
NEW_STATUS = "CHECK (status IN ('active', 'past_due', 'inactive', 'pending', 'suspended'))"


def _widen_status_check() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("accounts_status", "accounts", type_="check")
        op.create_check_constraint("accounts_status", "accounts", NEW_STATUS[7:-1])
        return
    # SQLite cannot alter a CHECK. A wider one changes nothing stored, so the
    # table's text is edited in place, as SQLite's documentation allows for
    # such changes; copying the table instead would need foreign keys off,
    # which cannot change inside the migration's transaction.
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'accounts'",
                         (OLD_STATUS, NEW_STATUS))
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _widen_status_check()
    count = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("confirmed_at", sa.Text),
        sa.Column("totp_secret", sa.Text),
        sa.Column("totp_last_step", count),
        sa.Column("is_admin", sa.Integer, nullable=False, server_default=sa.text("0")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "memberships",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "user_id", name="memberships_pkey"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="memberships_role"),
    )
    op.create_index("memberships_user", "memberships", ["user_id"])
    op.create_table(
        "sessions",
        sa.Column("token_sha256", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("expires", sa.Text, nullable=False),
        sa.Column("last_seen", sa.Text, nullable=False),
        sa.Column("second_factor_pending", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("sessions_user", "sessions", ["user_id"])
    op.create_table(
        "user_tokens",
        sa.Column("token_sha256", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("expires", sa.Text, nullable=False),
        sa.CheckConstraint("purpose IN ('confirm', 'reset')", name="user_tokens_purpose"),
    )
    op.create_index("user_tokens_user", "user_tokens", ["user_id"])
    op.create_table(
        "invites",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("expires", sa.Text, nullable=False),
        sa.CheckConstraint("role IN ('admin', 'member')", name="invites_role"),
    )
    op.create_index("invites_account", "invites", ["account_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
    )
    op.create_index("audit_log_created", "audit_log", ["created"])


def downgrade() -> None:
    for table in ("audit_log", "invites", "user_tokens", "sessions", "memberships", "users"):
        op.drop_table(table)
