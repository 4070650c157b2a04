"""The dashboard's payment buttons. End to end in Chromium: sign up, choose Pro, pay on the (fake) Stripe
Checkout page, the webhook activates the account, the dashboard says so, a
key works; cancelling in the (fake) Billing Portal refuses the key with 403
subscription_inactive within a second.

The gateway runs as its own process with billing.mode stripe; the fake Stripe
API and the mailbox run on their own threads, the browser is Debian's
Chromium driven by Playwright. Over plain HTTP: what the payment actions
refuse (no session, no CSRF token, a plan not for sale, Stripe down)."""
from __future__ import annotations

import re
import time
from typing import Any, Iterator

import openai
import pytest

from tests.account_helpers import Visitor, new_customer, notice
from tests.billing_helpers import billed_site
from tests.fakes.stripe_api import FakeStripe
from tests.gateway import Gateway
from tests.mailbox import Mailbox
from tests.portal_helpers import MODEL

EMAIL = "kundin@example.de"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeStripe, Mailbox]]:
    with billed_site(tmp_path_factory.mktemp("billing-browser"),
                     [{"name": "pro", "price": "29 €"}, {"name": "enterprise", "price": "Individuell"}]) as world:
        yield world


def test_sign_up_pay_use_cancel(browser: Any, world: tuple[Gateway, FakeStripe, Mailbox]) -> None:
    gateway, stripe, mailbox = world
    page = browser.new_context(locale="de-DE").new_page()
    page.set_default_timeout(20_000)

    page.goto(f"{gateway.url}/registrieren")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=account_name]", "Kundin GmbH")
    page.check("input[name=terms]")
    page.locator("main form button[type=submit]").click()
    page.wait_for_selector("[data-notice=check_mail]")
    page.goto(mailbox.link(EMAIL))
    page.locator("main form button[type=submit]").click()

    page.goto(f"{gateway.url}/anmelden")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/konto/\d+$"))
    assert page.get_attribute("[data-status]", "data-status") == "inactive"

    # Choose Pro: Stripe's (fake) hosted Checkout, pay, back on the dashboard.
    page.click("button[data-billing=checkout][data-plan=pro]")
    page.wait_for_url(f"{stripe.root}/checkout/*")
    page.click("button[value=pay]")
    page.wait_for_url(re.compile(r"/konto/\d+\?done=checkout_done$"))
    assert page.get_attribute("[data-status]", "data-status") == "active"
    assert [event for event, status in stripe.deliveries if status == 200] == [
        "customer.subscription.created", "invoice.paid", "checkout.session.completed"]

    page.fill("form[action$='/keys'] input[name=label]", "laptop")
    page.locator("form[action$='/keys'] button[type=submit]").click()
    key = page.text_content("#new-key") or ""
    assert key.startswith("privat_")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hallo"}])
    assert answer.choices[0].message.content == "Hello from the fake backend."

    # Cancel in Stripe's (fake) Billing Portal: the deletion's webhook refuses the key.
    page.click("button[data-billing=portal]")
    page.wait_for_url(f"{stripe.root}/portal/*")
    delivered = len(stripe.deliveries)
    page.click("button[value=cancel]")
    deadline = time.monotonic() + 20
    while len(stripe.deliveries) == delivered and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stripe.deliveries[-1] == ("customer.subscription.deleted", 200)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hallo"}])
    # From Stripe sending the deletion to the key's refusal.
    assert time.monotonic() - stripe.sent_at[-1] < 1.0
    page.wait_for_url(re.compile(r"/konto/\d+$"))
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "subscription_inactive"
    assert page.get_attribute("[data-status]", "data-status") == "inactive"
    assert page.locator("button[data-billing=checkout][data-plan=pro]").count() == 1


def test_payment_actions_need_the_session_its_token_and_a_sellable_plan(
        world: tuple[Gateway, FakeStripe, Mailbox]) -> None:
    gateway, stripe, mailbox = world
    visitor = Visitor(gateway)
    try:
        account_id = new_customer(visitor, mailbox, "chef@example.de", account="Chef GmbH")
        page = visitor.get(f"/konto/{account_id}")
        policy = page.headers["content-security-policy"]
        assert f"form-action 'self' https://checkout.stripe.com https://billing.stripe.com {stripe.root}" in policy
        assert 'data-plan="pro"' in page.text and 'data-billing="portal"' not in page.text
        assert "zzgl. 19 % Umsatzsteuer" in page.text
        sessions = len(stripe.sessions)
        checkout = f"/konto/{account_id}/billing/checkout"
        # No CSRF token, or no session at all: refused, nothing asked of Stripe.
        assert visitor.post(checkout, {"plan": "pro"}, csrf=False).status_code == 403
        stranger = Visitor(gateway)
        assert stranger.post(checkout, {"plan": "pro"}, csrf=False).status_code == 403
        stranger.close()
        # Never been to Stripe: nothing to manage there.
        manage = visitor.post(f"/konto/{account_id}/billing/portal", {})
        assert (manage.status_code, notice(manage)) == (400, "billing_refused")
        refused = visitor.post(checkout, {"plan": "enterprise"})
        assert (refused.status_code, notice(refused)) == (400, "billing_refused")
        assert len(stripe.sessions) == sessions
        stripe.fail("/v1/checkout/sessions")
        down = visitor.post(checkout, {"plan": "pro"})
        assert (down.status_code, notice(down)) == (503, "billing_unavailable")
        sent = visitor.post(checkout, {"plan": "pro"})
        assert sent.status_code == 303 and sent.headers["location"].startswith(f"{stripe.root}/checkout/cs_")
    finally:
        visitor.close()
