"""The schema of release 0.1.0: accounts, API keys, daily usage.

On SQLite this is the DDL release 0.1.0 ran, word for word, so a new file and
one made by that release (PRAGMA user_version 1, stamped with this revision
rather than migrated) have the same schema. PostgreSQL gets the same tables in
its types; names are unique whatever their case through an index on
lower(name), as SQLite's NOCASE column makes them.

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Byte for byte as that release ran it (SQLite keeps the text of each CREATE).
RELEASE_0_1_SQLITE = (
    """CREATE TABLE accounts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            plan TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
            created TEXT NOT NULL
        )""",
    """CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            label TEXT NOT NULL DEFAULT '',
            prefix TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,
            last_used TEXT,
            revoked_at TEXT,
            expires_at TEXT
        )""",
    "CREATE INDEX api_keys_account ON api_keys(account_id)",
    "CREATE INDEX api_keys_prefix ON api_keys(prefix)",
    """CREATE TABLE usage_daily (
            key_id INTEGER NOT NULL REFERENCES api_keys(id),
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day, model)
        ) WITHOUT ROWID""",
    "CREATE INDEX usage_daily_day ON usage_daily(day)",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in RELEASE_0_1_SQLITE:
            op.execute(statement)
        return
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("created", sa.Text, nullable=False),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="accounts_status"),
    )
    op.create_index("accounts_name_lower", "accounts", [sa.text("lower(name)")], unique=True)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False, unique=True),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("last_used", sa.Text),
        sa.Column("revoked_at", sa.Text),
        sa.Column("expires_at", sa.Text),
    )
    op.create_index("api_keys_account", "api_keys", ["account_id"])
    op.create_index("api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "usage_daily",
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("day", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("key_id", "day", "model", name="usage_daily_pkey"),
    )
    op.create_index("usage_daily_day", "usage_daily", ["day"])


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("api_keys")
    op.drop_table("accounts")
