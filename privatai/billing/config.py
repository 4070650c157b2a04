"""The ``billing:`` section of backends.yaml.

Secrets never live in the file: the Stripe secret key and the webhook signing
secret are read from the environment variables the section names, at start.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from privatai.errors import ConfigError

_PRICE = re.compile(r"price_[A-Za-z0-9]+")
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BillingPlan(_Section):
    # The Stripe price a subscription to this plan uses (recurring; metered for per-token plans).
    price: str
    # The event_name of the Stripe meter a per-token plan's price is billed by;
    # unset: a flat-rate plan, nothing is reported.
    meter_event: str | None = None


class BillingConfig(_Section):
    mode: Literal["none", "stripe"] = "none"
    # Plan name (as in `plans:`) -> its Stripe price. Plans not listed cannot be bought online.
    plans: dict[str, BillingPlan] = {}
    secret_key_env: str = "STRIPE_SECRET_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    # How long keys keep working after a failed payment, while Stripe retries the card.
    grace_days: Annotated[float, msgspec.Meta(ge=0, le=365)] = 7.0
    # Seconds between the background checks: grace periods that ran out, and
    # closed days of per-token plans still to report (a failed report is retried here).
    sweep_interval: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    # Stripe Tax computes VAT at checkout (needs Stripe Tax set up); and
    # whether Checkout asks businesses for their VAT ID.
    automatic_tax: bool = False
    collect_tax_id: bool = True
    # Another Stripe API address (stripe-mock, a test fake). Unset: Stripe's.
    api_base: str | None = None

    def plan_of_price(self, price: str | None) -> str | None:
        """The plan a Stripe price belongs to, or None."""
        return next((name for name, plan in self.plans.items() if plan.price == price), None)


def check_billing(source: str, billing: BillingConfig, plan_names: set[str], public_url: str | None) -> None:
    """The cross-checks msgspec cannot make: ConfigError naming the key."""
    if billing.mode == "none":
        return
    if public_url is None:
        raise ConfigError(source, "portal.public_url",
                          "required with billing.mode stripe: Stripe sends customers back to it")
    if not billing.plans:
        raise ConfigError(source, "billing.plans", "name at least one plan and its Stripe price")
    for name, plan in billing.plans.items():
        where = f"billing.plans.{name}"
        if name not in plan_names:
            raise ConfigError(source, where, f"{name!r} is not a plan in 'plans'")
        if not _PRICE.fullmatch(plan.price):
            raise ConfigError(source, f"{where}.price", "must be a Stripe price id like price_1Nx...")
        if plan.meter_event is not None and not _EVENT_NAME.fullmatch(plan.meter_event):
            raise ConfigError(source, f"{where}.meter_event", "must be a Stripe meter's event_name")
    prices = [plan.price for plan in billing.plans.values()]
    if len(set(prices)) != len(prices):
        raise ConfigError(source, "billing.plans", "two plans use the same price")
