"""Billing's errors that pages raise or catch without a running Billing.

Kept apart from the Stripe calls so the portal can name them without
importing stripe-python (only a gateway with ``billing.mode: stripe`` does).
"""
from __future__ import annotations

from privatai.errors import PrivatAIError


class SubscriptionsNotCancelled(PrivatAIError):
    """Stripe could not be reached or refused a cancellation: the account must stay."""

    status = 503
    type = "api_error"
    code = "stripe_cancel_failed"
