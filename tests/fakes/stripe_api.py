"""A fake of the Stripe API on a real socket, plus hosted Checkout and Billing
Portal pages standing in for Stripe's.

It speaks Stripe's wire format for what PrivatAI calls: form-encoded request
bodies with bracketed nesting (``line_items[0][price]=...``), Bearer secret
keys, JSON objects carrying ``object`` and ``id``, lists as ``{"object":
"list", "data": [...], "has_more": false}``, and errors as ``{"error":
{"type", "message", "code", "param"}}`` with Stripe's statuses and its
``Stripe-Should-Retry`` header. Webhook events are ``{"object": "event",
"type", "data": {"object": ...}}`` posted with a ``Stripe-Signature`` header
made by Stripe's scheme (``t=<unix time>,v1=<HMAC-SHA256 of "t.body">``).

Endpoints: POST /v1/customers, POST/GET /v1/checkout/sessions,
POST /v1/billing_portal/sessions, GET /v1/subscriptions (customer, status),
GET /v1/subscriptions/{id}, DELETE /v1/subscriptions/{id} (cancels at once
and answers the canceled subscription; customer.subscription.deleted follows
after the response, as Stripe sends it: watch ``deliveries``),
POST /v1/billing/meter_events (a repeated ``identifier`` is not counted
again, as Stripe keeps it unique for at least a day). Hosted pages:
GET /checkout/{session} (a "Pay" form; paying creates an active
subscription, sends customer.subscription.created, invoice.paid and
checkout.session.completed, and redirects to the success URL) and
GET /portal/{session} (a "Cancel subscription" form: customer.subscription.deleted).

A test drives the rest: ``fail_payment``, ``pay``, ``cancel`` change a
subscription and emit the events Stripe would; ``deliver = False`` keeps
events in ``outbox`` for the test to post in any order; ``fail(path, times)``
makes the next calls to a path fail with a 500 ``api_error``.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from tests.fakes.server import FakeBackend, Recorded

SECRET_KEY = "sk_test_fake_privatai"
WEBHOOK_SECRET = "whsec_fake_privatai"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload``, as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding: ``a[b][0][c]=v`` -> {"a": {"b": [{"c": "v"}]}}."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = result
        for part, following in zip(parts, parts[1:]):
            container: Any = [] if following.isdigit() else {}
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                node[index] = node[index] if node[index] is not None else container
                node = node[index]
            else:
                node = node.setdefault(part, container)
        last = parts[-1]
        if isinstance(node, list):
            index = int(last)
            while len(node) <= index:
                node.append(None)
            node[index] = value
        else:
            node[last] = value
    return result


def _error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None, retry: bool | None = None) -> web.Response:
    body = {"error": {"type": type_, "message": message, **({"code": code} if code else {}),
                      **({"param": param} if param else {})}}
    headers = {"Stripe-Should-Retry": "true" if retry else "false"} if retry is not None else {}
    return web.json_response(body, status=status, headers=headers)


@dataclass
class FakeSubscription:
    id: str
    customer: str
    price: str
    status: str = "active"
    created: int = field(default_factory=lambda: int(time.time()))
    metadata: dict[str, str] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "subscription", "customer": self.customer, "status": self.status,
            "created": self.created, "livemode": False, "metadata": self.metadata,
            "cancel_at_period_end": False,
            "items": {"object": "list", "has_more": False, "url": f"/v1/subscription_items?subscription={self.id}",
                      "data": [{"id": f"si_{self.id[4:]}", "object": "subscription_item", "quantity": 1,
                                "price": {"id": self.price, "object": "price", "active": True,
                                          "currency": "eur", "type": "recurring"}}]},
        }


class FakeStripe(FakeBackend):
    """The fake Stripe API; ``webhook_url`` is where it posts events."""

    kind: ClassVar[str] = "stripe"
    chat_path: ClassVar[str] = "/-"

    def __init__(self, *, webhook_url: str | None = None) -> None:
        super().__init__(models=())
        self.webhook_url = webhook_url
        self.webhook_secret = WEBHOOK_SECRET
        self.deliver = True
        self.outbox: list[bytes] = []            # events not delivered (deliver False)
        self.deliveries: list[tuple[str, int]] = []  # (event type, webhook status) of delivered events
        self.sent_at: list[float] = []                # when each delivery was sent (time.monotonic())
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, FakeSubscription] = {}
        self.meter_events: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, int] = {}
        self._sending: set[asyncio.Future[None]] = set()  # events sent after a response, while in flight
        self._ids = itertools.count(1)

    # -- test controls ---------------------------------------------------------

    def fail(self, path: str, times: int = 1) -> None:
        """The next ``times`` calls to ``path`` (e.g. ``/v1/billing/meter_events``) fail with a 500."""
        self.failures[path] = times

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    def event(self, type_: str, obj: dict[str, Any]) -> bytes:
        """An event as Stripe sends it, serialised once (the signature covers these bytes)."""
        return json.dumps({
            "id": self.new_id("evt"), "object": "event", "api_version": "2025-10-29.clover",
            "created": int(time.time()), "type": type_, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "data": {"object": obj},
        }).encode()

    def invoice(self, sub: FakeSubscription, status: str) -> dict[str, Any]:
        return {"id": self.new_id("in"), "object": "invoice", "customer": sub.customer, "status": status,
                "currency": "eur", "livemode": False,
                "parent": {"type": "subscription_details",
                           "subscription_details": {"subscription": sub.id, "metadata": sub.metadata}}}

    async def emit(self, *events: bytes) -> None:
        """Deliver events in order (or keep them in ``outbox``)."""
        for payload in events:
            if not self.deliver or self.webhook_url is None:
                self.outbox.append(payload)
                continue
            await self.post(payload)

    async def post(self, payload: bytes, signature: str | None = None) -> tuple[int, Any]:
        """POST one event to the webhook, signed unless ``signature`` is given."""
        assert self.webhook_url is not None
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": signature if signature is not None else sign(payload, self.webhook_secret)}
        self.sent_at.append(time.monotonic())
        async with aiohttp.ClientSession() as session:
            async with session.post(self.webhook_url, data=payload, headers=headers) as response:
                body = await response.json(content_type=None)
        try:
            event_type = json.loads(payload)["type"]
        except ValueError:
            event_type = "(not JSON)"
        self.deliveries.append((event_type, response.status))
        return response.status, body

    async def subscribe(self, customer: str, price: str) -> FakeSubscription:
        sub = FakeSubscription(self.new_id("sub"), customer, price)
        self.subscriptions[sub.id] = sub
        await self.emit(self.event("customer.subscription.created", sub.wire()),
                        self.event("invoice.paid", self.invoice(sub, "paid")))
        return sub

    async def fail_payment(self, sub_id: str) -> None:
        sub = self.subscriptions[sub_id]
        sub.status = "past_due"
        await self.emit(self.event("invoice.payment_failed", self.invoice(sub, "open")),
                        self.event("customer.subscription.updated", sub.wire()))

    async def pay(self, sub_id: str) -> None:
        sub = self.subscriptions[sub_id]
        sub.status = "active"
        await self.emit(self.event("invoice.paid", self.invoice(sub, "paid")),
                        self.event("customer.subscription.updated", sub.wire()))

    async def cancel(self, sub_id: str) -> None:
        sub = self.subscriptions[sub_id]
        sub.status = "canceled"
        await self.emit(self.event("customer.subscription.deleted", sub.wire()))

    # -- serving ---------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = (await request.read()).decode() if request.can_read_body else ""
        params = decode_form(raw or request.query_string)
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), params))
        path = request.path
        if path.startswith(("/checkout/", "/portal/")):
            return await self._hosted(request, path, params)
        if request.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return _error(401, "Invalid API Key provided.", code="api_key_invalid")
        if self.failures.get(path, 0) > 0:
            self.failures[path] -= 1
            return _error(500, "An unknown error occurred.", type_="api_error", retry=False)
        route = (request.method, re.sub(r"/(cus|cs|sub)_[A-Za-z0-9]+$", r"/{id}", path))
        handler = {
            ("POST", "/v1/customers"): self._create_customer,
            ("POST", "/v1/checkout/sessions"): self._create_session,
            ("GET", "/v1/checkout/sessions/{id}"): self._get_session,
            ("POST", "/v1/billing_portal/sessions"): self._create_portal,
            ("GET", "/v1/subscriptions"): self._list_subscriptions,
            ("GET", "/v1/subscriptions/{id}"): self._get_subscription,
            ("DELETE", "/v1/subscriptions/{id}"): self._cancel_subscription,
            ("POST", "/v1/billing/meter_events"): self._meter_event,
        }.get(route)
        if handler is None:
            return _error(404, f"Unrecognized request URL ({request.method}: {path}).")
        return await handler(path.rsplit("/", 1)[-1], params)

    async def _create_customer(self, _: str, params: dict[str, Any]) -> web.Response:
        customer = {"id": self.new_id("cus"), "object": "customer", "created": int(time.time()),
                    "livemode": False, "metadata": params.get("metadata", {}), "email": params.get("email")}
        self.customers[customer["id"]] = customer
        return web.json_response(customer)

    async def _create_session(self, _: str, params: dict[str, Any]) -> web.Response:
        for name in ("mode", "success_url", "line_items"):
            if name not in params:
                return _error(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        if params.get("customer") not in self.customers:
            return _error(400, f"No such customer: '{params.get('customer')}'", code="resource_missing",
                          param="customer")
        session_id = self.new_id("cs")
        session = {"id": session_id, "object": "checkout.session", "mode": params["mode"], "status": "open",
                   "payment_status": "unpaid", "customer": params["customer"],
                   "client_reference_id": params.get("client_reference_id"),
                   "success_url": params["success_url"], "cancel_url": params.get("cancel_url"),
                   "metadata": params.get("metadata", {}), "subscription": None, "livemode": False,
                   "url": f"{self.root}/checkout/{session_id}", "_params": params}
        self.sessions[session_id] = session
        return web.json_response(_public(session))

    async def _get_session(self, session_id: str, _: dict[str, Any]) -> web.Response:
        if session_id not in self.sessions:
            return _error(404, f"No such checkout.session: '{session_id}'", code="resource_missing", param="id")
        return web.json_response(_public(self.sessions[session_id]))

    async def _create_portal(self, _: str, params: dict[str, Any]) -> web.Response:
        if params.get("customer") not in self.customers:
            return _error(400, f"No such customer: '{params.get('customer')}'", code="resource_missing",
                          param="customer")
        portal_id = self.new_id("bps")
        portal = {"id": portal_id, "object": "billing_portal.session", "customer": params["customer"],
                  "return_url": params.get("return_url"), "livemode": False, "created": int(time.time()),
                  "url": f"{self.root}/portal/{portal_id}"}
        self.sessions[portal_id] = portal
        return web.json_response(portal)

    async def _list_subscriptions(self, _: str, params: dict[str, Any]) -> web.Response:
        wanted = params.get("status", "active")
        subs = [s.wire() for s in self.subscriptions.values()
                if s.customer == params.get("customer", s.customer)
                and (wanted == "all" or s.status == wanted or (wanted == "active" and s.status == "trialing"))]
        subs.sort(key=lambda s: s["created"], reverse=True)
        return web.json_response({"object": "list", "data": subs, "has_more": False, "url": "/v1/subscriptions"})

    async def _get_subscription(self, sub_id: str, _: dict[str, Any]) -> web.Response:
        if sub_id not in self.subscriptions:
            return _error(404, f"No such subscription: '{sub_id}'", code="resource_missing", param="id")
        return web.json_response(self.subscriptions[sub_id].wire())

    async def _cancel_subscription(self, sub_id: str, _: dict[str, Any]) -> web.Response:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return _error(404, f"No such subscription: '{sub_id}'", code="resource_missing", param="id")
        if sub.status in ("canceled", "incomplete_expired"):
            return _error(400, "A canceled subscription can only update its cancellation_details and metadata.")
        sub.status = "canceled"
        sending = asyncio.ensure_future(self.emit(self.event("customer.subscription.deleted", sub.wire())))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)
        return web.json_response(sub.wire())

    async def _meter_event(self, _: str, params: dict[str, Any]) -> web.Response:
        identifier = params.get("identifier") or self.new_id("mev")
        event = self.meter_events.setdefault(identifier, {
            "object": "billing.meter_event", "event_name": params.get("event_name"), "identifier": identifier,
            "payload": params.get("payload", {}), "timestamp": int(params.get("timestamp", time.time())),
            "created": int(time.time()), "livemode": False})
        return web.json_response(event)

    # -- the hosted pages ------------------------------------------------------

    async def _hosted(self, request: web.Request, path: str, params: dict[str, Any]) -> web.StreamResponse:
        kind, session_id = path.strip("/").split("/", 1)
        session = self.sessions.get(session_id)
        if session is None:
            return web.Response(status=404, text="No such session")
        if request.method == "GET":
            action, label = ("Pay and subscribe", "pay") if kind == "checkout" else ("Cancel subscription", "cancel")
            page = (f"<!doctype html><title>Fake Stripe</title><h1>Fake Stripe {html.escape(kind)}</h1>"
                    f"<form method=post><button name=action value={label}>{html.escape(action)}</button></form>")
            return web.Response(text=page, content_type="text/html")
        if kind == "checkout":
            price = session["_params"]["line_items"][0]["price"]
            sub = FakeSubscription(self.new_id("sub"), session["customer"], price,
                                   metadata=session["_params"].get("subscription_data", {}).get("metadata", {}))
            self.subscriptions[sub.id] = sub
            session.update(status="complete", payment_status="paid", subscription=sub.id)
            await self.emit(self.event("customer.subscription.created", sub.wire()),
                            self.event("invoice.paid", self.invoice(sub, "paid")),
                            self.event("checkout.session.completed", _public(session)))
            raise web.HTTPSeeOther(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id))
        for sub in self.subscriptions.values():
            if sub.customer == session["customer"] and sub.status != "canceled":
                await self.cancel(sub.id)
        raise web.HTTPSeeOther(session["return_url"])


def _public(session: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if not k.startswith("_")}
