"""Ending an account's Stripe subscriptions before the account is erased.

Erasing an account erases ``billing_customers``, the only link to its Stripe
customer; a subscription still live at Stripe would go on charging someone
nobody can find any more. So every deletion path (dashboard, a person's
erasure, the operator page, ``privatai accounts delete``) calls
:func:`cancel_subscriptions` first and erases nothing if it raises.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import stripe

from privatai.billing.config import BillingConfig
from privatai.billing.errors import SubscriptionsNotCancelled
from privatai.billing.stripe_api import BillingNotConfigured, StripeApi, stripe_api
from privatai.ops.logs import describe_error
from privatai.store.database import Store

log = logging.getLogger("privatai.billing")

# Stripe statuses after which a subscription charges nothing any more.
_ENDED = frozenset({"canceled", "incomplete_expired"})


async def cancel_subscriptions(store: Store, api: StripeApi, account_ids: Iterable[int]) -> int:
    """Cancel at once every live subscription of these accounts' Stripe customers;
    how many were cancelled.

    Raises :class:`SubscriptionsNotCancelled` when Stripe fails; subscriptions
    cancelled before the failure stay cancelled (the caller erases nothing).
    """
    cancelled = 0
    for account_id in account_ids:
        customer = await store.billing_customer(account_id)
        if customer is None:
            continue
        try:
            for sub in await api.subscriptions(customer.customer_id):
                if sub.status not in _ENDED:
                    await api.cancel_subscription(sub.id)
                    cancelled += 1
        except stripe.StripeError as exc:
            log.warning("Stripe subscription cancellation failed: %s", describe_error(exc))
            raise SubscriptionsNotCancelled(
                "Stripe could not cancel the account's subscription just now; nothing was deleted. "
                "Try again shortly.") from None
    if cancelled:
        log.info("cancelled %d Stripe subscription(s) before erasing", cancelled)
    return cancelled


async def cancel_with_own_client(billing: BillingConfig, store: Store, account_ids: Iterable[int]) -> int:
    """:func:`cancel_subscriptions` for a process with no running Billing (the
    CLI), on a Stripe client built as the server builds it; nothing with mode none.

    Raises :class:`SubscriptionsNotCancelled` also when the secret key is not set.
    """
    if billing.mode != "stripe":
        return 0
    try:
        api = stripe_api(billing)
    except BillingNotConfigured as exc:
        raise SubscriptionsNotCancelled(f"Stripe cannot be asked to cancel the subscription: {exc}; "
                                        "nothing was deleted.") from None
    try:
        return await cancel_subscriptions(store, api, account_ids)
    finally:
        await api.close()
