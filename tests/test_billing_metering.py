"""Per-token plans: each closed day's tokens reported to Stripe as one meter
event per account, exactly once, retried after a failure; the numbers are
the ones /usage reports and the clients were told."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from privatai.core.events import TextDelta
from privatai.store.records import utc_now
from tests.billing_helpers import (METER_EVENT, PRO_PRICE, TOKENS_PRICE, billed_gateway, billing_of,
                                   new_customer_account, sdk, store_of, subscribe)
from tests.gateway import LocalGateway
from tests.scripted import ScriptedBackend, ScriptedBackends

METER_PATH = "/v1/billing/meter_events"


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("e")


async def told(gateway: LocalGateway, key: str, backend: ScriptedBackend, usage: tuple[int, int]) -> int:
    backend.reply(TextDelta("counted"), usage=usage)
    async with sdk(gateway, key) as client:
        answer = await client.chat.completions.create(model="smollm2-135m",
                                                      messages=[{"role": "user", "content": "Hi"}])
    assert answer.usage is not None
    return answer.usage.total_tokens


async def test_closed_days_are_reported_exactly_once_with_a_retry(
        tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    async with billed_gateway(tmp_path, backend, monkeypatch) as (gateway, fake):
        metered = await new_customer_account(gateway, "tokenco")
        flat = await new_customer_account(gateway, "flatco")
        await subscribe(gateway, fake, "tokenco", plan="tokens")
        await subscribe(gateway, fake, "flatco", plan="pro")
        # A metered price takes no quantity at checkout: the meter is the quantity.
        items = [s["_params"]["line_items"] for s in fake.sessions.values() if s["object"] == "checkout.session"]
        assert items == [[{"price": TOKENS_PRICE}], [{"price": PRO_PRICE, "quantity": "1"}]]
        tokens = await told(gateway, metered, backend, (7, 3)) + await told(gateway, metered, backend, (5, 2))
        await told(gateway, flat, backend, (50, 50))
        async with httpx.AsyncClient() as http:
            usage = (await http.get(f"{gateway.base_url}/usage",
                                    headers={"Authorization": f"Bearer {metered}"})).json()
        assert usage["tokens_used"] == tokens == 17

        billing = billing_of(gateway)
        store = store_of(gateway)
        account = await store.get_account("tokenco")
        today = utc_now().date()
        # Today is not closed yet: nothing goes out.
        await billing.sweep()
        assert fake.meter_events == {}

        tomorrow = datetime.combine(today + timedelta(days=1), time(0, 10))
        fake.fail(METER_PATH)
        await billing.sweep(tomorrow)
        assert fake.meter_events == {} and await store.meter_reports(account.id) == []
        for _ in range(3):
            await billing.sweep(tomorrow)
        assert await store.meter_reports(account.id) == [(today.isoformat(), 17)]
        customer = await store.billing_customer(account.id)
        assert customer is not None
        end_of_day = datetime.combine(today, time(23, 59, 59), tzinfo=timezone.utc)
        assert list(fake.meter_events.values()) == [{
            "object": "billing.meter_event", "event_name": METER_EVENT,
            "identifier": f"privatai-{account.id}-{today.isoformat()}",
            "payload": {"stripe_customer_id": customer.customer_id, "value": "17"},
            "timestamp": int(end_of_day.timestamp()), "created": fake.meter_events[
                f"privatai-{account.id}-{today.isoformat()}"]["created"], "livemode": False}]
        # One failed call and one that succeeded; none afterwards.
        assert len([r for r in fake.requests if r.path == METER_PATH]) == 2


async def test_deleting_a_billed_account_removes_its_billing_rows(
        tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    async with billed_gateway(tmp_path, backend, monkeypatch) as (gateway, fake):
        key = await new_customer_account(gateway, "goneco")
        await subscribe(gateway, fake, "goneco", plan="tokens")
        await told(gateway, key, backend, (3, 4))
        assert gateway.app is not None
        await gateway.app.ctx.state.recorder.flush()
        store = store_of(gateway)
        account = await store.get_account("goneco")
        await billing_of(gateway).sweep(datetime.combine(utc_now().date() + timedelta(days=1), time(0, 10)))
        assert await store.meter_reports(account.id) != []
        await store.delete_account("goneco")
        assert await store.billing_customer(account.id) is None
        assert await store.meter_reports(account.id) == []
