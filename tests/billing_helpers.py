"""A gateway with billing.mode stripe against the fake Stripe API, both on real
sockets in the test's loop, and the few steps the billing tests share."""
from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import openai
import pytest

from privatai.billing.service import Billing
from privatai.store.database import Store
from tests.fakes import FAKES
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.gateway import Gateway, LocalGateway
from tests.mailbox import Mailbox
from tests.portal_helpers import MODEL as SITE_MODEL
from tests.scripted import ScriptedBackend

MODEL = "smollm2-135m"
PRO_PRICE = "price_pro0001"
TOKENS_PRICE = "price_tokens0001"
METER_EVENT = "privatai_tokens"
PLANS = [{"name": "pro", "price": "29 €"}, {"name": "tokens", "price": "2 € / 1M tokens"},
         {"name": "enterprise", "price": "Individuell", "contact": True}]


def billing_section(fake: FakeStripe, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "mode": "stripe", "api_base": fake.root,
        "plans": {"pro": {"price": PRO_PRICE},
                  "tokens": {"price": TOKENS_PRICE, "meter_event": METER_EVENT}}}
    section.update(overrides)
    return section


@asynccontextmanager
async def billed_gateway(tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch,
                         **billing: Any) -> AsyncIterator[tuple[LocalGateway, FakeStripe]]:
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    async with FakeStripe() as fake:
        config = {"default_model": MODEL, "backends": [backend.entry(MODEL)], "plans": PLANS,
                  "portal": {"public_url": "https://api.example.de"},
                  "billing": billing_section(fake, **billing)}
        async with LocalGateway(tmp_path, config) as gateway:
            fake.webhook_url = f"{gateway.url}/billing/webhook"
            yield gateway, fake


@contextmanager
def billed_site(workdir: Path, plans: list[dict[str, Any]],
                **accounts: Any) -> Iterator[tuple[Gateway, FakeStripe, Mailbox]]:
    """The gateway as its own process with sign-up and billing.mode stripe (Pro
    for sale; SITE_MODEL served); the fake Stripe API, the fake backend and the
    mailbox on threads."""
    with Mailbox() as mailbox, FAKES["llamacpp"]() as backend, FakeStripe() as stripe:
        gateway = Gateway(workdir, {
            "backends": [{"name": "fake", "kind": "llamacpp", "url": backend.url, "models": [SITE_MODEL]}],
            "plans": plans,
            "accounts": {"plan": "pro", "smtp": mailbox.smtp, **accounts},
            "billing": billing_section(stripe, plans={"pro": {"price": PRO_PRICE}}),
        }, env={"STRIPE_SECRET_KEY": SECRET_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET})
        # Stripe sends the customer back to the public address: this gateway's.
        gateway.config["portal"] = {"public_url": gateway.url}
        gateway.write_config(gateway.config)
        stripe.webhook_url = f"{gateway.url}/billing/webhook"
        with gateway:
            yield gateway, stripe, mailbox


def billing_of(gateway: LocalGateway) -> Billing:
    assert gateway.app is not None
    billing = gateway.app.ctx.state.billing
    assert billing is not None
    return billing


def store_of(gateway: LocalGateway) -> Store:
    assert gateway.app is not None
    return gateway.app.ctx.state.store


def set_status(gateway: LocalGateway, account: str, status: str) -> None:
    """Set in the database, as the operator's pages and sign-up do."""
    db = sqlite3.connect(gateway.config["store"]["path"])
    with db:
        db.execute("UPDATE accounts SET status = ? WHERE name = ?", (status, account))
    db.close()


async def new_customer_account(gateway: LocalGateway, name: str) -> str:
    """An account that has not paid yet (as sign-up with billing leaves it) and a key of it."""
    key = await gateway.key(name)
    await asyncio.to_thread(set_status, gateway, name, "inactive")
    return key


def sdk(gateway: LocalGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)


async def chat(gateway: LocalGateway, key: str) -> str:
    async with sdk(gateway, key) as client:
        answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    return answer.choices[0].message.content or ""


async def refusal(gateway: LocalGateway, key: str) -> str | None:
    """The error code the key's request gets, or None if it is served."""
    try:
        await chat(gateway, key)
    except openai.PermissionDeniedError as exc:
        assert isinstance(exc.body, dict)
        return str(exc.body["code"])
    return None


async def status_of(gateway: LocalGateway, account: str) -> str:
    return (await store_of(gateway).get_account(account)).status


async def subscribe(gateway: LocalGateway, fake: FakeStripe, account: str, plan: str = "pro") -> str:
    """Checkout for ``plan`` and the customer paying on the hosted page; the subscription id."""
    import httpx
    billing = billing_of(gateway)
    url = await billing.checkout_url(await store_of(gateway).get_account(account), plan, "/konto/1")
    async with httpx.AsyncClient() as http:
        page = await http.get(url)
        assert page.status_code == 200 and "Pay and subscribe" in page.text
        paid = await http.post(url, data={"action": "pay"})
    assert paid.status_code == 303, paid.text
    assert paid.headers["location"] == "https://api.example.de/konto/1?done=checkout_done"
    session = fake.sessions[url.rsplit("/", 1)[-1]]
    return str(session["subscription"])
