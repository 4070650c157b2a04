"""The database of a process: SQLite or PostgreSQL, through SQLAlchemy Core.

Both speak the same schema and the same queries; what differs is kept here.

SQLite (a file path): connections run in autocommit mode and every write is an
explicit ``BEGIN IMMEDIATE`` transaction, serialised in the process by a lock,
so a write never has to upgrade a read lock (SQLite answers that with
SQLITE_BUSY at once) and readers on the other pooled connections go on beside
it (WAL). The admin CLI writes to the same file from another process; WAL and
the busy timeout let the two coexist. A new file is created with mode 0600.

PostgreSQL (a ``postgresql://`` URL, the password given apart, never in the
URL): writes are ordinary transactions, reads run in autocommit.

Statements carry account names and key hashes as parameters, so SQLAlchemy is
told to leave parameters out of its error messages.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Literal

import sqlalchemy.exc
from sqlalchemy import Executable, Row, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

Kind = Literal["sqlite", "postgresql"]

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def refused_for_values(exc: BaseException) -> bool:
    """True if the database refused a statement for the values in it, which no
    retry can help: too big for a 64-bit column (SQLite's driver raises
    OverflowError while binding, asyncpg a ValueError), a data exception or a
    broken constraint (SQLSTATE classes 22 and 23: a key that was deleted)."""
    if isinstance(exc, (OverflowError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.DataError)):
        return True
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return isinstance(exc.orig.__cause__, ValueError) or sqlstate[:2] in ("22", "23")


def reason(exc: BaseException) -> str:
    """One line on why a database operation failed: the driver's message,
    without SQLAlchemy's statement and links."""
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else None
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_postgresql(location: str) -> bool:
    return location.startswith(POSTGRESQL_SCHEMES)


def describe(location: str) -> str:
    """``location`` for messages: a path, or the URL without any password."""
    if not is_postgresql(location):
        return location
    return make_url(location).render_as_string(hide_password=True)


class Database:
    """An engine, and the read and write connections the store's queries use."""

    def __init__(self, engine: AsyncEngine, kind: Kind) -> None:
        self.engine = engine
        self.kind = kind
        self._reader = engine if kind == "sqlite" else engine.execution_options(isolation_level="AUTOCOMMIT")
        self._write_lock = asyncio.Lock()
        self.insert: Callable[[Table], Any] = sqlite.insert if kind == "sqlite" else postgresql.insert

    @classmethod
    async def connect(cls, location: str, *, password: str | None = None, timeout: float = 5.0) -> Database:
        """The database at ``location``: a SQLite path, or a PostgreSQL URL.
        ``timeout``: how long SQLite waits for another process's lock, or
        PostgreSQL for a connection."""
        if is_postgresql(location):
            return await cls._postgresql(location, password, timeout)
        return await cls._sqlite(location, timeout)

    @classmethod
    async def _sqlite(cls, path: str, busy_timeout: float) -> Database:
        memory = path == ":memory:"
        if not memory and not os.path.exists(path):
            # Created 0600 before SQLite touches it; SQLite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        engine = create_async_engine(
            URL.create("sqlite+aiosqlite", database=path), isolation_level="AUTOCOMMIT",
            hide_parameters=True, connect_args={"timeout": busy_timeout},
            # Autocommit, and every write ends in COMMIT or ROLLBACK: nothing to reset.
            pool_reset_on_return=None,
            **({"poolclass": StaticPool} if memory else {"pool_size": 4, "max_overflow": 4}))

        @event.listens_for(engine.sync_engine, "connect")
        def _per_connection(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        database = cls(engine, "sqlite")
        try:
            async with engine.connect() as conn:
                await _enable_wal(conn, busy_timeout)
        except BaseException:
            await engine.dispose()
            raise
        return database

    @classmethod
    async def _postgresql(cls, location: str, password: str | None, timeout: float) -> Database:
        url = make_url(location).set(drivername="postgresql+asyncpg")
        if password is not None:
            url = url.set(password=password)
        engine = create_async_engine(
            url, hide_parameters=True, pool_size=5, max_overflow=5, pool_pre_ping=True,
            connect_args={"timeout": timeout, "server_settings": {"application_name": "privatai"}})
        database = cls(engine, "postgresql")
        try:
            async with database.read() as conn:  # fail here, with the reason, not on the first request
                await conn.exec_driver_sql("SELECT 1")
        except BaseException:
            await engine.dispose()
            raise
        return database

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self.kind == "postgresql":
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                try:
                    # Also after a failed COMMIT, which leaves the transaction open.
                    raw = await conn.get_raw_connection()
                    if raw.driver_connection.in_transaction:  # type: ignore[union-attr]
                        await conn.exec_driver_sql("ROLLBACK")
                except BaseException:
                    # Never back into the pool inside a transaction.
                    await conn.invalidate()
                raise

    async def close(self) -> None:
        await self.engine.dispose()


async def _enable_wal(conn: AsyncConnection, timeout: float) -> None:
    """Switch the file to WAL (it stays so), retrying for up to ``timeout`` seconds.

    When several connections open a new file at once, each holds a shared lock
    while it asks for the exclusive one the switch needs, and SQLite answers
    one of them SQLITE_BUSY at once rather than waiting in its busy handler (to
    avoid a deadlock). Once one has switched, the others find WAL already set.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            return
        except sqlalchemy.exc.OperationalError as exc:
            busy = isinstance(exc.orig, sqlite3.Error) and exc.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class Queries:
    """Base of the store's query classes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _rows(self, statement: Executable, parameters: dict[str, Any] | None = None) -> list[Row[Any]]:
        async with self._db.read() as conn:
            return list((await conn.execute(statement, parameters)).all())
