"""The store: one SQLite database of accounts, hashed API keys and daily usage.

:class:`Store` is what the rest of PrivatAI uses; it is put together from the
modules that each do one thing: the schema and its migrations
(:mod:`~privatai.store.schema`), accounts, keys and authentication
(:mod:`~privatai.store.accounts`, cached by :mod:`~privatai.store.auth_cache`),
and usage (:mod:`~privatai.store.usage`). The usage recorder is not part of
it: it writes here through the :class:`~privatai.store.recorder.UsageSink`
interface, and whoever owns both (the app) starts, flushes and stops it.
"""
from __future__ import annotations

from datetime import date

import aiosqlite

from privatai.config import StoreConfig
from privatai.store.accounts import Accounts
from privatai.store.records import UsageRow
from privatai.store.schema import Schema, connect
from privatai.store.usage import UsageQueries


class Store(Accounts, UsageQueries, Schema):
    """The database of one process. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, *, cache_ttl: float, cache_size: int) -> None:
        super().__init__(db, cache_ttl=cache_ttl, cache_size=cache_size)

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 5.0, cache_ttl: float = 2.0,
                   cache_size: int = 10_000) -> Store:
        """Open (creating if needed, owner-only) and migrate the database at ``path``."""
        db = await connect(path, busy_timeout)
        try:
            store = cls(db, cache_ttl=cache_ttl, cache_size=cache_size)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    @classmethod
    async def from_config(cls, config: StoreConfig) -> Store:
        return await cls.open(config.path)

    async def close(self) -> None:
        """Close the connection. Stop the usage recorder first: its last flush writes here."""
        await self._db.close()

    async def usage_report(self, *, account_name: str | None = None, key_reference: str | None = None,
                           since: date | None = None, until: date | None = None,
                           by_model: bool = False) -> list[UsageRow]:
        """Rows for the CLI: per account (no filter) or per key (account or key given)."""
        account_id = (await self.get_account(account_name)).id if account_name is not None else None
        key_id = (await self.find_key(key_reference)).id if key_reference is not None else None
        return await self._usage_rows(account_id, key_id, since, until, by_model)
