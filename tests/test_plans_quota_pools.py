"""Monthly quotas under concurrency, and backends reserved for a plan or an
account, through the real gateway and the openai SDK (scripted backends)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from privatai.core.events import TextDelta
from tests.gateway import LocalGateway
from tests.scripted import ScriptedBackend, ScriptedBackends

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
QUOTA = 1000
# The scripted backend's default answer: prompt 10 (per message), one token of completion.
PER_REQUEST = 11


def sdk(gateway: LocalGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)


async def on_plan(gateway: LocalGateway, account: str, plan: str) -> str:
    key = await gateway.key(account)
    done = await gateway.cli("accounts", "set-plan", account, plan)
    assert done.returncode == 0, done.stderr
    return key


async def account_usage(gateway: LocalGateway, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{gateway.base_url}/usage", params={"scope": "account"},
                                  headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return response.json()


@pytest.fixture
async def metered(tmp_path: Path, scripted: ScriptedBackends) -> AsyncIterator[LocalGateway]:
    config = {"backends": [scripted.backend("b").entry("m", max_concurrency=64)],
              "plans": [{"name": "pro", "price": "x"},
                        {"name": "metered", "price": "x", "monthly_tokens": QUOTA}]}
    async with LocalGateway(tmp_path, config) as gateway:
        yield gateway


async def test_200_parallel_requests_stay_within_the_quota_and_usage_is_what_clients_were_told(
        metered: LocalGateway) -> None:
    key = await on_plan(metered, "acme", "metered")
    second_key = await metered.key("acme")  # the quota is the account's, over all its keys
    clients = [sdk(metered, key), sdk(metered, second_key)]

    async def one(i: int) -> int | None:
        try:
            answer = await clients[i % 2].chat.completions.create(model="m", messages=HI, max_tokens=5)
        except openai.PermissionDeniedError as exc:
            assert exc.code == "quota_exceeded", exc.code
            return None
        assert answer.usage is not None
        return answer.usage.total_tokens

    told = [t for t in await asyncio.gather(*(one(i) for i in range(200))) if t is not None]
    assert told and all(t == PER_REQUEST for t in told)
    # Each request reserved its estimate (its prompt, counted here, plus
    # max_tokens=5: at least what it used) and was admitted only while used
    # plus reserved stayed below the quota: no more than one request beyond it.
    assert sum(told) < QUOTA + PER_REQUEST
    # Once the burst settled, the rest of the quota is served one by one, then refused.
    while True:
        try:
            answer = await clients[0].chat.completions.create(model="m", messages=HI, max_tokens=5)
        except openai.PermissionDeniedError as exc:
            assert exc.code == "quota_exceeded" and "1,000 tokens" in exc.message
            break
        assert answer.usage is not None
        told.append(answer.usage.total_tokens)
        assert len(told) < 200, "the quota never ran out"
    assert QUOTA <= sum(told) < QUOTA + PER_REQUEST
    # The quota counts exactly what /usage reports, which is what clients were told.
    usage = await account_usage(metered, key)
    assert usage["tokens_used"] == sum(told) and usage["requests"] == len(told)


async def test_a_quota_starts_from_the_months_stored_usage(tmp_path: Path, scripted: ScriptedBackends) -> None:
    backend = scripted.backend("b")
    config = {"backends": [backend.entry("m")],
              "plans": [{"name": "pro", "price": "x"}, {"name": "metered", "price": "x", "monthly_tokens": 30}]}
    workdir = tmp_path / "gw"
    async with LocalGateway(workdir, config) as gateway:
        key = await on_plan(gateway, "acme", "metered")
        for _ in range(2):
            await sdk(gateway, key).chat.completions.create(model="m", messages=HI)
    # A restarted gateway knows the 22 tokens of this month from the store.
    async with LocalGateway(workdir, config) as gateway:
        client = sdk(gateway, key)
        backend.reply(TextDelta("x"), usage=(10, 5))
        await client.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model="m", messages=HI)
        assert denied.value.code == "quota_exceeded"
        assert (await account_usage(gateway, key))["tokens_used"] == 37


@pytest.fixture
def pools(scripted: ScriptedBackends) -> dict[str, ScriptedBackend]:
    return {name: scripted.backend(name) for name in ("shared", "acme-a", "acme-b", "ent")}


@pytest.fixture
async def pooled(tmp_path: Path, pools: dict[str, ScriptedBackend]) -> AsyncIterator[LocalGateway]:
    config = {
        "backends": [pools["shared"].entry("m"),
                     pools["acme-a"].entry("m", reserved_for={"accounts": ["Acme"]}),
                     pools["acme-b"].entry("m", reserved_for={"accounts": ["Acme"]}),
                     pools["ent"].entry("m", reserved_for={"plans": ["enterprise"], "spill_over": True})],
        "plans": [{"name": "pro", "price": "x"}, {"name": "enterprise", "price": "x"}],
        "routing": {"failure_threshold": 100},
    }
    async with LocalGateway(tmp_path, config) as gateway:
        yield gateway


def served_by(pools: dict[str, ScriptedBackend]) -> dict[str, int]:
    return {name: len(backend.asked) for name, backend in pools.items() if backend.asked}


async def test_reserved_backends_serve_only_their_accounts_and_fail_over_within_the_pool(
        pooled: LocalGateway, pools: dict[str, ScriptedBackend]) -> None:
    other = sdk(pooled, await pooled.key("other"))
    for _ in range(6):
        await other.chat.completions.create(model="m", messages=HI)
    assert served_by(pools) == {"shared": 6}
    acme = sdk(pooled, await pooled.key("acme"))
    for _ in range(6):
        await acme.chat.completions.create(model="m", messages=HI)
    assert served_by(pools)["shared"] == 6
    assert served_by(pools).get("acme-a", 0) + served_by(pools).get("acme-b", 0) == 6
    # One of the pool is down: the other serves.
    pools["acme-a"].down = True
    for _ in range(3):
        await acme.chat.completions.create(model="m", messages=HI)
    assert served_by(pools)["acme-b"] >= 3
    # Both are down: the account's requests never go to the shared backend.
    pools["acme-b"].down = True
    with pytest.raises(openai.InternalServerError) as failed:
        await acme.chat.completions.create(model="m", messages=HI)
    assert failed.value.status_code == 503
    assert served_by(pools)["shared"] == 6 and "ent" not in served_by(pools)


async def test_a_plans_pool_spills_over_to_the_shared_backends_when_allowed(
        pooled: LocalGateway, pools: dict[str, ScriptedBackend]) -> None:
    done = await pooled.cli("accounts", "create", "bigco", "--plan", "enterprise")
    assert done.returncode == 0, done.stderr
    big = sdk(pooled, await pooled.key("bigco"))
    await big.chat.completions.create(model="m", messages=HI)
    assert served_by(pools) == {"ent": 1}
    pools["ent"].fail(503, "down")
    answer = await big.chat.completions.create(model="m", messages=HI)
    assert answer.choices[0].message.content
    assert served_by(pools) == {"ent": 2, "shared": 1}


async def test_metrics_show_which_backends_are_reserved(pooled: LocalGateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{pooled.url}/metrics")).text
    assert 'privatai_backend_reserved{backend="shared",reserved_for=""} 0.0' in text
    assert 'privatai_backend_reserved{backend="acme-a",reserved_for="account Acme"} 1.0' in text
    assert ('privatai_backend_reserved{backend="ent",reserved_for="plan enterprise (spill-over)"} 1.0'
            in text)
