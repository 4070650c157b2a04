"""Billing's queries on SQLite and PostgreSQL: an event applied once even when
two deliveries race, the operator's statuses left alone, grace expiry, and
which meter days are still to report."""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import AsyncIterator

import pytest
from sqlalchemy import update

from privatai.store.billing import BillingCustomer, CustomerGone, Decision
from privatai.store.database import Store
from privatai.store.recorder import Batch, Counts
from privatai.store.schema import accounts
from tests.services import Target


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    store = await target.open()
    yield store
    await store.close()


def to(status: str, grace_until: str | None = None, metered_since: str | None = None) -> Decision:
    return Decision(status=status, plan="pro", subscription_id="sub_1", subscription_status=status,
                    grace_until=grace_until, metered_since=metered_since)


async def customer(store: Store, name: str, customer_id: str) -> int:
    account = await store.create_account(name)
    linked = await store.link_customer(account.id, customer_id)
    assert linked is not None and linked.customer_id == customer_id
    # A second link (another request racing) keeps the first customer.
    again = await store.link_customer(account.id, "cus_other")
    assert again is not None and again.customer_id == customer_id
    return account.id


async def test_an_event_is_applied_once_even_when_deliveries_race(store: Store) -> None:
    account_id = await customer(store, "acme", "cus_1")
    seen: list[BillingCustomer] = []

    def decide(row: BillingCustomer) -> Decision:
        seen.append(row)
        return to("past_due", grace_until="2030-01-01T00:00:00")

    results = await asyncio.gather(*(store.apply_billing_event("evt_1", "invoice.payment_failed", account_id, decide)
                                     for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert await store.billing_event_seen("evt_1")
    assert (await store.get_account("acme")).status == "past_due"
    row = await store.billing_customer(account_id)
    assert row is not None and row.grace_until == "2030-01-01T00:00:00"
    assert await store.billing_customer(account_id + 100) is None
    assert await store.link_customer(account_id + 100, "cus_nobody") is None


async def test_the_operators_statuses_stand(store: Store) -> None:
    for status in ("suspended", "pending"):
        account_id = await customer(store, status, f"cus_{status}")
        async with store._db.write() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == account_id).values(status=status))
        assert await store.apply_billing_event(f"evt_{status}", "invoice.paid", account_id, lambda _: to("active"))
        assert (await store.get_account(status)).status == status


async def test_grace_expiry(store: Store) -> None:
    late = await customer(store, "late", "cus_late")
    early = await customer(store, "early", "cus_early")
    await store.apply_billing_event("evt_a", "invoice.payment_failed", late,
                                    lambda _: to("past_due", grace_until="2030-01-01T00:00:00"))
    await store.apply_billing_event("evt_b", "invoice.payment_failed", early,
                                    lambda _: to("past_due", grace_until="2030-01-03T00:00:00"))
    assert await store.expire_grace(datetime(2029, 12, 31)) == 0
    assert await store.expire_grace(datetime(2030, 1, 2)) == 1
    assert [(await store.get_account(name)).status for name in ("late", "early")] == ["inactive", "past_due"]


async def test_unreported_meter_days(store: Store) -> None:
    metered = await customer(store, "metered", "cus_m")
    flat = await customer(store, "flat", "cus_f")
    await store.apply_billing_event("evt_m", "invoice.paid", metered,
                                    lambda _: to("active", metered_since="2030-01-02"))
    await store.apply_billing_event("evt_f", "invoice.paid", flat, lambda _: to("active"))
    keys = [(await store.create_key(name)).info.id for name in ("metered", "metered", "flat")]
    batch = Batch()
    for key_id in keys:
        for day in ("2030-01-01", "2030-01-02", "2030-01-03"):
            batch.counts[(key_id, day, "m")] = Counts(1, 10, 5)
    assert await store.write_usage(batch) == []
    days = await store.unreported_meter_days("2029-12-01", "2030-01-03")
    # Not before the plan began, not the flat account, not the open day; both keys summed.
    assert [(d.account_id, d.customer_id, d.day, d.tokens) for d in days] == [(metered, "cus_m", "2030-01-02", 30)]
    await store.record_meter_report(metered, "2030-01-02", 30)
    await store.record_meter_report(metered, "2030-01-02", 30)
    assert await store.unreported_meter_days("2029-12-01", "2030-01-03") == []
    assert await store.meter_reports(metered) == [("2030-01-02", 30)]


async def test_deleting_a_paying_account_erases_its_billing_rows_too(store: Store) -> None:
    account_id = await customer(store, "payer", "cus_payer")
    await store.record_meter_report(account_id, "2026-11-01", 42)
    key = await store.create_key("payer")
    await store.delete_account("payer")
    assert await store.billing_customer(account_id) is None
    assert await store.meter_reports(account_id) == []
    with pytest.raises(Exception) as refused:
        await store.authenticate(key.key)
    assert refused.type.__name__ == "AuthenticationFailed"


async def test_old_event_ids_are_forgotten(store: Store) -> None:
    assert await store.record_billing_event("evt_old", "charge.refunded")
    assert not await store.record_billing_event("evt_old", "charge.refunded")
    assert await store.prune_billing_events(datetime(2000, 1, 1)) == 0
    assert await store.billing_event_seen("evt_old")
    assert await store.prune_billing_events(datetime(2100, 1, 1)) == 1
    assert not await store.billing_event_seen("evt_old")


async def test_an_event_for_an_account_erased_on_its_way_is_refused_and_not_recorded(store: Store) -> None:
    # Deleting an account cancels its subscription; Stripe's event about it can
    # reach the webhook after the customer was looked up and before it is applied.
    account_id = await customer(store, "leaving", "cus_leaving")
    await store.delete_account("leaving")
    with pytest.raises(CustomerGone):
        await store.apply_billing_event("evt_gone", "customer.subscription.deleted", account_id,
                                        lambda _: to("canceled"))
    assert not await store.billing_event_seen("evt_gone")
