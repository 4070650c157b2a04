"""The schema: one set of tables for SQLite and PostgreSQL.

Data minimisation is part of the product: keys are stored only as SHA-256,
usage only as per-key, per-UTC-day, per-model sums. There are no per-request
rows, no client addresses and no content anywhere in the schema. The people
who sign up on the website are an e-mail address and an Argon2id hash;
their sessions and mailed links are kept only as SHA-256 of the token.

Times are ISO-8601 text in UTC (``2025-06-01T12:00:00``) and days
``YYYY-MM-DD``, on both databases, so that comparisons and period filters are
the same query everywhere. The tables change only through a migration in
``migrations/versions`` (:mod:`privatai.store.migrate`); this module is what
the queries and the migration checks see.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, CheckConstraint, Column, ForeignKey, Index, Integer, MetaData,
                        PrimaryKeyConstraint, Table, Text, UniqueConstraint, func, text)

metadata = MetaData()

# Shared with billing: active | past_due (served, payment grace) | inactive (no
# subscription) | pending (awaiting the operator) | suspended (by the operator).
ACCOUNT_STATUSES = ("active", "past_due", "inactive", "pending", "suspended")
ROLES = ("owner", "admin", "member")

# Sums of tokens and requests: 64-bit on both (SQLite's INTEGER always is).
Count = BigInteger().with_variant(Integer(), "sqlite")
# Account names are unique whatever their case: in SQLite by the column's
# NOCASE collation, in PostgreSQL by a unique index on lower(name).
Name = Text().with_variant(Text(collation="NOCASE"), "sqlite")

accounts = Table(
    "accounts", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Name, nullable=False),
    Column("plan", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("created", Text, nullable=False),
    CheckConstraint(f"status IN ({', '.join(repr(s) for s in ACCOUNT_STATUSES)})", name="accounts_status"),
    UniqueConstraint("name").ddl_if(dialect="sqlite"),
)
Index("accounts_name_lower", func.lower(accounts.c.name), unique=True).ddl_if(dialect="postgresql")

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("label", Text, nullable=False, server_default=""),
    Column("prefix", Text, nullable=False),
    Column("sha256", Text, nullable=False, unique=True),
    Column("created", Text, nullable=False),
    Column("last_used", Text),
    Column("revoked_at", Text),
    Column("expires_at", Text),
)
Index("api_keys_account", api_keys.c.account_id)
Index("api_keys_prefix", api_keys.c.prefix)

usage_daily = Table(
    "usage_daily", metadata,
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("day", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("requests", Count, nullable=False, server_default=text("0")),
    Column("prompt_tokens", Count, nullable=False, server_default=text("0")),
    Column("completion_tokens", Count, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("key_id", "day", "model", name="usage_daily_pkey"),
    sqlite_with_rowid=False,
)
Index("usage_daily_day", usage_daily.c.day)

# One row (id 1): a number every change to a key or an account adds one to,
# in the same transaction. Every server process polls it and clears its
# authentication cache when it moves, so a revocation reaches every worker
# and every instance within the poll interval (privatai.store.changes).
auth_changes = Table(
    "auth_changes", metadata,
    Column("id", Integer, primary_key=True),
    Column("counter", Count, nullable=False, server_default=text("0")),
)

# People: an e-mail address (stored lower case, unique) and an Argon2id hash.
users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("confirmed_at", Text),
    # The TOTP secret while a second factor is on, and the last time step used
    # (a code is accepted once).
    Column("totp_secret", Text),
    Column("totp_last_step", Count),
    Column("is_admin", Integer, nullable=False, server_default=text("0")),
    # Ids never come back after a deletion: the audit log names people by id.
    sqlite_autoincrement=True,
)

memberships = Table(
    "memberships", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("role", Text, nullable=False),
    Column("created", Text, nullable=False),
    PrimaryKeyConstraint("account_id", "user_id", name="memberships_pkey"),
    CheckConstraint(f"role IN ({', '.join(repr(r) for r in ROLES)})", name="memberships_role"),
)
Index("memberships_user", memberships.c.user_id)

# A login: only the SHA-256 of the cookie's token is stored.
sessions = Table(
    "sessions", metadata,
    Column("token_sha256", Text, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("created", Text, nullable=False),
    Column("expires", Text, nullable=False),
    Column("last_seen", Text, nullable=False),
    # Password given, TOTP code still owed: the session opens nothing else.
    Column("second_factor_pending", Integer, nullable=False, server_default=text("0")),
)
Index("sessions_user", sessions.c.user_id)

# Links mailed to a person (confirm the address, reset the password).
user_tokens = Table(
    "user_tokens", metadata,
    Column("token_sha256", Text, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("expires", Text, nullable=False),
    CheckConstraint("purpose IN ('confirm', 'reset')", name="user_tokens_purpose"),
)
Index("user_tokens_user", user_tokens.c.user_id)

invites = Table(
    "invites", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("email", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_sha256", Text, nullable=False, unique=True),
    Column("created", Text, nullable=False),
    Column("expires", Text, nullable=False),
    CheckConstraint("role IN ('admin', 'member')", name="invites_role"),
)
Index("invites_account", invites.c.account_id)

# What operators (and owners deleting accounts) did: who, what, to which
# record, when. Never content, never an e-mail address: ids only.
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True),
    Column("created", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
)
Index("audit_log_created", audit_log.c.created)

# The recorder's batches already added to usage_daily, written in the same
# transaction: a batch retried after a failure whose outcome was unknown (the
# connection dropped during COMMIT) is recognised and not counted twice.
usage_batches = Table(
    "usage_batches", metadata,
    Column("id", Text, primary_key=True),
    Column("written", Text, nullable=False),
)
Index("usage_batches_written", usage_batches.c.written)

# Billing (Stripe): an account's customer and the subscription state the last
# event left; the webhook events already applied, by id, so that a replay
# changes nothing; and the daily token sums reported as meter events.
billing_customers = Table(
    "billing_customers", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("customer_id", Text, nullable=False, unique=True),
    Column("subscription_id", Text),
    Column("subscription_status", Text),
    Column("grace_until", Text),
    Column("metered_since", Text),
    Column("updated", Text, nullable=False),
)

billing_events = Table(
    "billing_events", metadata,
    Column("event_id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("received", Text, nullable=False),
)

billing_meter_reports = Table(
    "billing_meter_reports", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("day", Text, nullable=False),
    Column("tokens", Count, nullable=False),
    Column("reported", Text, nullable=False),
    PrimaryKeyConstraint("account_id", "day", name="billing_meter_reports_pkey"),
)
