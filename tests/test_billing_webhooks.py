"""Stripe subscriptions move an account's status: Checkout, signed webhooks
applied exactly once, out-of-order delivery, failed payment, grace, recovery.

The gateway runs with billing.mode stripe against the fake Stripe API
(tests/fakes/stripe_api.py) through the real stripe-python client; webhooks
carry signatures made with Stripe's scheme, and the API keys are exercised
with the openai SDK, as a customer would.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from privatai.core.events import TextDelta
from tests.billing_helpers import (PRO_PRICE, billed_gateway, billing_of, chat, new_customer_account, refusal,
                                   set_status, status_of, store_of, subscribe)
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, FakeStripe, sign
from tests.gateway import LocalGateway, eventually
from tests.scripted import ScriptedBackend, ScriptedBackends


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("e")


Billed = tuple[LocalGateway, FakeStripe]


@pytest.fixture
async def billed(tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Billed]:
    async with billed_gateway(tmp_path, backend, monkeypatch) as (gateway, fake):
        yield gateway, fake


async def test_checkout_activates_and_cancellation_refuses_at_once(billed: Billed,
                                                                   backend: ScriptedBackend) -> None:
    gateway, fake = billed
    key = await new_customer_account(gateway, "acme")
    assert await refusal(gateway, key) == "subscription_inactive"
    sub = await subscribe(gateway, fake, "acme")
    assert [status for _, status in fake.deliveries] == [200, 200, 200]
    account = await store_of(gateway).get_account("acme")
    assert (account.status, account.plan) == ("active", "pro")
    backend.reply(TextDelta("Hello, customer"))
    assert await chat(gateway, key) == "Hello, customer"
    # The customer's Stripe object carries the account id and nothing else of ours.
    session = next(iter(s for s in fake.sessions.values() if s["object"] == "checkout.session"))
    assert session["_params"]["line_items"] == [{"price": PRO_PRICE, "quantity": "1"}]
    assert fake.customers[session["customer"]]["metadata"] == {"privatai_account": str(account.id)}

    await fake.cancel(sub)
    # Within the auth cache's TTL: the status change clears it.
    assert await refusal(gateway, key) == "subscription_inactive"
    assert await status_of(gateway, "acme") == "inactive"


async def test_forged_stale_and_unsigned_webhooks_are_refused(billed: Billed) -> None:
    gateway, fake = billed
    key = await new_customer_account(gateway, "acme")
    fake.deliver = False
    await subscribe(gateway, fake, "acme")
    paid = fake.outbox[1]
    forged_body = paid.replace(b'"paid"', b'"PAID"')
    cases = {
        "wrong secret": (paid, sign(paid, "whsec_attacker")),
        "body changed after signing": (forged_body, sign(paid, fake.webhook_secret)),
        "stale timestamp": (paid, sign(paid, fake.webhook_secret, int(time.time()) - 3600)),
        "no signature": (paid, ""),
    }
    for case, (body, signature) in cases.items():
        status, answer = await fake.post(body, signature=signature)
        assert status == 400, case
        assert answer["error"]["code"] == "invalid_signature", case
    assert await status_of(gateway, "acme") == "inactive"
    assert await refusal(gateway, key) == "subscription_inactive"
    # The genuine delivery still works afterwards.
    status, answer = await fake.post(paid)
    assert (status, answer["outcome"]) == (200, "applied")
    assert await refusal(gateway, key) is None


async def test_a_replayed_event_changes_nothing(billed: Billed) -> None:
    gateway, fake = billed
    await new_customer_account(gateway, "acme")
    sub = await subscribe(gateway, fake, "acme")
    fake.deliver = False
    await fake.fail_payment(sub)
    failed = fake.outbox[0]
    assert (await fake.post(failed))[1]["outcome"] == "applied"
    account = await store_of(gateway).get_account("acme")
    first = await store_of(gateway).billing_customer(account.id)
    assert first is not None and first.grace_until is not None
    lookups = len([r for r in fake.requests if r.path == "/v1/subscriptions"])
    await asyncio.sleep(1.1)  # a replay a second later must not restart the grace period
    for _ in range(3):
        status, answer = await fake.post(failed)
        assert (status, answer["outcome"]) == (200, "duplicate")
    assert await store_of(gateway).billing_customer(account.id) == first
    # Not even read again from Stripe.
    assert len([r for r in fake.requests if r.path == "/v1/subscriptions"]) == lookups


async def test_out_of_order_delivery_ends_in_stripes_current_state(billed: Billed) -> None:
    gateway, fake = billed
    key = await new_customer_account(gateway, "acme")
    fake.deliver = False
    sub = await subscribe(gateway, fake, "acme")
    await fake.cancel(sub)
    created, paid, completed, deleted = fake.outbox
    # The deletion first, then the events that came before it.
    for event in (deleted, completed, paid, created):
        assert (await fake.post(event))[0] == 200
        assert await status_of(gateway, "acme") == "inactive"
    assert await refusal(gateway, key) == "subscription_inactive"

    # A new subscription; the old one's late "updated" must not undo it.
    fake.outbox.clear()
    fake.deliver = True
    await subscribe(gateway, fake, "acme")
    assert await status_of(gateway, "acme") == "active"
    late = fake.event("customer.subscription.updated", fake.subscriptions[sub].wire())
    assert (await fake.post(late))[1]["outcome"] == "applied"
    assert await status_of(gateway, "acme") == "active"
    assert await refusal(gateway, key) is None


async def test_failed_payment_keeps_serving_in_grace_then_recovers(
        tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    async with billed_gateway(tmp_path, backend, monkeypatch, grace_days=3) as (gateway, fake):
        key = await new_customer_account(gateway, "acme")
        sub = await subscribe(gateway, fake, "acme")
        before = time.time()
        await fake.fail_payment(sub)
        assert await status_of(gateway, "acme") == "past_due"
        assert await refusal(gateway, key) is None
        account = await store_of(gateway).get_account("acme")
        customer = await store_of(gateway).billing_customer(account.id)
        assert customer is not None and customer.grace_until is not None
        grace = time.mktime(time.strptime(customer.grace_until, "%Y-%m-%dT%H:%M:%S")) - time.timezone - before
        assert 3 * 86400 - 5 <= grace <= 3 * 86400 + 5
        await fake.pay(sub)
        assert await status_of(gateway, "acme") == "active"
        customer = await store_of(gateway).billing_customer(account.id)
        assert customer is not None and customer.grace_until is None
        assert await refusal(gateway, key) is None


async def test_grace_expiry_makes_the_account_inactive(
        tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two seconds of grace, checked every 0.1 s.
    async with billed_gateway(tmp_path, backend, monkeypatch, grace_days=2 / 86400,
                              sweep_interval=0.1) as (gateway, fake):
        key = await new_customer_account(gateway, "acme")
        sub = await subscribe(gateway, fake, "acme")
        await fake.fail_payment(sub)
        assert await refusal(gateway, key) is None

        async def refused() -> str | None:
            return await refusal(gateway, key)

        assert await eventually(refused, 10, "grace ran out") == "subscription_inactive"
        assert await status_of(gateway, "acme") == "inactive"
        # Stripe still retries the card: a late event while still past due keeps it inactive.
        late = fake.event("customer.subscription.updated", fake.subscriptions[sub].wire())
        assert (await fake.post(late))[1]["outcome"] == "applied"
        assert await status_of(gateway, "acme") == "inactive"
        # Paying at last brings it back.
        await fake.pay(sub)
        assert await refusal(gateway, key) is None


async def test_billing_never_lifts_a_suspension_or_a_pending_approval(billed: Billed) -> None:
    gateway, fake = billed
    key = await new_customer_account(gateway, "acme")
    sub = await subscribe(gateway, fake, "acme")
    done = await gateway.cli("accounts", "suspend", "acme")
    assert done.returncode == 0, done.stderr
    await fake.pay(sub)
    assert await status_of(gateway, "acme") == "suspended"
    assert await eventually(lambda: refusal(gateway, key), 5, "suspension applied") == "account_suspended"
    # A sign-up awaiting approval stays so, paid or not, until the operator approves it.
    waiting = await new_customer_account(gateway, "newco")
    await asyncio.to_thread(set_status, gateway, "newco", "pending")
    await subscribe(gateway, fake, "newco")
    assert await status_of(gateway, "newco") == "pending"
    assert await eventually(lambda: refusal(gateway, waiting), 5, "pending applied") == "account_pending"


async def test_events_of_unknown_customers_and_other_types_are_acknowledged(billed: Billed) -> None:
    gateway, fake = billed
    stranger = fake.event("invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_nobody"})
    other = fake.event("charge.refunded", {"id": "ch_x", "object": "charge", "customer": "cus_nobody"})
    for event in (stranger, other):
        status, answer = await fake.post(event)
        assert (status, answer["outcome"]) == (200, "ignored")
        assert (await fake.post(event))[1]["outcome"] == "duplicate"
    not_json = b"{not json"
    assert (await fake.post(not_json, signature=sign(not_json, fake.webhook_secret)))[0] == 400


async def test_stripe_down_during_a_webhook_asks_stripe_to_retry(billed: Billed) -> None:
    gateway, fake = billed
    key = await new_customer_account(gateway, "acme")
    fake.deliver = False
    await subscribe(gateway, fake, "acme")
    fake.fail("/v1/subscriptions")
    status, answer = await fake.post(fake.outbox[0])
    assert status == 503 and answer["error"]["code"] == "billing_unavailable"
    assert await status_of(gateway, "acme") == "inactive"
    # Stripe's retry of the same event is then applied.
    status, answer = await fake.post(fake.outbox[0])
    assert (status, answer["outcome"]) == (200, "applied")
    assert await refusal(gateway, key) is None


async def test_checkout_and_portal_links(billed: Billed) -> None:
    gateway, fake = billed
    await new_customer_account(gateway, "acme")
    billing = billing_of(gateway)
    account = await store_of(gateway).get_account("acme")
    from privatai.errors import InvalidRequest
    with pytest.raises(InvalidRequest) as refused:
        await billing.checkout_url(account, "enterprise", "/konto/1")
    assert refused.value.code == "plan_not_available"
    with pytest.raises(InvalidRequest) as refused:
        await billing.portal_url(account, "/konto/1")
    assert refused.value.code == "no_subscription"
    await subscribe(gateway, fake, "acme")
    with pytest.raises(InvalidRequest) as refused:
        await billing.checkout_url(await store_of(gateway).get_account("acme"), "pro", "/konto/1")
    assert refused.value.code == "subscription_exists"
    url = await billing.portal_url(account, "/konto/1")
    portal = fake.sessions[url.rsplit("/", 1)[-1]]
    assert portal["return_url"] == "https://api.example.de/konto/1"
    # The hosted portal's cancellation reaches the account through the webhook.
    async with httpx.AsyncClient() as http:
        done = await http.post(url, data={"action": "cancel"})
    assert done.status_code == 303 and done.headers["location"] == "https://api.example.de/konto/1"
    assert await status_of(gateway, "acme") == "inactive"
    assert len(fake.customers) == 1  # one customer per account, reused


async def test_no_secret_or_customer_detail_reaches_a_log(billed: Billed, caplog: pytest.LogCaptureFixture) -> None:
    gateway, fake = billed
    caplog.set_level(logging.DEBUG)
    canary = "canary-4f1d@kunde.example"
    await new_customer_account(gateway, "acme")
    fake.deliver = False
    await subscribe(gateway, fake, "acme")
    completed = json.loads(fake.outbox[2])
    completed["data"]["object"]["customer_details"] = {"email": canary, "name": canary}
    payload = json.dumps(completed).encode()
    assert (await fake.post(payload))[1]["outcome"] == "applied"
    forged = payload.replace(b"acme", b"evil")
    assert (await fake.post(forged, signature=sign(payload, "whsec_wrong")))[0] == 400
    logged = caplog.text
    for secret in (canary, SECRET_KEY, WEBHOOK_SECRET):
        assert secret not in logged
    assert "billing event checkout.session.completed applied" in logged
