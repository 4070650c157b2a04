"""Billing's tables: Stripe customers, applied webhook events, reported meter days.

A webhook event is applied in one transaction with the row that records its
id, so an event is applied once however often Stripe delivers it, and two
deliveries racing each other apply it once too. Every status change clears
the authentication cache, as the admin operations do, so a key answers to its
account's new status at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import sqlalchemy.exc
from sqlalchemy import BigInteger, and_, cast, delete, func, insert, select, update

from privatai.store import changes
from privatai.store.auth_cache import AuthCache
from privatai.store.connection import Queries
from privatai.store.records import utc_now
from privatai.store.schema import (accounts, api_keys, billing_customers, billing_events, billing_meter_reports,
                                   usage_daily)


class CustomerGone(LookupError):
    """The account an event was for was erased while the event was on its way."""


@dataclass(frozen=True, slots=True)
class BillingCustomer:
    account_id: int
    customer_id: str
    subscription_id: str | None
    subscription_status: str | None
    grace_until: str | None
    metered_since: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What an event does to its account: a status (None: leave it), the plan
    (None: leave it), and the subscription state kept beside the account."""

    status: str | None
    plan: str | None
    subscription_id: str | None
    subscription_status: str | None
    grace_until: str | None
    metered_since: str | None


@dataclass(frozen=True, slots=True)
class MeterDay:
    """A closed day of a per-token account still to be reported."""

    account_id: int
    customer_id: str
    plan: str
    day: str
    tokens: int


# Set and lifted by the operator only.
OPERATOR_STATUSES = ("suspended", "pending")

_CUSTOMER = select(billing_customers.c.account_id, billing_customers.c.customer_id,
                   billing_customers.c.subscription_id, billing_customers.c.subscription_status,
                   billing_customers.c.grace_until, billing_customers.c.metered_since)


class BillingQueries(Queries):
    """Billing of the store; see :class:`privatai.store.database.Store`."""

    _auth: AuthCache  # Accounts' cache, shared by the Store these queries are part of

    async def billing_customer(self, account_id: int) -> BillingCustomer | None:
        rows = await self._rows(_CUSTOMER.where(billing_customers.c.account_id == account_id))
        return BillingCustomer(*rows[0]) if rows else None

    async def billing_customer_by_id(self, customer_id: str) -> BillingCustomer | None:
        rows = await self._rows(_CUSTOMER.where(billing_customers.c.customer_id == customer_id))
        return BillingCustomer(*rows[0]) if rows else None

    async def link_customer(self, account_id: int, customer_id: str) -> BillingCustomer | None:
        """The account's customer: ``customer_id`` unless it has one already;
        None if there is no such account."""
        try:
            async with self._db.write() as conn:
                await conn.execute(insert(billing_customers).values(
                    account_id=account_id, customer_id=customer_id, updated=utc_now().isoformat()))
        except sqlalchemy.exc.IntegrityError:
            pass  # linked meanwhile (another request, another process): that one stands
        return await self.billing_customer(account_id)

    async def billing_event_seen(self, event_id: str) -> bool:
        rows = await self._rows(select(billing_events.c.event_id).where(billing_events.c.event_id == event_id))
        return bool(rows)

    async def record_billing_event(self, event_id: str, event_type: str) -> bool:
        """Note an event that changes nothing; False if it was seen before."""
        try:
            async with self._db.write() as conn:
                await conn.execute(insert(billing_events).values(
                    event_id=event_id, type=event_type, received=utc_now().isoformat()))
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    async def apply_billing_event(self, event_id: str, event_type: str, account_id: int,
                                  decide: Callable[[BillingCustomer], Decision]) -> bool:
        """Apply an event to an account exactly once: ``decide`` sees the
        customer's row as it is inside the transaction. False for a replay.
        The operator's statuses stand whatever billing decides: suspended, and
        pending (a sign-up awaiting approval; approving it makes it active).
        CustomerGone if the account was erased meanwhile (nothing is recorded)."""
        try:
            async with self._db.write() as conn:
                await conn.execute(insert(billing_events).values(
                    event_id=event_id, type=event_type, received=utc_now().isoformat()))
                row = (await conn.execute(_CUSTOMER.where(billing_customers.c.account_id == account_id))
                       ).one_or_none()
                if row is None:
                    raise CustomerGone(account_id)
                decision = decide(BillingCustomer(*row))
                await conn.execute(update(billing_customers).where(billing_customers.c.account_id == account_id)
                                   .values(subscription_id=decision.subscription_id,
                                           subscription_status=decision.subscription_status,
                                           grace_until=decision.grace_until,
                                           metered_since=decision.metered_since,
                                           updated=utc_now().isoformat()))
                moved: dict[str, str] = {}
                if decision.status is not None:
                    moved["status"] = decision.status
                if decision.plan is not None:
                    moved["plan"] = decision.plan
                if moved:
                    await conn.execute(update(accounts)
                                       .where(accounts.c.id == account_id,
                                              accounts.c.status.not_in(OPERATOR_STATUSES))
                                       .values(**moved))
                    # Every worker and instance applies the new status within a second.
                    await changes.bump(conn)
        except sqlalchemy.exc.IntegrityError:
            return False
        self._auth.clear()
        return True

    async def prune_billing_events(self, before: datetime) -> int:
        """Forget event ids received before ``before``; how many."""
        async with self._db.write() as conn:
            return (await conn.execute(delete(billing_events)
                                       .where(billing_events.c.received < before.isoformat()))).rowcount

    async def expire_grace(self, now: datetime) -> int:
        """Accounts past due whose grace period ended become inactive; how many."""
        ended = select(billing_customers.c.account_id).where(
            billing_customers.c.grace_until <= now.isoformat())
        async with self._db.write() as conn:
            changed = (await conn.execute(update(accounts)
                                          .where(accounts.c.status == "past_due", accounts.c.id.in_(ended))
                                          .values(status="inactive"))).rowcount
            if changed:
                await changes.bump(conn)
        if changed:
            self._auth.clear()
        return changed

    async def unreported_meter_days(self, since: str, before: str) -> list[MeterDay]:
        """Days in [since, before) of accounts on a per-token plan, from the day
        the plan began, with the account's tokens, not yet reported."""
        c, u, k, r, a = billing_customers.c, usage_daily.c, api_keys.c, billing_meter_reports.c, accounts.c
        tokens = cast(func.sum(u.prompt_tokens + u.completion_tokens), BigInteger)
        statement = (
            select(c.account_id, c.customer_id, a.plan, u.day, tokens)
            .join_from(billing_customers, accounts, a.id == c.account_id)
            .join(api_keys, k.account_id == c.account_id)
            .join(usage_daily, u.key_id == k.id)
            .outerjoin(billing_meter_reports, and_(r.account_id == c.account_id, r.day == u.day))
            .where(c.metered_since.is_not(None), u.day >= c.metered_since, u.day >= since, u.day < before,
                   r.day.is_(None))
            .group_by(c.account_id, c.customer_id, a.plan, u.day)
            .order_by(u.day, c.account_id))
        return [MeterDay(*row) for row in await self._rows(statement)]

    async def record_meter_report(self, account_id: int, day: str, tokens: int) -> None:
        """Note a day as reported (a second note of the same day changes nothing)."""
        statement = self._db.insert(billing_meter_reports).values(
            account_id=account_id, day=day, tokens=tokens, reported=utc_now().isoformat())
        async with self._db.write() as conn:
            await conn.execute(statement.on_conflict_do_nothing(
                index_elements=[billing_meter_reports.c.account_id, billing_meter_reports.c.day]))

    async def meter_reports(self, account_id: int) -> list[tuple[str, int]]:
        """The days reported for an account and their tokens."""
        r = billing_meter_reports.c
        rows = await self._rows(select(r.day, r.tokens).where(r.account_id == account_id).order_by(r.day))
        return [(day, tokens) for day, tokens in rows]
