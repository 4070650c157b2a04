"""Billing in a running gateway: checkout and portal links, webhook events,
and the background sweep (grace periods, meter reports).

One :class:`Billing` per process, opened at start when ``billing.mode`` is
``stripe``. Webhooks are verified with Stripe's own algorithm
(``stripe.Webhook.construct_event``: HMAC-SHA256 over timestamp and body,
five minutes' tolerance) before anything is read from them.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import stripe

from privatai.billing import status
from privatai.billing.cancel import cancel_subscriptions
from privatai.billing.config import BillingConfig
from privatai.billing.meter import report_closed_days
from privatai.billing.stripe_api import StripeApi, secret, stripe_api
from privatai.config import Config
from privatai.errors import InvalidRequest, PermissionDenied, PrivatAIError
from privatai.ops.logs import describe_error
from privatai.store.billing import CustomerGone
from privatai.store.database import Store
from privatai.store.records import Account, utc_now

log = logging.getLogger("privatai.billing")

# The events that move an account; any other is acknowledged and recorded.
HANDLED = frozenset({
    "checkout.session.completed",
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
    "invoice.paid", "invoice.payment_failed",
})
# Stripe retries a webhook for up to three days; an event id older than this
# is forgotten (applying one again would only re-read Stripe's current state).
EVENT_MEMORY = timedelta(days=30)
# A subscription in one of these is the one to manage in the Billing Portal, not to buy again.
_SUBSCRIBED = frozenset({"active", "trialing", "past_due", "unpaid", "incomplete"})


class BillingUnavailable(PrivatAIError):
    """Stripe could not be reached or refused: the webhook is retried by Stripe."""

    status = 503
    type = "api_error"
    code = "billing_unavailable"


class Billing:
    """Billing of one gateway process: :meth:`start` runs the sweep, :meth:`close` ends it."""

    def __init__(self, config: BillingConfig, public_url: str, store: Store, api: StripeApi,
                 webhook_secret: str) -> None:
        self.config = config
        self._public_url = public_url.rstrip("/")
        self._store = store
        self._api = api
        self._webhook_secret = webhook_secret
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, store: Store) -> Billing:
        """Billing for ``config`` (mode stripe); BillingNotConfigured naming a missing variable."""
        billing = config.billing
        webhook_secret = secret(billing, "webhook_secret_env")
        assert config.portal.public_url is not None  # the config check requires it with mode stripe
        return cls(billing, config.portal.public_url, store, stripe_api(billing), webhook_secret)

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self._api.close()

    # ------------------------------------------------------------------ links

    async def checkout_url(self, account: Account, plan: str, return_path: str) -> str:
        """Stripe Checkout for ``plan``, creating the account's Stripe customer on first use;
        Stripe sends the customer back to ``return_path`` (the account's dashboard page)."""
        offer = self.config.plans.get(plan)
        if offer is None:
            raise InvalidRequest(f"The plan {plan!r} cannot be bought online.", code="plan_not_available")
        if account.status == "suspended":
            raise PermissionDenied("This account is suspended. Contact support to reactivate it.")
        customer = await self._store.billing_customer(account.id)
        if customer is not None and customer.subscription_status in _SUBSCRIBED:
            raise InvalidRequest("This account has a subscription already: change it under 'Manage payment'.",
                                 code="subscription_exists")
        try:
            if customer is None:
                customer = await self._store.link_customer(account.id, await self._api.create_customer(account.id))
                assert customer is not None
            return await self._api.checkout_url(
                customer=customer.customer_id, account_id=account.id, price=offer.price,
                metered=offer.meter_event is not None,
                success_url=f"{self._public_url}{return_path}?done=checkout_done",
                cancel_url=f"{self._public_url}{return_path}?done=checkout_cancelled",
                automatic_tax=self.config.automatic_tax, collect_tax_id=self.config.collect_tax_id)
        except stripe.StripeError as exc:
            raise _unavailable("checkout", exc) from None

    async def portal_url(self, account: Account, return_path: str) -> str:
        """The Stripe Billing Portal for the account's customer (card, invoices, cancellation)."""
        customer = await self._store.billing_customer(account.id)
        if customer is None:
            raise InvalidRequest("This account has not subscribed yet: choose a plan first.",
                                 code="no_subscription")
        try:
            return await self._api.portal_url(customer=customer.customer_id,
                                              return_url=f"{self._public_url}{return_path}")
        except stripe.StripeError as exc:
            raise _unavailable("billing portal", exc) from None

    async def end_subscriptions(self, account_ids: Iterable[int]) -> int:
        """Cancel these accounts' live subscriptions before they are erased;
        SubscriptionsNotCancelled (erase nothing) when Stripe fails."""
        return await cancel_subscriptions(self._store, self._api, account_ids)

    # ------------------------------------------------------------------ webhooks

    async def webhook(self, payload: bytes, signature: str | None) -> str:
        """Verify and apply one webhook delivery; what became of it, for the response."""
        try:
            event = stripe.Webhook.construct_event(payload, signature or "", self._webhook_secret)
        except (stripe.SignatureVerificationError, ValueError):
            # ValueError: a body that is no JSON, or not UTF-8.
            raise InvalidRequest("Invalid Stripe signature.", code="invalid_signature") from None
        return await self.apply(event)

    async def apply(self, event: Any) -> str:
        event_id, event_type = str(event.id), str(event.type)
        if await self._store.billing_event_seen(event_id):
            return "duplicate"
        if event_type not in HANDLED:
            await self._store.record_billing_event(event_id, event_type)
            return "ignored"
        obj = event.data.object
        customer_id = obj.get("customer")
        customer = await self._store.billing_customer_by_id(customer_id) if isinstance(customer_id, str) else None
        if customer is None and event_type == "checkout.session.completed" and isinstance(customer_id, str):
            reference = obj.get("client_reference_id")
            if isinstance(reference, str) and reference.isdigit() and len(reference) < 19:
                customer = await self._store.link_customer(int(reference), customer_id)
        if customer is None or customer.customer_id != customer_id:
            await self._store.record_billing_event(event_id, event_type)
            log.info("billing event %s for a customer of no account: ignored", event_type)
            return "ignored"
        try:
            subscriptions = await self._api.subscriptions(customer_id)
        except stripe.StripeError as exc:
            raise _unavailable("subscription lookup", exc) from None
        now = utc_now()
        chosen = status.current(subscriptions)
        try:
            applied = await self._store.apply_billing_event(
                event_id, event_type, customer.account_id,
                lambda row: status.decide(self.config, row, chosen, now))
        except CustomerGone:
            # Deleting an account cancels its subscription first, and Stripe's
            # event about that can arrive while the account's rows are going.
            await self._store.record_billing_event(event_id, event_type)
            log.info("billing event %s for an account erased meanwhile: ignored", event_type)
            return "ignored"
        if not applied:
            return "duplicate"
        log.info("billing event %s applied to account %d: subscription %s", event_type, customer.account_id,
                 chosen.status if chosen else "none")
        return "applied"

    # ------------------------------------------------------------------ sweep

    async def sweep(self, now: datetime | None = None) -> None:
        """End grace periods that ran out, forget old event ids, report closed
        days of per-token plans (as of ``now``, UTC, naive as stored; the clock by default)."""
        now = now or utc_now()
        await self._store.prune_billing_events(now - EVENT_MEMORY)
        ended = await self._store.expire_grace(now)
        if ended:
            log.info("grace period ended for %d account(s): inactive", ended)
        if any(plan.meter_event for plan in self.config.plans.values()):
            await report_closed_days(self._store, self._api, self.config, now)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("billing sweep failed: %s", describe_error(exc))
            await asyncio.sleep(self.config.sweep_interval)


def _unavailable(what: str, exc: BaseException) -> BillingUnavailable:
    log.warning("Stripe %s failed: %s", what, describe_error(exc))
    return BillingUnavailable("The payment provider cannot be reached just now. Please try again shortly.")
