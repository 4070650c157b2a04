"""The Stripe webhook endpoint: public (Stripe has no API key of ours), and
trusted only through the signature the billing service verifies."""
from __future__ import annotations

from sanic import Sanic
from sanic.response import HTTPResponse, json

from privatai.api.context import GatewayRequest
from privatai.errors import NotFound

WEBHOOK_PATH = "/billing/webhook"


async def stripe_webhook(request: GatewayRequest) -> HTTPResponse:
    billing = request.app.ctx.state.billing
    if billing is None:
        raise NotFound("Not found.")
    outcome = await billing.webhook(request.body, request.headers.get("stripe-signature"))
    return json({"received": True, "outcome": outcome})


def register(app: Sanic) -> None:
    app.add_route(stripe_webhook, WEBHOOK_PATH, methods=["POST"], name="billing_webhook")
