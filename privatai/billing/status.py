"""From the subscriptions Stripe has for a customer to the account's status.

Events can arrive late, twice or out of order, so no event's payload is
trusted for the state: whatever the event, billing reads the customer's
subscriptions as they are now and decides from those. A customer with
several (an old cancelled one and a new one) is judged by the best.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

from privatai.billing.config import BillingConfig
from privatai.billing.stripe_api import Subscription
from privatai.store.billing import BillingCustomer, Decision

# Stripe's subscription statuses -> the account's.
_STATUS = {
    "active": "active", "trialing": "active",
    "past_due": "past_due", "unpaid": "past_due",
}
_RANK = {"active": 2, "past_due": 1, "inactive": 0}


def account_status(stripe_status: str | None) -> str:
    """incomplete (first payment not through), canceled, incomplete_expired,
    paused, or none at all: inactive."""
    return _STATUS.get(stripe_status or "", "inactive")


def current(subscriptions: Sequence[Subscription]) -> Subscription | None:
    """The subscription that decides: the best status, then the newest."""
    if not subscriptions:
        return None
    return max(subscriptions, key=lambda s: (_RANK[account_status(s.status)], s.created))


def decide(billing: BillingConfig, customer: BillingCustomer, subscription: Subscription | None,
           now: datetime) -> Decision:
    """The account's new state. A failed payment starts the grace period once;
    it runs from the first failure until the subscription is paid again, and
    when it has run out the account is inactive even if Stripe still retries."""
    status = account_status(subscription.status if subscription else None)
    grace_until = None
    if status == "past_due":
        grace_until = customer.grace_until or (now + timedelta(days=billing.grace_days)).isoformat()
        if grace_until <= now.isoformat():
            status = "inactive"
    plan = billing.plan_of_price(subscription.price) if subscription else None
    # Kept after a cancellation: the days used before it are still to be reported.
    metered = plan is not None and billing.plans[plan].meter_event is not None
    metered_since = (customer.metered_since or now.date().isoformat()) if metered else None
    return Decision(status=status, plan=plan,
                    subscription_id=subscription.id if subscription else None,
                    subscription_status=subscription.status if subscription else None,
                    grace_until=grace_until, metered_since=metered_since)
