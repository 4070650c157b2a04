"""The Stripe webhook endpoint, and the website's permission to send a form to
Stripe.

The webhook is public (Stripe has no API key of ours) and trusted only through
the signature the billing service verifies. The dashboard's payment buttons
post to this server, which answers with a redirect to Stripe's Checkout or
Billing Portal; browsers check that redirect against the page's CSP
``form-action``, so the portal's pages allow Stripe's two page origins (and
``billing.api_base``'s, for a test fake) there.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from sanic import Sanic
from sanic.response import HTTPResponse, json

from privatai.api.context import GatewayRequest
from privatai.billing.config import BillingConfig
from privatai.errors import NotFound

WEBHOOK_PATH = "/billing/webhook"
STRIPE_PAGES = ("https://checkout.stripe.com", "https://billing.stripe.com")
_FORMS_TO_SELF = "form-action 'self'"


async def stripe_webhook(request: GatewayRequest) -> HTTPResponse:
    billing = request.app.ctx.state.billing
    if billing is None:
        raise NotFound("Not found.")
    outcome = await billing.webhook(request.body, request.headers.get("stripe-signature"))
    return json({"received": True, "outcome": outcome})


def register(app: Sanic, billing: BillingConfig) -> None:
    app.add_route(stripe_webhook, WEBHOOK_PATH, methods=["POST"], name="billing_webhook")
    origins = list(STRIPE_PAGES)
    if billing.api_base is not None:
        parts = urlsplit(billing.api_base)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    forms_to_stripe = f"{_FORMS_TO_SELF} {' '.join(origins)}"

    async def allow_forms_to_stripe(request: GatewayRequest, response: HTTPResponse) -> None:
        policy = response.headers.get("content-security-policy")
        if policy is not None and _FORMS_TO_SELF in policy:
            response.headers["content-security-policy"] = policy.replace(_FORMS_TO_SELF, forms_to_stripe)

    app.on_response(allow_forms_to_stripe)
