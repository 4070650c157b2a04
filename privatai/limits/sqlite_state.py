"""Web-chat counters shared by the workers of one machine: a SQLite scratch file.

Why a file and not ``multiprocessing`` shared memory: ``admit`` must check
three rules and take a request and a slot atomically across processes.
SQLite's ``BEGIN IMMEDIATE`` is exactly that lock, with a busy timeout,
crash-safe (a worker that dies mid-transaction releases it), needs no extra
service and no fixed-size table of our own. The web chat admits a few
requests per second per client, far below the thousands of small
transactions per second SQLite manages on a tmpfs.

The file lives in the server's private runtime directory
(:mod:`privatai.ops.runtime`: mode 0700, on ``/dev/shm`` so in memory, never
on disk, removed when the server stops). It holds only keyed hashes (the key
never leaves memory), numbers and worker PIDs: never an address.

Streams in flight are rows tagged with the worker's PID, so a worker that
was killed mid-answer does not hold its clients' slots for ever: rows of a
PID that is no longer alive are dropped when that identity is next checked.

Each worker runs the blocking SQLite calls on one thread of its own (one
connection, opened after the fork), so the event loop never waits on the lock.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, ParamSpec, TypeVar

from privatai.limits.shared import DAY, DEFAULT_MAX_IDENTITIES, Counters, LimitRules, Verdict, charge, decide
from privatai.ops.logs import describe_error

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters (identity TEXT PRIMARY KEY, starts TEXT NOT NULL, "
    "day_start REAL NOT NULL, day_used INTEGER NOT NULL, last_seen REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS streams (identity TEXT NOT NULL, pid INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS streams_identity ON streams(identity)",
    "CREATE INDEX IF NOT EXISTS counters_last_seen ON counters(last_seen)",
)
BUSY_TIMEOUT = 5.0
P = ParamSpec("P")
T = TypeVar("T")
# Idle identities are pruned every this many admissions of a worker.
PRUNE_EVERY = 500


def create(path: Path, schema: tuple[str, ...] = SCHEMA) -> None:
    """Make the file and its tables (the main process, before the workers start)."""
    conn = connect(path)
    try:
        for statement in schema:
            conn.execute(statement)
    finally:
        conn.close()


def connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    # Scratch state of one server run: losing it in a power cut loses nothing.
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerFile:
    """A worker's one connection to a shared file, and the one thread that
    uses it; both made on first use, so in the worker, never inherited through a fork."""

    def __init__(self, path: Path, thread_name: str) -> None:
        self._path = path
        self._thread_name = thread_name
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._path)
        return self._conn

    async def run(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteLimitState:
    """A :class:`~privatai.limits.shared.LimitState` in a SQLite file shared by workers."""

    def __init__(self, path: Path, *, max_identities: int = DEFAULT_MAX_IDENTITIES) -> None:
        self._file = WorkerFile(path, "privatai-limits")
        self._max_identities = max(1, max_identities)
        self._admits = 0
        self._problem: str | None = None

    async def admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        return await self._run(self._admit, identity, rules, now)

    async def release(self, identity: str, tokens: int, now: float) -> None:
        await self._run(self._release, identity, tokens, now)

    async def problem(self) -> str | None:
        return self._problem

    def close(self) -> None:
        self._file.close()

    async def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = await self._file.run(partial(function, *args, **kwargs))
        except Exception as exc:
            self._problem = f"web-chat limits file: {describe_error(exc)}"
            raise
        self._problem = None
        return result

    def _admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        conn = self._file.connection()
        with transaction(conn):
            row = conn.execute("SELECT starts, day_start, day_used FROM counters WHERE identity = ?",
                               (identity,)).fetchone()
            counters = (Counters(deque(json.loads(row[0])), row[1], row[2]) if row is not None
                        else Counters(deque(), day_start=now))
            counters.active = self._active(conn, identity)
            verdict = decide(counters, rules, now)
            conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?, ?)",
                         (identity, json.dumps(list(counters.starts)), counters.day_start,
                          counters.day_used, now))
            if verdict.admitted:
                conn.execute("INSERT INTO streams VALUES (?, ?)", (identity, os.getpid()))
            self._admits += 1
            if self._admits % PRUNE_EVERY == 0:
                self._prune(conn, now)
        return verdict

    @staticmethod
    def _active(conn: sqlite3.Connection, identity: str) -> int:
        """Streams in flight for ``identity``, forgetting those of dead workers."""
        active = 0
        for pid, count in conn.execute("SELECT pid, count(*) FROM streams WHERE identity = ? GROUP BY pid",
                                       (identity,)).fetchall():
            if pid_alive(pid):
                active += count
            else:
                conn.execute("DELETE FROM streams WHERE identity = ? AND pid = ?", (identity, pid))
        return active

    def _release(self, identity: str, tokens: int, now: float) -> None:
        conn = self._file.connection()
        with transaction(conn):
            conn.execute("DELETE FROM streams WHERE rowid = (SELECT rowid FROM streams "
                         "WHERE identity = ? AND pid = ? LIMIT 1)", (identity, os.getpid()))
            row = conn.execute("SELECT day_start, day_used FROM counters WHERE identity = ?",
                               (identity,)).fetchone()
            if row is None:
                return  # pruned or never admitted: nothing to charge
            counters = Counters(deque(), row[0], row[1], active=1)
            charge(counters, tokens, now)
            conn.execute("UPDATE counters SET day_start = ?, day_used = ?, last_seen = ? WHERE identity = ?",
                         (counters.day_start, counters.day_used, now, identity))

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Forget identities idle for a day (their windows have run out), then
        the least recently seen beyond ``max_identities``; never one with a
        stream in flight. Forgetting early only ever lets a client in sooner."""
        in_flight = "identity NOT IN (SELECT identity FROM streams)"
        conn.execute(f"DELETE FROM counters WHERE last_seen <= ? AND {in_flight}", (now - DAY,))
        (count,) = conn.execute("SELECT count(*) FROM counters").fetchone()
        if count > self._max_identities:
            conn.execute(f"DELETE FROM counters WHERE identity IN (SELECT identity FROM counters "
                         f"WHERE {in_flight} ORDER BY last_seen LIMIT ?)", (count - self._max_identities,))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the lock every worker queues for) ... ``COMMIT``, or ``ROLLBACK``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
