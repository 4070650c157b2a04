"""Accounts and API keys: the admin operations, and authentication by key.

Names, labels and plans are checked here, where they enter, so every caller
gets the same rule (:mod:`privatai.store.names`).
"""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Literal

import aiosqlite

from privatai.store.auth_cache import AuthCache, Outcome, key_digest
from privatai.store.connection import Connection
from privatai.store.keys import DISPLAY_LENGTH, KEY_PREFIX, display_prefix, generate_key, hash_key, is_well_formed
from privatai.store.names import LABEL_MAX, NAME_MAX, PLAN_MAX, AdminError, checked, quoted
from privatai.store.records import DEFAULT_PLAN, Account, ApiKey, NewKey, Principal, utc_now


class Accounts(Connection):
    """Accounts and keys of the store; see :class:`privatai.store.database.Store`."""

    def __init__(self, db: aiosqlite.Connection, *, cache_ttl: float, cache_size: int) -> None:
        super().__init__(db)
        self._auth = AuthCache(cache_ttl, cache_size)

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, raw_key: str | None) -> Principal:
        """The principal of a key, or AuthenticationFailed (401) / PermissionDenied (403)."""
        digest = key_digest(raw_key)
        outcome = self._auth.get(digest)
        if outcome is None:
            rows = await self._fetchall(
                """SELECT k.id, k.prefix, k.revoked_at, k.expires_at, a.id, a.name, a.plan, a.status
                   FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.sha256 = ?""",
                (digest,))
            outcome = Outcome.of(tuple(rows[0]) if rows else None)
            self._auth.put(digest, outcome)
        return outcome.principal_now()

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
        self._auth.clear()
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
        self._auth.clear()
        return await self._key_by_id(key.id)
