"""Monthly quotas shared by the workers of one machine: a SQLite scratch file.

The same file discipline as the per-key rates (:mod:`privatai.limits.keyrate_sqlite`):
``BEGIN IMMEDIATE`` makes check-and-reserve atomic across worker processes,
the file lives in the server's private runtime directory (in memory, removed
when the server stops), and each worker runs the blocking calls on a thread
of its own. One row per account and month holds its used and reserved tokens:
account ids and numbers only.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from privatai.limits.sqlite_state import WorkerFile, transaction
from privatai.ops.logs import describe_error
from privatai.plans.quota import LoadMonth, SharedQuotas, Today, utc_today

log = logging.getLogger(__name__)

SCHEMA = ("CREATE TABLE IF NOT EXISTS quotas (account_id INTEGER NOT NULL, month TEXT NOT NULL, "
          "used INTEGER NOT NULL, reserved INTEGER NOT NULL, PRIMARY KEY (account_id, month)) WITHOUT ROWID",)


class SqliteQuotas(SharedQuotas):
    """A :class:`~privatai.plans.quota.Quotas` in a SQLite file shared by workers."""

    def __init__(self, path: Path, load: LoadMonth, today: Today = utc_today) -> None:
        super().__init__(load, today)
        self._file = WorkerFile(path, "privatai-quotas")

    async def take(self, account_id: int, month: str, quota: int, tokens: int) -> tuple[bool, int] | None:
        return await self._file.run(partial(self._take, account_id, month, quota, tokens))

    async def seed(self, account_id: int, month: str, used: int) -> None:
        await self._file.run(partial(self._seed, account_id, month, used))

    async def give_back(self, account_id: int, held: str, current: str, reserved: int, used: int) -> None:
        try:
            await self._file.run(partial(self._give_back, account_id, held, current, reserved, used))
        except Exception as exc:
            # Lost from the count until the server restarts (the store has the usage).
            log.error("monthly quotas: a settlement was lost: %s", describe_error(exc))

    def close(self) -> None:
        self._file.close()

    def _take(self, account_id: int, month: str, quota: int, tokens: int) -> tuple[bool, int] | None:
        conn = self._file.connection()
        with transaction(conn):
            row = conn.execute("SELECT used, reserved FROM quotas WHERE account_id = ? AND month = ?",
                               (account_id, month)).fetchone()
            if row is None:
                return None
            used, reserved = row
            if used + reserved >= quota:
                return False, reserved
            conn.execute("UPDATE quotas SET reserved = reserved + ? WHERE account_id = ? AND month = ?",
                         (max(0, tokens), account_id, month))
            return True, reserved

    def _seed(self, account_id: int, month: str, used: int) -> None:
        conn = self._file.connection()
        with transaction(conn):
            conn.execute("INSERT OR IGNORE INTO quotas VALUES (?, ?, ?, 0)", (account_id, month, used))
            # Months before the last one have no reservation left to end (keys are YYYY-MM: they sort).
            conn.execute("DELETE FROM quotas WHERE account_id = ? AND month < ?",
                         (account_id, _month_before(month)))

    def _give_back(self, account_id: int, held: str, current: str, reserved: int, used: int) -> None:
        conn = self._file.connection()
        with transaction(conn):
            conn.execute("UPDATE quotas SET reserved = MAX(0, reserved - ?) WHERE account_id = ? AND month = ?",
                         (reserved, account_id, held))
            conn.execute("UPDATE quotas SET used = used + ? WHERE account_id = ? AND month = ?",
                         (used, account_id, current))


def _month_before(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"
