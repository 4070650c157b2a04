"""Usage of per-token plans reported to Stripe as one meter event per account and day.

The source is the daily usage aggregates ``/usage`` reports, so the customer
is billed the tokens they were told. A day is reported once it is closed (UTC,
plus a margin for the recorder's last flush), and recorded as reported only
after Stripe accepted it: a failure leaves it for the next sweep. The event's
identifier is the account and the day, so a report Stripe received but we
could not record (a crash between the two) is not counted twice when resent.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta, timezone

from privatai.billing.config import BillingConfig
from privatai.billing.stripe_api import StripeApi
from privatai.ops.logs import describe_error
from privatai.store.database import Store

log = logging.getLogger("privatai.billing")

# A day's last requests reach the database within a flush interval (a second);
# five minutes leave room for a slow flush or a request that ends after midnight.
SETTLE = timedelta(minutes=5)
# Stripe accepts meter events up to 35 days old.
LOOKBACK = timedelta(days=34)


def identifier(account_id: int, day: str) -> str:
    return f"privatai-{account_id}-{day}"


def _last_second(day: str) -> int:
    moment = datetime.combine(date.fromisoformat(day), time(23, 59, 59), tzinfo=timezone.utc)
    return int(moment.timestamp())


async def report_closed_days(store: Store, api: StripeApi, billing: BillingConfig, now: datetime) -> int:
    """Report every closed, unreported day of per-token accounts; how many were
    recorded. One failure does not stop the others."""
    before = (now - SETTLE).date().isoformat()
    since = (now - LOOKBACK).date().isoformat()
    recorded = 0
    for day in await store.unreported_meter_days(since, before):
        plan = billing.plans.get(day.plan)
        if plan is None or plan.meter_event is None:
            continue  # the account moved to a flat-rate plan; its days are not billed per token
        try:
            if day.tokens > 0:
                await api.meter_event(event_name=plan.meter_event, customer=day.customer_id, value=day.tokens,
                                      identifier=identifier(day.account_id, day.day),
                                      timestamp=_last_second(day.day))
            await store.record_meter_report(day.account_id, day.day, day.tokens)
            recorded += 1
        except Exception as exc:  # noqa: BLE001 - retried at the next sweep
            log.warning("meter report for account %d, %s failed, will retry: %s",
                        day.account_id, day.day, describe_error(exc))
    return recorded
