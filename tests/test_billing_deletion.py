"""Deleting a paying account cancels its Stripe subscription first: on the
dashboard, by the person's own erasure, on the operator page and with
``privatai accounts delete``. When Stripe fails, nothing is deleted: the
account, its key and the subscription stay, and the page or the CLI says
Stripe is the reason.

Over plain HTTP against the gateway's own process with billing.mode stripe;
the fake Stripe API (real stripe-python client on the gateway's side) and the
mailbox run on their own threads; keys are tried with the openai SDK.
"""
from __future__ import annotations

import time
from typing import Iterator

import openai
import pytest

from tests.account_helpers import Visitor, alert, create_key, log_in, new_customer, rows
from tests.billing_helpers import billed_site
from tests.fakes.stripe_api import SECRET_KEY, FakeStripe
from tests.gateway import Gateway, run_cli
from tests.mailbox import Mailbox
from tests.portal_helpers import MODEL

World = tuple[Gateway, FakeStripe, Mailbox]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with billed_site(tmp_path_factory.mktemp("billing-deletion"), [{"name": "pro", "price": "29 €"}],
                     attempts_per_client=1000) as world:
        yield world


@pytest.fixture
def visitor(world: World) -> Iterator[Visitor]:
    person = Visitor(world[0])
    yield person
    person.close()


def wait_for(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def paying_customer(world: World, visitor: Visitor, email: str, account: str) -> tuple[int, str, str]:
    """Signed up, subscribed to Pro on the (fake) Checkout page, with a key: (account id, key, subscription)."""
    gateway, stripe, mailbox = world
    account_id = new_customer(visitor, mailbox, email, account)
    visitor.get(f"/konto/{account_id}")
    sent = visitor.post(f"/konto/{account_id}/billing/checkout", {"plan": "pro"})
    assert sent.status_code == 303, alert(sent)
    checkout = sent.headers["location"]
    session = stripe.sessions[checkout.rsplit("/", 1)[-1]]
    paid = visitor.http.post(checkout, data={"action": "pay"})
    assert paid.status_code == 303
    wait_for(lambda: 'data-status="active"' in visitor.get(f"/konto/{account_id}").text, "not activated")
    return account_id, create_key(visitor, account_id), str(session["subscription"])


def answers(gateway: Gateway, key: str) -> bool:
    """Whether the key is served (False once it gets 401: the account is gone)."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hallo"}])
    except openai.AuthenticationError:
        return False
    return True


def accounts_named(gateway: Gateway, name: str) -> int:
    return int(rows(gateway, "SELECT count(*) FROM accounts WHERE name = ?", name)[0][0])


def assert_cancelled_and_gone(world: World, name: str, key: str, sub: str) -> None:
    gateway, stripe, _ = world
    assert stripe.subscriptions[sub].status == "canceled"
    assert accounts_named(gateway, name) == 0
    assert rows(gateway, "SELECT count(*) FROM billing_customers WHERE customer_id = ?",
                stripe.subscriptions[sub].customer) == [(0,)]
    wait_for(lambda: not answers(gateway, key), "the deleted account's key still works")
    # Stripe's deletion event arrives for a customer of no account: acknowledged, so not resent for days.
    wait_for(lambda: ("customer.subscription.deleted", 200) in stripe.deliveries,
             f"the deletion event not acknowledged: {stripe.deliveries}")


def test_dashboard_deletion_cancels_the_subscription_and_is_refused_while_stripe_fails(
        world: World, visitor: Visitor) -> None:
    gateway, stripe, _ = world
    account_id, key, sub = paying_customer(world, visitor, "owner@example.de", "Zahlend GmbH")

    stripe.fail(f"/v1/subscriptions/{sub}")
    visitor.get(f"/konto/{account_id}")
    refused = visitor.post(f"/konto/{account_id}/delete", {"confirm_name": "Zahlend GmbH"})
    assert refused.status_code == 503
    assert "Stripe" in alert(refused) and "Nichts wurde gelöscht" in alert(refused)
    assert stripe.subscriptions[sub].status == "active"
    assert accounts_named(gateway, "Zahlend GmbH") == 1
    assert answers(gateway, key)

    deleted = visitor.post(f"/konto/{account_id}/delete", {"confirm_name": "Zahlend GmbH"})
    assert deleted.status_code == 303 and deleted.headers["location"].endswith("done=account_deleted")
    assert_cancelled_and_gone(world, "Zahlend GmbH", key, sub)


def test_erasing_oneself_cancels_the_subscription_of_ones_own_account(world: World, visitor: Visitor) -> None:
    gateway, stripe, _ = world
    _, key, sub = paying_customer(world, visitor, "solo@example.de", "Solo KG")

    stripe.fail("/v1/subscriptions")  # Stripe down: not even the subscriptions can be listed
    visitor.get("/konto/daten")
    refused = visitor.post("/konto/daten/delete", {"password": "correct horse battery staple"})
    assert refused.status_code == 503 and "Stripe" in alert(refused)
    assert rows(gateway, "SELECT count(*) FROM users WHERE email = 'solo@example.de'") == [(1,)]
    assert stripe.subscriptions[sub].status == "active" and answers(gateway, key)

    erased = visitor.post("/konto/daten/delete", {"password": "correct horse battery staple"})
    assert erased.status_code == 303
    assert rows(gateway, "SELECT count(*) FROM users WHERE email = 'solo@example.de'") == [(0,)]
    assert_cancelled_and_gone(world, "Solo KG", key, sub)


def test_the_operator_page_cancels_before_deleting(world: World, visitor: Visitor) -> None:
    gateway, stripe, mailbox = world
    account_id, key, sub = paying_customer(world, visitor, "kunde@example.de", "Kunde AG")
    operator = Visitor(gateway)
    new_customer(operator, mailbox, "operator@example.de", "Betrieb")
    granted = run_cli("admins", "grant", "operator@example.de", "--config", str(gateway.config_path))
    assert granted.returncode == 0, granted.stderr
    log_in(operator, "operator@example.de")
    operator.get("/admin")

    stripe.fail(f"/v1/subscriptions/{sub}")
    refused = operator.post(f"/admin/accounts/{account_id}/delete", {})
    assert refused.status_code == 503 and "Stripe" in alert(refused)
    assert accounts_named(gateway, "Kunde AG") == 1 and answers(gateway, key)

    deleted = operator.post(f"/admin/accounts/{account_id}/delete", {})
    assert deleted.status_code == 303
    assert_cancelled_and_gone(world, "Kunde AG", key, sub)
    operator.close()


def test_cli_deletion_cancels_the_subscription_and_exits_1_while_stripe_fails(
        world: World, visitor: Visitor, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, stripe, _ = world
    _, key, sub = paying_customer(world, visitor, "cli@example.de", "CLI GmbH")
    config = str(gateway.config_path)

    # The CLI reads the Stripe key from the environment the server's was read from.
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    unset = run_cli("accounts", "delete", "CLI GmbH", "--yes", "--config", config)
    assert unset.returncode == 1 and "STRIPE_SECRET_KEY" in unset.stderr
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    stripe.fail(f"/v1/subscriptions/{sub}")
    down = run_cli("accounts", "delete", "CLI GmbH", "--yes", "--config", config)
    assert down.returncode == 1 and "Stripe" in down.stderr and "nothing was deleted" in down.stderr
    assert accounts_named(gateway, "CLI GmbH") == 1 and answers(gateway, key)
    assert stripe.subscriptions[sub].status == "active"

    deleted = run_cli("accounts", "delete", "CLI GmbH", "--yes", "--config", config)
    assert deleted.returncode == 0, deleted.stderr
    assert "Cancelled 1 Stripe subscription" in deleted.stdout
    assert_cancelled_and_gone(world, "CLI GmbH", key, sub)
