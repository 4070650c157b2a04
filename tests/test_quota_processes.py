"""A monthly quota is one count however many processes serve the account:
real gateway processes (2 workers on one machine with SQLite; 2 instances
sharing a throwaway PostgreSQL and Redis), real sockets, the openai SDK.

A burst far beyond the quota, spread over the processes, is served only up
to the quota plus what the requests already admitted add; the rest get 403
``quota_exceeded``; and what the clients were told equals ``/usage``.
"""
from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.fakes import FakeLlamaCpp
from tests.gateway import Gateway
from tests.services import PostgreSQL, RedisServer
from tests.test_workers import access_lines, fake, start  # noqa: F401 - fixture

QUOTA = 400
BURST = 120
# Each request reserves its prompt plus max_tokens, more than the fake's answer uses.
MAX_TOKENS = 20
PLANS = [{"name": "pro", "price": "29 €"}, {"name": "metered", "price": "9 €", "monthly_tokens": QUOTA}]


@dataclass
class Outcome:
    told: list[int] = field(default_factory=list)
    refused: list[openai.PermissionDeniedError] = field(default_factory=list)


def client(base_url: str, key: str) -> openai.AsyncOpenAI:
    # A connection per request, so that the workers behind one port share the burst.
    http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=http)


async def ask(clients: list[openai.AsyncOpenAI], i: int, outcome: Outcome) -> None:
    try:
        answer = await clients[i % len(clients)].chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS)
    except openai.PermissionDeniedError as exc:
        outcome.refused.append(exc)
        return
    assert answer.usage is not None
    outcome.told.append(answer.usage.total_tokens)


async def use_up(base_urls: list[str], key: str) -> Outcome:
    """A burst of BURST requests over every base URL, then one at a time until refused."""
    clients = [client(url, key) for url in base_urls]
    outcome = Outcome()
    try:
        await asyncio.gather(*(ask(clients, i, outcome) for i in range(BURST)))
        assert outcome.refused, "the burst never reached the quota"
        for i in range(BURST):
            refused = len(outcome.refused)
            await ask(clients, i, outcome)
            if len(outcome.refused) > refused:
                break
    finally:
        for sdk in clients:
            await sdk.close()
    return outcome


def check(outcome: Outcome) -> int:
    """The bound and the refusal; returns the tokens the clients were told."""
    per_request = outcome.told[0]
    assert set(outcome.told) == {per_request}
    # Admitted while used + reserved < quota, each reserving at least what it used:
    # the account went past its quota by less than one request, never by a worker's or instance's share.
    assert QUOTA <= sum(outcome.told) < QUOTA + per_request, (sum(outcome.told), per_request)
    for refusal in outcome.refused:
        assert refusal.status_code == 403
        assert refusal.code == "quota_exceeded"
        body = refusal.response.json()["error"]
        assert body["type"] == "permission_error", body
        assert f"monthly quota of {QUOTA:,} tokens" in body["message"]
    return sum(outcome.told)


async def account_usage(base_url: str, key: str, requests: int) -> dict[str, Any]:
    """``GET /usage`` for the account, once every process has flushed the burst's usage."""
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(200):
            response = await http.get(f"{base_url}/usage", params={"scope": "account"},
                                      headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200
            usage = response.json()
            if usage["requests"] >= requests:
                return usage
            await asyncio.sleep(0.1)
    raise AssertionError(f"/usage never showed {requests} requests: {usage}")


def test_a_quota_is_one_count_across_workers(tmp_path: Path, fake: FakeLlamaCpp) -> None:  # noqa: F811
    gateway = start(tmp_path, fake, workers=2, plans=PLANS)
    try:
        key = gateway.create_key("metered-co")
        gateway.cli("accounts", "set-plan", "metered-co", "metered")
        outcome = asyncio.run(use_up([gateway.base_url], key))
        told = check(outcome)
        usage = asyncio.run(account_usage(gateway.base_url, key, len(outcome.told)))
        assert (usage["tokens_used"], usage["requests"]) == (told, len(outcome.told))
        # Both workers took part (which one accepts a connection is the kernel's choice).
        workers = {line["worker"] for line in access_lines(gateway) if line["route"] == "/v1/chat/completions"}
        assert len(workers) == 2, "the burst did not reach both workers"
    finally:
        gateway.stop()


@pytest.fixture
def instances(tmp_path: Path, fake: FakeLlamaCpp, postgresql: PostgreSQL,  # noqa: F811
              redis_server: RedisServer) -> Iterator[list[Gateway]]:
    """Two gateway processes on their own ports, sharing one PostgreSQL database and Redis."""
    config: dict[str, Any] = {
        "backends": [{"name": "fake", "kind": "llamacpp", "url": fake.url, "max_concurrency": 64,
                      "models": ["m"]}],
        "store": {"url": postgresql.url(postgresql.new_database()), "password_env": "PRIVATAI_TEST_PG_PASSWORD",
                  "flush_interval": 0.2},
        "state": {"redis_url": redis_server.url, "password_env": "PRIVATAI_TEST_REDIS_PASSWORD",
                  "key_prefix": "q" + secrets.token_hex(4)},
        "portal": {"enabled": False},
        "logging": {"format": "json"},
        "plans": PLANS,
    }
    env = {"PRIVATAI_IDENTITY_KEY": secrets.token_hex(32)}
    gateways = [Gateway(tmp_path / f"g{i}", config, env=env) for i in range(2)]
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


def test_a_quota_is_one_count_across_instances_sharing_redis(instances: list[Gateway],
                                                             redis_server: RedisServer) -> None:
    one, two = instances
    key = one.create_key("metered-co")
    one.cli("accounts", "set-plan", "metered-co", "metered")
    outcome = asyncio.run(use_up([one.base_url, two.base_url], key))
    told = check(outcome)
    for gateway in instances:
        usage = asyncio.run(account_usage(gateway.base_url, key, len(outcome.told)))
        assert (usage["tokens_used"], usage["requests"]) == (told, len(outcome.told))
    # The clients alternated between the instances; what each served and
    # refused adds up to what the clients saw.
    statuses = Counter(line["status"] for gateway in instances for line in access_lines(gateway)
                       if line["route"] == "/v1/chat/completions")
    assert statuses == {200: len(outcome.told), 403: len(outcome.refused)}, statuses
