"""Per-key rates shared by the workers of one machine: a SQLite scratch file.

The same reasoning as :mod:`privatai.limits.sqlite_state` (the web chat's
counters): ``BEGIN IMMEDIATE`` makes a check-and-take atomic across worker
processes, the file lives in the server's private runtime directory (in
memory, removed when the server stops), and each worker runs the blocking
calls on one thread of its own so the event loop never waits on the lock.
The file holds key ids and numbers only.

The clock is ``time.monotonic``: on Linux it is one clock for every process
of the machine, and it never jumps with the wall time.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Callable

from privatai.limits.keyrate import KeyLimits, RateView, SharedGiveBacks, give_back, refill, take, view
from privatai.limits.sqlite_state import WorkerFile, transaction
from privatai.ops.logs import describe_error

log = logging.getLogger(__name__)

SCHEMA = ("CREATE TABLE IF NOT EXISTS buckets (key_id INTEGER NOT NULL, kind TEXT NOT NULL, "
          "level REAL NOT NULL, at REAL NOT NULL, PRIMARY KEY (key_id, kind)) WITHOUT ROWID",)
REQUESTS, TOKENS = "r", "t"


class SqliteKeyRates(SharedGiveBacks):
    """A :class:`~privatai.limits.keyrate.KeyRates` in a SQLite file shared by workers."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._file = WorkerFile(path, "privatai-keyrates")
        self._clock = clock

    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        return await self._file.run(partial(self._take, key_id, limits, tokens))

    async def put_back(self, key_id: int, limits: KeyLimits, requests: int, tokens: int) -> None:
        try:
            await self._file.run(partial(self._give_back, key_id, limits, requests, tokens))
        except Exception as exc:
            # Lost: the bucket refills within a minute (less for the key, never more).
            log.error("per-key rate limits: a give-back was lost: %s", describe_error(exc))

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def _level(conn: sqlite3.Connection, key_id: int, kind: str, limit: int | None,
               now: float) -> float | None:
        if not limit:
            return None
        row = conn.execute("SELECT level, at FROM buckets WHERE key_id = ? AND kind = ?",
                           (key_id, kind)).fetchone()
        return float(limit) if row is None else refill(row[0], row[1], limit, now)

    @staticmethod
    def _store(conn: sqlite3.Connection, key_id: int, kind: str, level: float | None, now: float) -> None:
        if level is not None:
            conn.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (key_id, kind, level, now))

    def _take(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        conn, now = self._file.connection(), self._clock()
        with transaction(conn):
            requests = self._level(conn, key_id, REQUESTS, limits.requests_per_minute, now)
            budget = self._level(conn, key_id, TOKENS, limits.tokens_per_minute, now)
            requests, budget = take(limits, requests, budget, tokens)
            self._store(conn, key_id, REQUESTS, requests, now)
            self._store(conn, key_id, TOKENS, budget, now)
        return view(limits, requests, budget)

    def _give_back(self, key_id: int, limits: KeyLimits, requests: int, tokens: int) -> None:
        conn, now = self._file.connection(), self._clock()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        with transaction(conn):
            level = self._level(conn, key_id, REQUESTS, rpm, now)
            if rpm and level is not None and requests:
                self._store(conn, key_id, REQUESTS, give_back(level, rpm, requests), now)
            level = self._level(conn, key_id, TOKENS, tpm, now)
            if tpm and level is not None and tokens:
                self._store(conn, key_id, TOKENS, give_back(level, tpm, tokens), now)
