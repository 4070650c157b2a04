"""Plans on the API, through the real gateway and the openai SDK: each 403 a
plan or an account status gives, the per-key rates and their headers,
/models as the key's plan sees it, and the gateway's own 429s.

The app runs in this process on a real port with scripted backends
(tests/scripted.py); plans and statuses are set with the real CLI before a
key's first request (the server caches a key's account for 2 s).
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from privatai.core.events import TextDelta
from tests.fakes.server import Sleep
from tests.gateway import LocalGateway, eventually
from tests.scripted import ScriptedBackend, ScriptedBackends

DASHBOARD = "https://api.example.de/dashboard"
PLANS: list[dict[str, Any]] = [
    {"name": "pro", "price": "29 €"},
    {"name": "basic", "price": "9 €", "models": ["m-small"], "requests_per_minute": 3},
    {"name": "tokens", "price": "9 €", "tokens_per_minute": 100},
    {"name": "enterprise", "price": "Individuell", "seats": 10},
]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def shared(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("shared")


@pytest.fixture
def acme_gpu(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("acme-gpu")


@pytest.fixture
async def gateway(tmp_path: Path, shared: ScriptedBackend, acme_gpu: ScriptedBackend
                  ) -> AsyncIterator[LocalGateway]:
    config = {
        "default_model": "m-small",
        "backends": [shared.entry("m-small", "m-big"),
                     acme_gpu.entry("acme-llm", reserved_for={"accounts": ["acme"]})],
        "plans": PLANS,
        "portal": {"public_url": "https://api.example.de"},
    }
    async with LocalGateway(tmp_path, config) as gw:
        yield gw


def sdk(gateway: LocalGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)


async def account_key(gateway: LocalGateway, account: str, *, plan: str | None = None,
                      status: str | None = None) -> str:
    key = await gateway.key(account)
    for args in ((("set-plan", account, plan),) if plan else ()) + ((("set-status", account, status),)
                                                                    if status else ()):
        done = await gateway.cli("accounts", *args)
        assert done.returncode == 0, done.stderr
    return key


async def chat(client: openai.AsyncOpenAI, model: str = "m-small", **extra: Any) -> Any:
    return await client.chat.completions.create(model=model, messages=HI, **extra)


@pytest.mark.parametrize("status, code", [("inactive", "subscription_inactive"),
                                          ("pending", "account_pending"),
                                          ("suspended", "account_suspended")])
async def test_an_account_status_that_is_not_served_is_a_403_with_its_code(
        gateway: LocalGateway, shared: ScriptedBackend, status: str, code: str) -> None:
    client = sdk(gateway, await account_key(gateway, "someone", status=status))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(client)
    assert denied.value.status_code == 403 and denied.value.code == code
    if status != "suspended":  # the operator's decision: support, not the dashboard
        assert DASHBOARD in denied.value.message
    # Refused everywhere under the API, and nothing reached a backend.
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.list()
    assert shared.asked == []


async def test_past_due_is_served_during_the_payment_grace(gateway: LocalGateway) -> None:
    client = sdk(gateway, await account_key(gateway, "late", status="past_due"))
    answer = await chat(client)
    assert answer.choices[0].message.content == "Hello from the fake backend."


async def test_a_model_outside_the_plan_is_a_403_and_models_lists_only_the_plans(
        gateway: LocalGateway, shared: ScriptedBackend) -> None:
    client = sdk(gateway, await account_key(gateway, "small", plan="basic"))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(client, "m-big")
    assert denied.value.code == "plan_model_not_allowed" and denied.value.param == "model"
    assert "'basic'" in denied.value.message and DASHBOARD in denied.value.message
    assert shared.asked == []
    assert [m.id for m in (await client.models.list()).data] == ["m-small"]
    assert (await client.models.retrieve("m-small")).id == "m-small"
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.retrieve("m-big")
    # Another account's dedicated model does not exist for this key.
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("acme-llm")
    with pytest.raises(openai.NotFoundError):
        await chat(client, "acme-llm")


async def test_a_dedicated_models_account_sees_and_uses_it(gateway: LocalGateway, acme_gpu: ScriptedBackend,
                                                          shared: ScriptedBackend) -> None:
    acme, other = sdk(gateway, await gateway.key("acme")), sdk(gateway, await gateway.key("other"))
    assert [m.id for m in (await acme.models.list()).data] == ["m-small", "m-big", "acme-llm"]
    assert [m.id for m in (await other.models.list()).data] == ["m-small", "m-big"]
    await chat(acme, "acme-llm")
    assert [a.model for a in acme_gpu.asked] == ["acme-llm"] and shared.asked == []


async def test_a_plan_the_configuration_does_not_offer_is_refused(gateway: LocalGateway) -> None:
    key = await gateway.key("legacy")
    with sqlite3.connect(gateway.config["store"]["path"]) as db:  # as a plan removed from the file would leave it
        db.execute("UPDATE accounts SET plan = 'gold' WHERE name = 'legacy'")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(sdk(gateway, key))
    assert denied.value.code == "plan_unknown" and "'gold'" in denied.value.message


async def test_requests_per_minute_answer_with_openais_headers_then_429(gateway: LocalGateway) -> None:
    client = sdk(gateway, await account_key(gateway, "small", plan="basic"))
    for remaining in ("2", "1", "0"):
        raw = await client.chat.completions.with_raw_response.create(model="m-small", messages=HI)
        assert raw.status_code == 200 and raw.parse().choices[0].message.content
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no token limit in this plan
    with pytest.raises(openai.RateLimitError) as limited:
        await chat(client)
    error = limited.value
    assert error.code == "requests_per_minute_exceeded"
    # One request refills in 60 s / 3 = 20 s, less the moments the three took.
    assert 1 <= int(error.response.headers["retry-after"]) <= 20
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-limit-requests"] == "3"
    # A key of another account of the same plan has its own allowance.
    await chat(sdk(gateway, await account_key(gateway, "small2", plan="basic")))


async def test_tokens_per_minute_count_what_requests_used(gateway: LocalGateway, shared: ScriptedBackend) -> None:
    client = sdk(gateway, await account_key(gateway, "tok", plan="tokens"))
    shared.reply(TextDelta("x"), usage=(10, 85))
    raw = await client.chat.completions.with_raw_response.create(model="m-small", messages=HI, max_tokens=50)
    assert raw.headers["x-ratelimit-limit-tokens"] == "100"
    # At admission the estimate (the prompt, counted here, and max_tokens) was taken.
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 50
    assert "x-ratelimit-limit-requests" not in raw.headers
    # The request used 95 tokens (the backend's count): too few remain for the next one's estimate.
    with pytest.raises(openai.RateLimitError) as limited:
        await chat(client, max_tokens=50)
    assert limited.value.code == "tokens_per_minute_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 20
    assert int(limited.value.response.headers["x-ratelimit-remaining-tokens"]) <= 10


async def test_the_gateways_own_capacity_429_carries_the_keys_rate_headers(
        tmp_path: Path, shared: ScriptedBackend) -> None:
    config = {"backends": [shared.entry("m-small", max_concurrency=1)], "plans": PLANS,
              "routing": {"queue_timeout": 0.3}}
    async with LocalGateway(tmp_path, config) as gateway:
        client = sdk(gateway, await account_key(gateway, "small", plan="basic"))
        shared.reply(Sleep(3), TextDelta("slow"))
        slow = asyncio.create_task(chat(client))

        async def busy() -> bool:
            return shared.in_flight == 1

        await eventually(busy, 10, "the first request on the backend")
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{gateway.base_url}/chat/completions",
                                       headers={"Authorization": f"Bearer {client.api_key}"},
                                       json={"model": "m-small", "messages": HI})
        assert response.status_code == 429 and response.json()["error"]["code"] == "capacity_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == "1"
        assert (await slow).choices[0].message.content == "slow"


async def test_every_endpoint_that_reaches_a_backend_keeps_to_the_plan(
        gateway: LocalGateway, shared: ScriptedBackend, acme_gpu: ScriptedBackend) -> None:
    client = sdk(gateway, await account_key(gateway, "small", plan="basic"))
    outside = (lambda: client.embeddings.create(model="m-big", input="Hi"),
               lambda: client.completions.create(model="m-big", prompt="Hi"),
               lambda: client.responses.create(model="m-big", input="Hi"))
    for call in outside:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await call()
        assert denied.value.code == "plan_model_not_allowed"
    assert shared.asked == []
    # The plan's 3 requests a minute are one allowance for every endpoint.
    await client.embeddings.create(model="m-small", input="Hi")
    await client.completions.create(model="m-small", prompt="Hi")
    await client.responses.create(model="m-small", input="Hi")
    with pytest.raises(openai.RateLimitError) as limited:
        await chat(client)
    assert limited.value.code == "requests_per_minute_exceeded"
    # A dedicated backend serves its account's embeddings and nobody else's.
    acme, other = sdk(gateway, await gateway.key("acme")), sdk(gateway, await gateway.key("other"))
    with pytest.raises(openai.NotFoundError):
        await other.embeddings.create(model="acme-llm", input="Hi")
    assert acme_gpu.asked == []
    await acme.embeddings.create(model="acme-llm", input="Hi")
    await acme.completions.create(model="acme-llm", prompt="Hi")
    assert [a.model for a in acme_gpu.asked] == ["acme-llm", "acme-llm"]
