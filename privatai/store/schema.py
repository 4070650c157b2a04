"""The schema, its migrations, and opening a database file ready for use.

Data minimisation is part of the product: keys are stored only as SHA-256,
usage only as per-key, per-UTC-day, per-model sums. There are no per-request
rows, no client addresses and no content anywhere in the schema.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import aiosqlite

from privatai.store.connection import Connection
from privatai.store.names import AdminError

# Each step runs once, in its own transaction, and bumps PRAGMA user_version.
# Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
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
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


async def connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    """A connection to ``path`` (created owner-only if new) in WAL mode."""
    if path != ":memory:" and not os.path.exists(path):
        # Created 0600 before SQLite touches it; SQLite gives -wal/-shm the same mode.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await _enable_wal(db, busy_timeout)
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await db.close()
        raise
    return db


async def _enable_wal(db: aiosqlite.Connection, timeout: float) -> None:
    """Switch the file to WAL, retrying for up to ``timeout`` seconds.

    When several connections open a new file at once, each holds a shared lock
    while it asks for the exclusive one the switch needs, and SQLite answers
    one of them SQLITE_BUSY at once rather than waiting in its busy handler (to
    avoid a deadlock). Once one has switched, the others find WAL already set.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class Schema(Connection):
    """The schema version, and the migrations up to this release's."""

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        found = await self.schema_version()
        if found > SCHEMA_VERSION:
            raise AdminError(f"database schema version {found} is newer than this PrivatAI "
                             f"supports ({SCHEMA_VERSION}); upgrade PrivatAI")
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= found:
                continue
            async with self._transaction() as db:
                # Checked again under BEGIN IMMEDIATE's write lock: another
                # process (the server, the CLI) may have migrated meanwhile.
                if await self.schema_version() >= version:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {version}")
