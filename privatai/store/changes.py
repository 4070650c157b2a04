"""Revocation and suspension reach every server process within a second.

Each process caches authentication outcomes (:mod:`privatai.store.auth_cache`).
A change made elsewhere (the admin CLI, another worker, another instance, the
portal) adds one to the ``auth_changes`` counter in the same transaction as
the change itself (:func:`bump`); every process reads the counter every
``POLL_INTERVAL`` seconds (:class:`ChangeWatcher`) and clears its cache when
it has moved. One indexed one-row read per process and interval, the same on
SQLite and PostgreSQL; a Redis publication can come on top to make it faster.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from privatai.ops.logs import describe_error
from privatai.store.connection import Database
from privatai.store.schema import auth_changes

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
_BUMP = update(auth_changes).where(auth_changes.c.id == 1).values(counter=auth_changes.c.counter + 1)
_READ = select(auth_changes.c.counter).where(auth_changes.c.id == 1)


async def bump(conn: AsyncConnection) -> None:
    """Mark a change to keys or accounts; call inside the change's write transaction."""
    await conn.execute(_BUMP)


async def read(db: Database) -> int | None:
    async with db.read() as conn:
        return (await conn.execute(_READ)).scalar()


class ChangeWatcher:
    """Polls the counter and calls ``on_change`` whenever it has moved."""

    def __init__(self, db: Database, on_change: Callable[[], None], interval: float = POLL_INTERVAL) -> None:
        self._db = db
        self._on_change = on_change
        self._interval = interval
        self._seen: int | None = None

    async def check(self) -> None:
        counter = await read(self._db)
        if self._seen is not None and counter != self._seen:
            self._on_change()
        self._seen = counter

    async def run(self) -> None:
        """Poll until cancelled; a failed read is retried, and the cache's TTL
        still bounds how long a change can go unseen meanwhile."""
        failing = False
        while True:
            try:
                await self.check()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("cannot read the key change counter, will retry: %s", describe_error(exc))
                failing = True
            await asyncio.sleep(self._interval)
