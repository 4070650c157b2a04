"""The few Stripe API calls billing makes, through stripe-python's async client.

stripe-python's ``*_async`` methods run on httpx's async client, so no call
blocks the event loop. Stripe retries POSTs with idempotency keys itself
(``max_network_retries``). What goes to Stripe about an account is its id
(in metadata, to find it again) and nothing else: Checkout asks the customer
for name, e-mail and address on Stripe's page.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import stripe

from privatai.billing.config import BillingConfig

# A Stripe API call that hangs must not hold a webhook (Stripe waits 20 s) or a page.
TIMEOUT = 15.0
ACCOUNT_METADATA = "privatai_account"


class BillingNotConfigured(Exception):
    """A secret the billing section names is not in the environment."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """What billing reads of a Stripe subscription."""

    id: str
    status: str  # Stripe's: active, trialing, past_due, unpaid, incomplete, canceled, ...
    price: str | None  # the first item's price
    created: int


class StripeApi:
    """A StripeClient on its own async HTTP client; :meth:`close` when done."""

    def __init__(self, secret_key: str, *, api_base: str | None = None) -> None:
        self._http = stripe.HTTPXClient(timeout=TIMEOUT)
        addresses: Any = {"api": api_base, "meter_events": api_base} if api_base else None
        self._client = stripe.StripeClient(secret_key, base_addresses=addresses, http_client=self._http,
                                           max_network_retries=2)

    async def close(self) -> None:
        await self._http.close_async()

    async def create_customer(self, account_id: int) -> str:
        customer = await self._client.v1.customers.create_async(
            {"metadata": {ACCOUNT_METADATA: str(account_id)}})
        return customer.id

    async def checkout_url(self, *, customer: str, account_id: int, price: str, metered: bool,
                           success_url: str, cancel_url: str, automatic_tax: bool, collect_tax_id: bool) -> str:
        """A Checkout session in subscription mode; the page to send the customer to."""
        item: dict[str, Any] = {"price": price}
        if not metered:
            item["quantity"] = 1  # a metered price takes no quantity: the meter is the quantity
        params: dict[str, Any] = {
            "mode": "subscription", "customer": customer, "line_items": [item],
            "client_reference_id": str(account_id),
            "success_url": success_url, "cancel_url": cancel_url,
            "subscription_data": {"metadata": {ACCOUNT_METADATA: str(account_id)}},
        }
        if automatic_tax:
            params["automatic_tax"] = {"enabled": True}
            params["customer_update"] = {"address": "auto", "name": "auto"}
        if collect_tax_id:
            params["tax_id_collection"] = {"enabled": True}
            params.setdefault("customer_update", {})["name"] = "auto"
        session = await self._client.v1.checkout.sessions.create_async(params)
        assert session.url is not None
        return session.url

    async def portal_url(self, *, customer: str, return_url: str) -> str:
        """A Billing Portal session: card changes, invoices, cancellation."""
        session = await self._client.v1.billing_portal.sessions.create_async(
            {"customer": customer, "return_url": return_url})
        return session.url

    async def subscriptions(self, customer: str) -> list[Subscription]:
        """Every subscription of a customer, whatever its status, as Stripe has it now."""
        listed = await self._client.v1.subscriptions.list_async({"customer": customer, "status": "all",
                                                                 "limit": 100})
        result = []
        async for sub in listed.auto_paging_iter():
            items = sub["items"].data
            price = items[0].price.id if items else None
            result.append(Subscription(sub.id, sub.status, price, sub.created))
        return result

    async def cancel_subscription(self, subscription: str) -> None:
        """End a subscription now (``DELETE /v1/subscriptions/{id}``): no further invoice."""
        await self._client.v1.subscriptions.cancel_async(subscription)

    async def meter_event(self, *, event_name: str, customer: str, value: int, identifier: str,
                          timestamp: int) -> None:
        """One meter event; Stripe keeps ``identifier`` unique, so a resend is not counted twice."""
        await self._client.v1.billing.meter_events.create_async({
            "event_name": event_name, "identifier": identifier, "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer, "value": str(value)}})


def stripe_api(billing: BillingConfig) -> StripeApi:
    """The Stripe client the section names (key from the environment), for the server and the CLI."""
    return StripeApi(secret(billing, "secret_key_env"), api_base=billing.api_base)


def secret(billing: BillingConfig, field: str) -> str:
    """The value of the environment variable ``billing.<field>`` names; BillingNotConfigured if unset."""
    name = getattr(billing, field)
    value = os.environ.get(name)
    if not value:
        raise BillingNotConfigured(f"the environment variable {name} (billing.{field}) is not set")
    return value
