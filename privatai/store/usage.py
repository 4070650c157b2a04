"""Usage aggregates: the recorder's additive writes, pruning, and the reports.

Usage is kept only as sums per key, UTC day and model. A batch is added with
one upsert per row (``ON CONFLICT ... DO UPDATE SET x = x + excluded.x``, the
same statement on SQLite and PostgreSQL) in one transaction, so writes from
any number of processes add up exactly. The batch's id goes into
``usage_batches`` in that transaction: a batch retried after a failure that
may have committed (the connection dropped during COMMIT) adds nothing twice.
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import BigInteger, ColumnElement, bindparam, cast, delete, func, null, or_, select, update

from privatai.store.connection import Database, Queries, refused_for_values
from privatai.store.records import UsageRow, utc_now
from privatai.store.recorder import Batch, Refused
from privatai.store.schema import accounts, api_keys, usage_batches, usage_daily

_COUNTS = ("requests", "prompt_tokens", "completion_tokens")
BATCH_ID_DAYS = 7
_SET_LAST_USED = (update(api_keys)
                  .where(api_keys.c.id == bindparam("key"),
                         or_(api_keys.c.last_used.is_(None), api_keys.c.last_used < bindparam("when")))
                  .values(last_used=bindparam("when")))


def _sum(column: Any) -> Any:
    # PostgreSQL sums bigints as numeric; back to a 64-bit integer on both.
    return cast(func.sum(column), BigInteger)


class UsageQueries(Queries):
    """Usage of the store; see :class:`privatai.store.database.Store`."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        upsert = db.insert(usage_daily)
        self._add_usage = upsert.on_conflict_do_update(
            index_elements=[usage_daily.c.key_id, usage_daily.c.day, usage_daily.c.model],
            set_={name: usage_daily.c[name] + upsert.excluded[name] for name in _COUNTS})
        self._claim_batch = (db.insert(usage_batches).on_conflict_do_nothing(index_elements=[usage_batches.c.id])
                             .returning(usage_batches.c.id))

    async def write_usage(self, batch: Batch) -> list[Refused]:
        """Add a recorder batch to the aggregates in one transaction.

        Returns the rows the database refused for their values (a number out
        of range, a key that no longer exists): the others are written all the
        same, so one bad row never blocks everybody's usage. Any other error
        (the database is locked or down, the disk full) raises and writes nothing.
        A batch whose id was written before is not added again.
        """
        rows = [(key, {"key_id": key[0], "day": key[1], "model": key[2], "requests": c.requests,
                       "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens})
                for key, c in batch.counts.items()]
        last_used = [{"key": key_id, "when": when} for key_id, when in batch.last_used.items()]
        try:
            async with self._db.write() as conn:
                if not await self._claimed(conn, batch):
                    return []
                if rows:
                    await conn.execute(self._add_usage, [values for _, values in rows])
                if last_used:
                    await conn.execute(_SET_LAST_USED, last_used)
            return []
        except Exception as exc:
            if not refused_for_values(exc):
                raise
        refused = []
        async with self._db.write() as conn:
            if not await self._claimed(conn, batch):
                return []
            for key, values in rows:
                await conn.exec_driver_sql("SAVEPOINT usage_row")
                try:
                    await conn.execute(self._add_usage, values)
                except Exception as exc:
                    if not refused_for_values(exc):
                        raise
                    await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT usage_row")
                    # The one foreign key of a usage row is its key's.
                    refused.append(Refused(key, gone=isinstance(exc, sqlalchemy.exc.IntegrityError)))
                await conn.exec_driver_sql("RELEASE SAVEPOINT usage_row")
            if last_used:
                await conn.execute(_SET_LAST_USED, last_used)
        return refused

    async def _claimed(self, conn: Any, batch: Batch) -> bool:
        """Note the batch as written, in the caller's transaction; False if it was before."""
        if not batch.id:
            return True
        claimed = await conn.execute(self._claim_batch, {"id": batch.id, "written": utc_now().isoformat()})
        return claimed.first() is not None

    async def prune_usage(self, retention_days: int) -> int:
        """Delete usage of UTC days older than ``retention_days``; returns rows deleted.
        Batch ids go after a week: a retry comes within a process's lifetime."""
        cutoff = (utc_now().date() - timedelta(days=retention_days)).isoformat()
        async with self._db.write() as conn:
            await conn.execute(delete(usage_batches).where(
                usage_batches.c.written < (utc_now() - timedelta(days=BATCH_ID_DAYS)).isoformat()))
            return (await conn.execute(delete(usage_daily).where(usage_daily.c.day < cutoff))).rowcount

    async def usage_for_key(self, key_id: int, since: date | None = None, until: date | None = None,
                            by_model: bool = False) -> dict[str, Any]:
        """The seed's ``/usage`` JSON for one key: days inclusive, UTC; ``last_used``
        is the key's latest use whatever the period (days carry no time of day).
        Usage still in a recorder's memory is not in it: flush that first."""
        last_used = await self._rows(select(api_keys.c.last_used).where(api_keys.c.id == key_id))
        return await self._usage_json(usage_daily.c.key_id == key_id, since, until, by_model,
                                      last_used[0][0] if last_used else None)

    async def usage_for_account(self, account_id: int, since: date | None = None,
                                until: date | None = None, by_model: bool = False) -> dict[str, Any]:
        """The seed's ``/usage`` JSON summed over all keys of an account."""
        keys = select(api_keys.c.id).where(api_keys.c.account_id == account_id)
        last_used = await self._rows(select(func.max(api_keys.c.last_used))
                                     .where(api_keys.c.account_id == account_id))
        return await self._usage_json(usage_daily.c.key_id.in_(keys), since, until, by_model,
                                      last_used[0][0] if last_used else None)

    async def _usage_json(self, where: ColumnElement[bool], since: date | None, until: date | None,
                          by_model: bool, last_used: str | None) -> dict[str, Any]:
        u = usage_daily.c
        rows = await self._rows(
            select(u.model, _sum(u.requests), _sum(u.prompt_tokens), _sum(u.completion_tokens))
            .where(where, *_period(since, until)).group_by(u.model).order_by(u.model))
        models = {model: _counts_json(requests, prompt, completion)
                  for model, requests, prompt, completion in rows}
        total = _counts_json(sum(m["requests"] for m in models.values()),
                             sum(m["prompt_tokens"] for m in models.values()),
                             sum(m["completion_tokens"] for m in models.values()))
        result: dict[str, Any] = {**total, "last_used": last_used}
        if by_model:
            result["models"] = models
        return result

    async def _usage_rows(self, account_id: int | None, key_id: int | None, since: date | None,
                          until: date | None, by_model: bool) -> list[UsageRow]:
        """Report rows: per account (neither id given) or per key of the account or key given."""
        u, k, a = usage_daily.c, api_keys.c, accounts.c
        per_key = account_id is not None or key_id is not None
        nothing = null()
        group = [a.id, *([k.id] if per_key else []), *([u.model] if by_model else [])]
        statement = (
            select(a.name, k.prefix if per_key else nothing, k.label if per_key else nothing,
                   u.model if by_model else nothing, _sum(u.requests), _sum(u.prompt_tokens),
                   _sum(u.completion_tokens), k.last_used if per_key else func.max(k.last_used))
            .join_from(usage_daily, api_keys).join_from(api_keys, accounts)
            .where(*_period(since, until))
            .group_by(*group).order_by(a.name, *group))
        if account_id is not None:
            statement = statement.where(a.id == account_id)
        if key_id is not None:
            statement = statement.where(k.id == key_id)
        return [UsageRow(*row) for row in await self._rows(statement)]


def _period(since: date | None, until: date | None) -> list[ColumnElement[bool]]:
    conditions = []
    if since is not None:
        conditions.append(usage_daily.c.day >= since.isoformat())
    if until is not None:
        conditions.append(usage_daily.c.day <= until.isoformat())
    return conditions


def _counts_json(requests: int, prompt: int, completion: int) -> dict[str, int]:
    return {"tokens_used": prompt + completion, "prompt_tokens": prompt,
            "completion_tokens": completion, "requests": requests}
