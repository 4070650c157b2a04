"""Usage aggregates: the recorder's additive writes, pruning, and the reports.

Usage is kept only as sums per key, UTC day and model. A batch is added with
one upsert per row in one transaction, so writes from any number of
processes add up exactly.
"""
from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from typing import Any

from privatai.store.connection import Connection
from privatai.store.records import UsageRow, utc_now
from privatai.store.recorder import Batch, UsageKey

_ADD_USAGE = """INSERT INTO usage_daily (key_id, day, model, requests, prompt_tokens, completion_tokens)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (key_id, day, model) DO UPDATE SET
      requests = requests + excluded.requests,
      prompt_tokens = prompt_tokens + excluded.prompt_tokens,
      completion_tokens = completion_tokens + excluded.completion_tokens"""
_SET_LAST_USED = "UPDATE api_keys SET last_used = ?1 WHERE id = ?2 AND (last_used IS NULL OR last_used < ?1)"
# What a row's own values cause: too big for a 64-bit column (raised by the
# driver while binding), a constraint it breaks (a key that was deleted).
_ROW_ERRORS = (OverflowError, sqlite3.IntegrityError)


class UsageQueries(Connection):
    """Usage of the store; see :class:`privatai.store.database.Store`."""

    async def write_usage(self, batch: Batch) -> list[UsageKey]:
        """Add a recorder batch to the aggregates in one transaction.

        Returns the rows the database refused for their values (a number out
        of range, a key that no longer exists): the others are written all the
        same, so one bad row never blocks everybody's usage. Any other error
        (the database is locked, the disk full) raises and writes nothing.
        """
        rows = [(key, (*key, c.requests, c.prompt_tokens, c.completion_tokens))
                for key, c in batch.counts.items()]
        last_used = [(when, key_id) for key_id, when in batch.last_used.items()]
        try:
            async with self._transaction() as db:
                await db.executemany(_ADD_USAGE, [values for _, values in rows])
                await db.executemany(_SET_LAST_USED, last_used)
            return []
        except _ROW_ERRORS:
            pass
        refused = []
        async with self._transaction() as db:
            for key, values in rows:
                await db.execute("SAVEPOINT usage_row")
                try:
                    await db.execute(_ADD_USAGE, values)
                except _ROW_ERRORS:
                    await db.execute("ROLLBACK TO usage_row")
                    refused.append(key)
                await db.execute("RELEASE usage_row")
            await db.executemany(_SET_LAST_USED, last_used)
        return refused

    async def prune_usage(self, retention_days: int) -> int:
        """Delete usage of UTC days older than ``retention_days``; returns rows deleted."""
        cutoff = (utc_now().date() - timedelta(days=retention_days)).isoformat()
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM usage_daily WHERE day < ?", (cutoff,))
            return cursor.rowcount

    async def usage_for_key(self, key_id: int, since: date | None = None, until: date | None = None,
                            by_model: bool = False) -> dict[str, Any]:
        """The seed's ``/usage`` JSON for one key: days inclusive, UTC; ``last_used``
        is the key's latest use whatever the period (days carry no time of day).
        Usage still in a recorder's memory is not in it: flush that first."""
        last_used = await self._fetchall("SELECT last_used FROM api_keys WHERE id = ?", (key_id,))
        return await self._usage_json("u.key_id = ?", (key_id,), since, until, by_model,
                                      last_used[0][0] if last_used else None)

    async def usage_for_account(self, account_id: int, since: date | None = None,
                                until: date | None = None, by_model: bool = False) -> dict[str, Any]:
        """The seed's ``/usage`` JSON summed over all keys of an account."""
        last_used = await self._fetchall("SELECT max(last_used) FROM api_keys WHERE account_id = ?",
                                         (account_id,))
        return await self._usage_json(
            "u.key_id IN (SELECT id FROM api_keys WHERE account_id = ?)", (account_id,),
            since, until, by_model, last_used[0][0] if last_used else None)

    async def _usage_json(self, where: str, params: tuple[Any, ...], since: date | None,
                          until: date | None, by_model: bool, last_used: str | None) -> dict[str, Any]:
        where, params = _period(where, params, since, until)
        rows = await self._fetchall(
            f"""SELECT u.model, sum(u.requests), sum(u.prompt_tokens), sum(u.completion_tokens)
                FROM usage_daily u WHERE {where} GROUP BY u.model ORDER BY u.model""", params)
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
        where: str = "1"
        params: tuple[Any, ...] = ()
        per_key = account_id is not None or key_id is not None
        if account_id is not None:
            where, params = "a.id = ?", (account_id,)
        if key_id is not None:
            where, params = f"{where} AND k.id = ?", (*params, key_id)
        where, params = _period(where, params, since, until)
        group = ("k.id" if per_key else "a.id") + (", u.model" if by_model else "")
        rows = await self._fetchall(
            f"""SELECT a.name, {"k.prefix, k.label" if per_key else "NULL, NULL"},
                       {"u.model" if by_model else "NULL"},
                       sum(u.requests), sum(u.prompt_tokens), sum(u.completion_tokens),
                       {"k.last_used" if per_key else "max(k.last_used)"}
                FROM usage_daily u JOIN api_keys k ON k.id = u.key_id JOIN accounts a ON a.id = k.account_id
                WHERE {where} GROUP BY {group} ORDER BY a.name, {group}""", params)
        return [UsageRow(*row) for row in rows]


def _period(where: str, params: tuple[Any, ...], since: date | None,
            until: date | None) -> tuple[str, tuple[Any, ...]]:
    if since is not None:
        where, params = f"{where} AND u.day >= ?", (*params, since.isoformat())
    if until is not None:
        where, params = f"{where} AND u.day <= ?", (*params, until.isoformat())
    return where, params


def _counts_json(requests: int, prompt: int, completion: int) -> dict[str, int]:
    return {"tokens_used": prompt + completion, "prompt_tokens": prompt,
            "completion_tokens": completion, "requests": requests}
