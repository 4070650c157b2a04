"""The store: accounts, hashed API keys and daily usage, in SQLite or PostgreSQL.

:class:`Store` is what the rest of PrivatAI uses; it is put together from the
modules that each do one thing: the connection (:mod:`~privatai.store.connection`),
the schema and its migrations (:mod:`~privatai.store.schema`,
:mod:`~privatai.store.migrate`), accounts, keys and authentication
(:mod:`~privatai.store.accounts`, cached by :mod:`~privatai.store.auth_cache`),
usage (:mod:`~privatai.store.usage`) and billing (:mod:`~privatai.store.billing`).
The usage recorder is not part of it: it writes here through the :class:`~privatai.store.recorder.UsageSink`
interface, and whoever owns both (the app) starts, flushes and stops it.
"""
from __future__ import annotations

import asyncio
import os
from datetime import date

import sqlalchemy.exc

from privatai.config import StoreConfig
from privatai.store.accounts import Accounts
from privatai.store.billing import BillingQueries
from privatai.store.connection import Database, describe, reason
from privatai.store.migrate import Migration, current_revision, migrate
from privatai.store.names import StoreUnavailable
from privatai.store.records import UsageRow
from privatai.store.usage import UsageQueries


class Store(Accounts, UsageQueries, BillingQueries):
    """The database of one process. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, db: Database, *, cache_ttl: float, cache_size: int, grace: float = 0.0) -> None:
        super().__init__(db, cache_ttl=cache_ttl, cache_size=cache_size, grace=grace)
        self.migration: Migration | None = None

    @classmethod
    async def open(cls, location: str, *, password: str | None = None, busy_timeout: float = 5.0,
                   cache_ttl: float = 2.0, cache_size: int = 10_000, grace: float = 0.0) -> Store:
        """Open and migrate the database at ``location``: a SQLite file path
        (created owner-only if new) or a ``postgresql://`` URL without password.
        ``grace``: seconds a known key keeps working from the cache while the database is down."""
        db = await Database.connect(location, password=password, timeout=busy_timeout)
        try:
            store = cls(db, cache_ttl=cache_ttl, cache_size=cache_size, grace=grace)
            store.migration = await migrate(db)
        except BaseException:
            await db.close()
            raise
        return store

    @classmethod
    async def from_config(cls, config: StoreConfig, *, grace: float = 0.0) -> Store:
        """The store ``config`` names; a PostgreSQL password comes from ``config.password_env``.
        StoreUnavailable (one line: where and why) if it cannot be opened."""
        location = config.location
        password = None
        if config.url is not None and config.password_env is not None:
            password = os.environ.get(config.password_env)
            if password is None:
                raise StoreUnavailable(f"cannot open the database {describe(location)}: the environment "
                                       f"variable {config.password_env} (store.password_env) is not set")
        try:
            return await cls.open(location, password=password, cache_ttl=config.auth_cache_ttl, grace=grace)
        except (sqlalchemy.exc.SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"cannot open the database {describe(location)}: {reason(exc)}") from None

    @property
    def database(self) -> Database:
        """The connection, for watchers that share it (:mod:`privatai.store.changes`)."""
        return self._db

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    async def reachable(self, timeout: float = 1.0) -> bool:
        """Whether the database answers a trivial query within ``timeout`` (for /readyz)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._db.read() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except (sqlalchemy.exc.SQLAlchemyError, OSError, asyncio.TimeoutError):
            return False
        return True

    async def schema_revision(self) -> str | None:
        return await current_revision(self._db)

    async def close(self) -> None:
        """Close the connections. Stop the usage recorder first: its last flush writes here."""
        await self._db.close()

    async def usage_report(self, *, account_name: str | None = None, key_reference: str | None = None,
                           since: date | None = None, until: date | None = None,
                           by_model: bool = False) -> list[UsageRow]:
        """Rows for the CLI: per account (no filter) or per key (account or key given)."""
        account_id = (await self.get_account(account_name)).id if account_name is not None else None
        key_id = (await self.find_key(key_reference)).id if key_reference is not None else None
        return await self._usage_rows(account_id, key_id, since, until, by_model)
