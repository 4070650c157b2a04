"""aiosqlite store: accounts, hashed API keys and daily usage aggregates.

Data minimisation is part of the product: keys are stored only as SHA-256,
usage only as per-key, per-UTC-day, per-model sums. There are no per-request
rows, no client addresses and no content anywhere in the schema.

One connection per process, in autocommit mode; every write is an explicit
``BEGIN IMMEDIATE`` transaction serialised by a lock, because coroutines share
the connection and SQLite has one transaction per connection. The admin CLI
writes to the same file from another process; WAL and ``busy_timeout`` let the
two coexist, and the authentication cache's short TTL bounds how long the
server keeps honouring a key the CLI has just revoked.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, AsyncIterator, Literal

import aiosqlite

from privatai.config import StoreConfig
from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.store.names import LABEL_MAX, NAME_MAX, PLAN_MAX, AdminError, checked, quoted
from privatai.store.keys import DISPLAY_LENGTH, KEY_PREFIX, display_prefix, generate_key, hash_key, is_well_formed
from privatai.store.recorder import Batch, UsageKey, utc_now

# Each step runs once, in its own transaction, and bumps PRAGMA user_version.
# Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE accounts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            plan TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
            created TEXT NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            label TEXT NOT NULL DEFAULT '',
            prefix TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,
            last_used TEXT,
            revoked_at TEXT,
            expires_at TEXT
        )""",
        "CREATE INDEX api_keys_account ON api_keys(account_id)",
        "CREATE INDEX api_keys_prefix ON api_keys(prefix)",
        """CREATE TABLE usage_daily (
            key_id INTEGER NOT NULL REFERENCES api_keys(id),
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day, model)
        ) WITHOUT ROWID""",
        "CREATE INDEX usage_daily_day ON usage_daily(day)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

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
DEFAULT_PLAN = "pro"

_MISSING = "Missing API key. Send it as 'Authorization: Bearer privat_...'."
_INVALID = "Invalid API key."
_REVOKED = "This API key has been revoked."
_EXPIRED = "This API key has expired."
_SUSPENDED = "The account of this API key is suspended. Contact support to reactivate it."


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what auth puts on ``request.ctx`` and metering records."""

    key_id: int
    key_prefix: str
    account_id: int
    account_name: str
    plan: str


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    plan: str
    status: Literal["active", "suspended"]
    created: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's metadata; never the key or its hash."""

    id: int
    account_id: int
    account_name: str
    label: str
    prefix: str
    created: str
    last_used: str | None
    revoked_at: str | None
    expires_at: str | None

    @property
    def status(self) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utc_now().isoformat():
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly created key: ``key`` exists only here and is shown once."""

    key: str
    info: ApiKey


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a usage report; ``model`` is None unless broken down by model."""

    account_name: str
    key_prefix: str | None
    key_label: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    last_used: str | None

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A cached authentication result: a principal or the error to raise."""

    principal: Principal | None
    error: AuthenticationFailed | PermissionDenied | None
    key_expires: float | None  # epoch seconds
    known: bool  # the key exists (even if revoked or its account suspended)


class _TTLCache:
    """A small LRU whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float, max_size: int) -> None:
        self._ttl = ttl
        self._max_size = max_size
        self._entries: OrderedDict[str, tuple[float, _Outcome]] = OrderedDict()

    def get(self, key: str) -> _Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, outcome: _Outcome) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, outcome)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _fresh(error: AuthenticationFailed | PermissionDenied) -> AuthenticationFailed | PermissionDenied:
    # A new instance per raise: exceptions carry their traceback.
    return type(error)(error.message)


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp + "+00:00").timestamp()


async def _enable_wal(db: aiosqlite.Connection, timeout: float) -> None:
    """Switch the file to WAL, retrying for up to ``timeout`` seconds.

    When several connections open a new file at once, each holds a shared lock
    while it asks for the exclusive one the switch needs, and SQLite answers
    one of them SQLITE_BUSY at once rather than waiting in its busy handler (to
    avoid a deadlock). Once one has switched, the others find WAL already set.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class Store:
    """The database of one process. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, *, cache_ttl: float, cache_size: int) -> None:
        self._db = db
        self._write_lock = asyncio.Lock()
        # Known and unknown keys are cached apart, so a flood of random keys
        # cannot evict the real ones.
        self._known = _TTLCache(cache_ttl, cache_size)
        self._unknown = _TTLCache(cache_ttl, cache_size)

    # ------------------------------------------------------------------ life cycle

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 5.0, cache_ttl: float = 2.0,
                   cache_size: int = 10_000) -> Store:
        """Open (creating if needed, owner-only) and migrate the database at ``path``."""
        if path != ":memory:" and not os.path.exists(path):
            # Created 0600 before SQLite touches it; SQLite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await _enable_wal(db, busy_timeout)
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
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

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        found = await self.schema_version()
        if found > SCHEMA_VERSION:
            raise AdminError(f"database schema version {found} is newer than this PrivatAI "
                             f"supports ({SCHEMA_VERSION}); upgrade PrivatAI")
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= found:
                continue
            async with self._transaction() as db:
                # Checked again under BEGIN IMMEDIATE's write lock: another
                # process (the server, the CLI) may have migrated meanwhile.
                if await self.schema_version() >= version:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {version}")

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

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, raw_key: str | None) -> Principal:
        """The principal of a key, or AuthenticationFailed (401) / PermissionDenied (403)."""
        if not raw_key:
            raise AuthenticationFailed(_MISSING)
        if not is_well_formed(raw_key):
            raise AuthenticationFailed(_INVALID)
        digest = hash_key(raw_key)
        outcome = self._known.get(digest) or self._unknown.get(digest)
        if outcome is None:
            outcome = await self._lookup(digest)
            (self._known if outcome.known else self._unknown).put(digest, outcome)
        # Checked on every call, not only on lookup: a cached key may expire.
        if outcome.key_expires is not None and outcome.key_expires <= time.time():
            raise AuthenticationFailed(_EXPIRED)
        if outcome.error is not None:
            raise _fresh(outcome.error)
        assert outcome.principal is not None
        return outcome.principal

    async def _lookup(self, digest: str) -> _Outcome:
        rows = await self._fetchall(
            """SELECT k.id, k.prefix, k.revoked_at, k.expires_at, a.id, a.name, a.plan, a.status
               FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.sha256 = ?""",
            (digest,))
        if not rows:
            return _Outcome(None, AuthenticationFailed(_INVALID), None, known=False)
        key_id, prefix, revoked_at, expires_at, account_id, account_name, plan, status = rows[0]
        if revoked_at is not None:
            return _Outcome(None, AuthenticationFailed(_REVOKED), None, known=True)
        expires = _epoch(expires_at) if expires_at is not None else None
        if status != "active":
            return _Outcome(None, PermissionDenied(_SUSPENDED), expires, known=True)
        return _Outcome(Principal(key_id, prefix, account_id, account_name, plan), None, expires, known=True)

    def _forget_cached(self) -> None:
        # Admin changes made through this process apply at once; other
        # processes' changes apply within the TTL.
        self._known.clear()
        self._unknown.clear()

    # ------------------------------------------------------------------ accounts

    async def create_account(self, name: str, plan: str = DEFAULT_PLAN) -> Account:
        name = checked(name, "account name", NAME_MAX)
        plan = checked(plan, "plan", PLAN_MAX)
        try:
            async with self._transaction() as db:
                await db.execute("INSERT INTO accounts (name, plan, created) VALUES (?, ?, ?)",
                                 (name, plan, utc_now().isoformat()))
        except sqlite3.IntegrityError:
            raise AdminError(f"account {quoted(name)} already exists") from None
        return await self.get_account(name)

    async def get_account(self, name: str) -> Account:
        row = await self._account_row(name)
        if row is None:
            raise AdminError(f"no account named {quoted(name)}")
        return Account(*row)

    async def _account_row(self, name: str) -> aiosqlite.Row | None:
        rows = await self._fetchall(
            "SELECT id, name, plan, status, created FROM accounts WHERE name = ?", (name.strip(),))
        return rows[0] if rows else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._fetchall("SELECT id, name, plan, status, created FROM accounts ORDER BY name")
        return [Account(*row) for row in rows]

    async def set_account_status(self, name: str, status: Literal["active", "suspended"]) -> Account:
        account = await self.get_account(name)
        async with self._transaction() as db:
            await db.execute("UPDATE accounts SET status = ? WHERE id = ?", (status, account.id))
        self._forget_cached()
        return await self.get_account(name)

    # ------------------------------------------------------------------ keys

    _KEY_COLUMNS = """k.id, k.account_id, a.name, k.label, k.prefix, k.created, k.last_used,
                      k.revoked_at, k.expires_at FROM api_keys k JOIN accounts a ON a.id = k.account_id"""

    async def create_key(self, account_name: str, *, label: str = "",
                         expires_at: datetime | None = None) -> NewKey:
        """A new key for an account; the returned ``key`` is the only copy."""
        label = checked(label, "key label", LABEL_MAX, required=False)
        account = await self.get_account(account_name)
        now = utc_now()
        expires = None
        if expires_at is not None:
            if expires_at.tzinfo is not None:
                expires_at = expires_at.astimezone(timezone.utc)
            expires = expires_at.replace(microsecond=0, tzinfo=None).isoformat()
        if expires is not None and expires <= now.isoformat():
            raise AdminError(f"expiry {expires} is not in the future")
        key = generate_key()
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO api_keys (account_id, label, prefix, sha256, created, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (account.id, label, display_prefix(key), hash_key(key), now.isoformat(), expires))
            key_id = cursor.lastrowid
        assert key_id is not None
        return NewKey(key, await self._key_by_id(key_id))

    async def _key_by_id(self, key_id: int) -> ApiKey:
        rows = await self._fetchall(f"SELECT {self._KEY_COLUMNS} WHERE k.id = ?", (key_id,))
        if not rows:
            raise AdminError(f"no key with id {key_id}")
        return ApiKey(*rows[0])

    async def list_keys(self, account_name: str | None = None) -> list[ApiKey]:
        if account_name is None:
            rows = await self._fetchall(f"SELECT {self._KEY_COLUMNS} ORDER BY a.name, k.id")
        else:
            account = await self.get_account(account_name)
            rows = await self._fetchall(f"SELECT {self._KEY_COLUMNS} WHERE k.account_id = ? ORDER BY k.id",
                                        (account.id,))
        return [ApiKey(*row) for row in rows]

    async def find_key(self, reference: str) -> ApiKey:
        """A key by id, by (the start of) its display prefix, or by the full key."""
        reference = reference.strip().rstrip("…")
        if reference.isascii() and reference.isdigit():
            if len(reference) > 18:  # beyond any id, and int() refuses 4,300 digits
                raise AdminError(f"no key with id {quoted(reference)}")
            return await self._key_by_id(int(reference))
        if is_well_formed(reference):
            rows = await self._fetchall(f"SELECT {self._KEY_COLUMNS} WHERE k.sha256 = ?",
                                        (hash_key(reference),))
            if not rows:
                raise AdminError("no such key")
            return ApiKey(*rows[0])
        if not (reference.startswith(KEY_PREFIX) and len(KEY_PREFIX) < len(reference) <= DISPLAY_LENGTH):
            raise AdminError(f"{quoted(reference)} is neither a key id nor a key prefix like 'privat_AbC12'")
        rows = await self._fetchall(
            f"SELECT {self._KEY_COLUMNS} WHERE substr(k.prefix, 1, ?) = ? ORDER BY k.id",
            (len(reference), reference))
        if not rows:
            raise AdminError(f"no key with prefix {quoted(reference)}")
        if len(rows) > 1:
            ids = ", ".join(str(row[0]) for row in rows)
            raise AdminError(f"prefix {quoted(reference)} matches several keys (ids {ids}); use the id")
        return ApiKey(*rows[0])

    async def revoke_key(self, reference: str) -> ApiKey:
        key = await self.find_key(reference)
        if key.revoked_at is not None:
            raise AdminError(f"key {key.prefix}… (id {key.id}) was already revoked at {key.revoked_at}")
        async with self._transaction() as db:
            await db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                             (utc_now().isoformat(), key.id))
        self._forget_cached()
        return await self._key_by_id(key.id)

    # ------------------------------------------------------------------ usage

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

    async def usage_report(self, *, account_name: str | None = None, key_reference: str | None = None,
                           since: date | None = None, until: date | None = None,
                           by_model: bool = False) -> list[UsageRow]:
        """Rows for the CLI: per account (no filter) or per key (account or key given)."""
        where, params = "1", ()
        per_key = account_name is not None or key_reference is not None
        if account_name is not None:
            where, params = "a.id = ?", ((await self.get_account(account_name)).id,)
        if key_reference is not None:
            where, params = f"{where} AND k.id = ?", (*params, (await self.find_key(key_reference)).id)
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
