"""The one database connection of a process, and its write transactions.

One aiosqlite connection per process, in autocommit mode; every write is an
explicit ``BEGIN IMMEDIATE`` transaction serialised by a lock, because
coroutines share the connection and SQLite has one transaction per
connection. The admin CLI writes to the same file from another process; WAL
and ``busy_timeout`` let the two coexist.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiosqlite


class Connection:
    """Base of the store's query classes: reads, and serialised write transactions."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT, which leaves the transaction open.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def _fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())
