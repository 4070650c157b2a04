"""Accounts and API keys: the admin operations, and authentication by key.

Names, labels and plans are checked here, where they enter, so every caller
gets the same rule (:mod:`privatai.store.names`).
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy.exc
from sqlalchemy import bindparam, delete, func, insert, select, update

from privatai.errors import ServiceUnavailable
from privatai.store import changes
from privatai.plans.status import STATUSES, Status
from privatai.store.auth_cache import AuthCache, Outcome, key_digest
from privatai.store.connection import Database, Queries
from privatai.store.keys import DISPLAY_LENGTH, KEY_PREFIX, display_prefix, generate_key, hash_key, is_well_formed
from privatai.store.names import LABEL_MAX, NAME_MAX, PLAN_MAX, AdminError, checked, quoted
from privatai.store.records import DEFAULT_PLAN, Account, ApiKey, NewKey, Principal, utc_now
from privatai.store.schema import (accounts, api_keys, billing_customers, billing_meter_reports, invites, memberships,
                                   usage_daily)

_ACCOUNT = select(accounts.c.id, accounts.c.name, accounts.c.plan, accounts.c.status, accounts.c.created)
_KEY = select(api_keys.c.id, api_keys.c.account_id, accounts.c.name, api_keys.c.label, api_keys.c.prefix,
              api_keys.c.created, api_keys.c.last_used, api_keys.c.revoked_at,
              api_keys.c.expires_at).join_from(api_keys, accounts)
# Seconds after a failed lookup during which the cache answers alone.
RETRY_DATABASE_AFTER = 1.0
# Built once: the lookup of a cache miss is on the request path.
_AUTH = (select(api_keys.c.id, api_keys.c.prefix, api_keys.c.revoked_at, api_keys.c.expires_at, accounts.c.id,
                accounts.c.name, accounts.c.plan, accounts.c.status)
         .join_from(api_keys, accounts).where(api_keys.c.sha256 == bindparam("digest")))


def _named(name: str) -> Any:
    # Case-insensitive as the schema's uniqueness is (ASCII on SQLite).
    return func.lower(accounts.c.name) == func.lower(name.strip())


class Accounts(Queries):
    """Accounts and keys of the store; see :class:`privatai.store.database.Store`."""

    def __init__(self, db: Database, *, cache_ttl: float, cache_size: int, grace: float = 0.0) -> None:
        super().__init__(db)
        self._auth = AuthCache(cache_ttl, cache_size, grace)
        # Where a refused account's owner can act (portal.public_url + /dashboard), for its 403s.
        self.dashboard: str | None = None
        # Until when lookups skip the database after it failed: during an
        # outage each request must not wait for a connect timeout again.
        self._down_until = 0.0
        # The lookup in flight per key digest: every concurrent request of a
        # busy key misses together when its cache entry expires, and they
        # share one query instead of sending one each.
        self._lookups: dict[str, asyncio.Future[Outcome]] = {}

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, raw_key: str | None) -> Principal:
        """The principal of a key, or AuthenticationFailed (401) / PermissionDenied (403)."""
        digest = key_digest(raw_key)
        outcome = self._auth.get(digest)
        if outcome is None:
            lookup = self._lookups.get(digest)
            if lookup is None:
                lookup = self._lookups[digest] = asyncio.ensure_future(self._look_up(digest))
                lookup.add_done_callback(lambda done: self._looked_up(digest, done))
            # Shielded: a request whose client left must not cancel the others' lookup.
            outcome = await asyncio.shield(lookup)
        return outcome.principal_now()

    def forget_authentications(self) -> None:
        """Clear the authentication cache (a key or account changed elsewhere)."""
        self._auth.clear()

    async def _look_up(self, digest: str) -> Outcome:
        """The database's outcome; while it cannot answer, the cached one within its grace, else a 503."""
        if time.monotonic() >= self._down_until:
            try:
                rows = await self._rows(_AUTH, {"digest": digest})
            except (sqlalchemy.exc.SQLAlchemyError, OSError, asyncio.TimeoutError):
                self._down_until = time.monotonic() + RETRY_DATABASE_AFTER
            else:
                outcome = Outcome.of(tuple(rows[0]) if rows else None, self.dashboard)
                self._auth.put(digest, outcome)
                return outcome
        stale = self._auth.known.stale(digest)
        if stale is None:
            raise ServiceUnavailable("API keys cannot be checked right now; please try again shortly.",
                                     code="store_unavailable")
        return stale

    def _looked_up(self, digest: str, lookup: asyncio.Future[Outcome]) -> None:
        del self._lookups[digest]
        if not lookup.cancelled():
            # Retrieved here too, so a failure whose waiters all left is not
            # reported by asyncio as never retrieved (with the driver's text).
            lookup.exception()

    # ------------------------------------------------------------------ accounts

    async def create_account(self, name: str, plan: str = DEFAULT_PLAN) -> Account:
        name = checked(name, "account name", NAME_MAX)
        plan = checked(plan, "plan", PLAN_MAX)
        try:
            async with self._db.write() as conn:
                await conn.execute(insert(accounts).values(name=name, plan=plan, created=utc_now().isoformat()))
        except sqlalchemy.exc.IntegrityError:
            raise AdminError(f"account {quoted(name)} already exists") from None
        return await self.get_account(name)

    async def get_account(self, name: str) -> Account:
        rows = await self._rows(_ACCOUNT.where(_named(name)))
        if not rows:
            raise AdminError(f"no account named {quoted(name)}")
        return Account(*rows[0])

    async def list_accounts(self) -> list[Account]:
        return [Account(*row) for row in await self._rows(_ACCOUNT.order_by(accounts.c.name))]

    async def set_account_status(self, name: str, status: Status) -> Account:
        if status not in STATUSES:
            raise AdminError(f"unknown status {quoted(status)}; one of {', '.join(STATUSES)}")
        account = await self.get_account(name)
        async with self._db.write() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account.id).values(status=status))
            await changes.bump(conn)
        self._auth.clear()
        return await self.get_account(name)

    async def set_account_plan(self, name: str, plan: str) -> Account:
        """Move an account to another plan; its keys follow at once in this
        process, within the change poll interval in others."""
        plan = checked(plan, "plan", PLAN_MAX)
        account = await self.get_account(name)
        async with self._db.write() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account.id).values(plan=plan))
            await changes.bump(conn)
        self._auth.clear()
        return await self.get_account(name)

    async def delete_account(self, name: str) -> Account:
        """Erase an account at once with its keys, their usage, its members and
        invitations (DSGVO Art. 17): its keys are unknown from now on."""
        account = await self.get_account(name)
        keys = select(api_keys.c.id).where(api_keys.c.account_id == account.id)
        async with self._db.write() as conn:
            await conn.execute(delete(usage_daily).where(usage_daily.c.key_id.in_(keys)))
            await conn.execute(delete(api_keys).where(api_keys.c.account_id == account.id))
            await conn.execute(delete(invites).where(invites.c.account_id == account.id))
            await conn.execute(delete(memberships).where(memberships.c.account_id == account.id))
            # Billing's link to the Stripe customer; Stripe keeps its invoices (retention by law).
            await conn.execute(delete(billing_meter_reports).where(billing_meter_reports.c.account_id == account.id))
            await conn.execute(delete(billing_customers).where(billing_customers.c.account_id == account.id))
            await conn.execute(delete(accounts).where(accounts.c.id == account.id))
            await changes.bump(conn)
        self._auth.clear()
        return account

    # ------------------------------------------------------------------ keys

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
        async with self._db.write() as conn:
            key_id = (await conn.execute(
                insert(api_keys).values(account_id=account.id, label=label, prefix=display_prefix(key),
                                        sha256=hash_key(key), created=now.isoformat(), expires_at=expires)
                .returning(api_keys.c.id))).scalar_one()
            # Other processes may have cached this key as unknown.
            await changes.bump(conn)
        return NewKey(key, await self._key_by_id(key_id))

    async def _key_by_id(self, key_id: int) -> ApiKey:
        rows = await self._rows(_KEY.where(api_keys.c.id == key_id))
        if not rows:
            raise AdminError(f"no key with id {key_id}")
        return ApiKey(*rows[0])

    async def list_keys(self, account_name: str | None = None) -> list[ApiKey]:
        if account_name is None:
            rows = await self._rows(_KEY.order_by(accounts.c.name, api_keys.c.id))
        else:
            account = await self.get_account(account_name)
            rows = await self._rows(_KEY.where(api_keys.c.account_id == account.id).order_by(api_keys.c.id))
        return [ApiKey(*row) for row in rows]

    async def find_key(self, reference: str) -> ApiKey:
        """A key by id, by (the start of) its display prefix, or by the full key."""
        reference = reference.strip().rstrip("…")
        if reference.isascii() and reference.isdigit():
            if len(reference) > 18:  # beyond any id, and int() refuses 4,300 digits
                raise AdminError(f"no key with id {quoted(reference)}")
            return await self._key_by_id(int(reference))
        if is_well_formed(reference):
            rows = await self._rows(_KEY.where(api_keys.c.sha256 == hash_key(reference)))
            if not rows:
                raise AdminError("no such key")
            return ApiKey(*rows[0])
        if not (reference.startswith(KEY_PREFIX) and len(KEY_PREFIX) < len(reference) <= DISPLAY_LENGTH):
            raise AdminError(f"{quoted(reference)} is neither a key id nor a key prefix like 'privat_AbC12'")
        rows = await self._rows(_KEY.where(func.substr(api_keys.c.prefix, 1, len(reference)) == reference)
                                .order_by(api_keys.c.id))
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
        async with self._db.write() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key.id)
                               .values(revoked_at=utc_now().isoformat()))
            await changes.bump(conn)
        self._auth.clear()
        return await self._key_by_id(key.id)
