"""Account statuses for plans and billing: active, past_due, inactive, pending, suspended.

Only the CHECK constraint on accounts.status widens; no row changes. On
SQLite a CHECK lives in the table's CREATE text and the table cannot be
rebuilt here (foreign keys are on and this runs inside the migration's
transaction, where they cannot be turned off), so the CREATE text is edited
as SQLite documents for constraint changes that do not touch stored data
(https://www.sqlite.org/lang_altertable.html, "otherwise").

Revision ID: 0003
Revises: 0001
"""
from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD = "status IN ('active', 'suspended')"
NEW = "status IN ('active', 'past_due', 'inactive', 'pending', 'suspended')"


def _sqlite_check(old: str, new: str) -> None:
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'accounts'",
                         (old, new))
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_check(OLD, NEW)
        return
    op.drop_constraint("accounts_status", "accounts", type_="check")
    op.create_check_constraint("accounts_status", "accounts", NEW)


def downgrade() -> None:
    op.execute("UPDATE accounts SET status = 'suspended' WHERE status NOT IN ('active', 'suspended')")
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_check(NEW, OLD)
        return
    op.drop_constraint("accounts_status", "accounts", type_="check")
    op.create_check_constraint("accounts_status", "accounts", OLD)
