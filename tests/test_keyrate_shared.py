"""Per-key rates shared by several processes: in a real, throwaway Redis
(tests/services.py; each "instance" is its own RedisLink) and in the SQLite
file the workers of one machine share."""
from __future__ import annotations

import asyncio
import time
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import pytest

from privatai.config import parse_config
from privatai.errors import LimitsUnavailable, RateLimited
from privatai.limits import keyrate_sqlite, sqlite_state
from privatai.limits.keyrate import KeyLimits, KeyRates, RateView
from privatai.limits.keyrate_redis import FallbackKeyRates, RedisKeyRates
from privatai.limits.keyrate_sqlite import SqliteKeyRates
from privatai.limits.redis_link import RedisLink
from privatai.plans.gate import Admission, PlanGate
from privatai.store.records import Principal
from tests.services import REDIS_PASSWORD_ENV, RedisServer
from tests.test_redis_state import config_for, links, own_redis  # noqa: F401 - fixtures


@pytest.fixture
def sqlite_rates(tmp_path: Path) -> Iterator[Callable[[], SqliteKeyRates]]:
    """SqliteKeyRates on one file, each with its own connection and thread (as workers have)."""
    path = tmp_path / "keyrates.sqlite"
    sqlite_state.create(path, keyrate_sqlite.SCHEMA)
    made: list[SqliteKeyRates] = []

    def make() -> SqliteKeyRates:
        made.append(SqliteKeyRates(path))
        return made[-1]

    yield make
    for rates in made:
        rates.close()


async def burst(stores: list[KeyRates], key_id: int, limits: KeyLimits, count: int,
                tokens: int = 0) -> tuple[list[RateView], list[RateLimited]]:
    """``count`` concurrent acquires spread over ``stores``: what was admitted, what refused."""
    outcomes = await asyncio.gather(*(stores[i % len(stores)].acquire(key_id, limits, tokens)
                                      for i in range(count)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    admitted = [o for o in outcomes if isinstance(o, RateView)]
    assert len(admitted) + len(refused) == count, [o for o in outcomes if isinstance(o, BaseException)]
    return admitted, refused


async def test_a_burst_over_three_instances_admits_exactly_the_rpm(links) -> None:
    stores: list[KeyRates] = [RedisKeyRates(await links()) for _ in range(3)]
    limits = KeyLimits(requests_per_minute=10)
    admitted, refused = await burst(stores, 7, limits, 100)
    assert len(admitted) == 10
    assert {error.code for error in refused} == {"requests_per_minute_exceeded"}
    # One request refills in 6 s; the retry is due then, not earlier.
    assert all(5.9 < error.retry_after <= 6 for error in refused)
    assert refused[0].headers["x-ratelimit-remaining-requests"] == "0"
    assert sorted(view.requests.remaining for view in admitted if view.requests) == list(range(10))
    # Another key has its own allowance.
    await stores[0].acquire(8, limits, 0)


async def test_tokens_settle_and_cancel_give_back_on_any_instance(links) -> None:
    one, two = RedisKeyRates(await links()), RedisKeyRates(await links())
    limits = KeyLimits(requests_per_minute=2, tokens_per_minute=1000)
    await one.acquire(7, limits, 800)
    with pytest.raises(RateLimited) as refused:
        await two.acquire(7, limits, 300)
    assert refused.value.code == "tokens_per_minute_exceeded"
    await one.settle(7, limits, reserved=800, used=100)  # 700 back
    seen = await two.acquire(7, limits, 300)
    assert seen.tokens is not None and 599 <= seen.tokens.remaining <= 600
    assert seen.requests is not None and seen.requests.remaining == 0
    with pytest.raises(RateLimited) as refused:
        await one.acquire(7, limits, 0)
    assert refused.value.code == "requests_per_minute_exceeded"
    await two.cancel(7, limits, 300)
    await one.acquire(7, limits, 0)


async def test_only_the_key_id_and_numbers_are_stored_with_a_ttl(links) -> None:
    link = await links()
    rates = RedisKeyRates(link)
    await rates.acquire(42, KeyLimits(requests_per_minute=60, tokens_per_minute=6000), 3000)
    keys = [key.decode() for key in await link.client.keys(f"{link.prefix}:*")]
    assert keys == [f"{link.prefix}:rate:{{42}}"]
    fields = await link.client.hgetall(keys[0])
    assert sorted(fields) == [b"ra", b"rl", b"ta", b"tl"]
    assert all(float(value) >= 0 for value in fields.values())
    # Full again after 30 s (half the tokens refill): nothing is kept longer.
    assert 30 <= await link.client.ttl(keys[0]) <= 32


async def test_while_redis_is_down_each_instance_keeps_its_own_allowance(
        own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_PASSWORD_ENV, own_redis.password)
    link = RedisLink(config_for(own_redis, "down"), ping_interval=0.1)
    await link.start()
    try:
        shared = RedisKeyRates(link)
        rates = FallbackKeyRates(RedisKeyRates(link))
        limits = KeyLimits(requests_per_minute=2, tokens_per_minute=100)
        await rates.acquire(7, limits, 50)
        await rates.acquire(7, limits, 50)
        with pytest.raises(RateLimited):
            await rates.acquire(7, limits, 0)

        own_redis.stop()
        with pytest.raises(LimitsUnavailable):
            await shared.acquire(7, limits, 0)
        # The API keeps serving, on this instance's fresh buckets.
        await rates.acquire(7, limits, 100)
        with pytest.raises(RateLimited) as refused:
            await rates.acquire(7, limits, 1)
        assert refused.value.code == "tokens_per_minute_exceeded"
        # Settled where it was admitted: the local bucket gets its tokens back.
        await rates.settle(7, limits, reserved=100, used=0)
        await rates.acquire(7, limits, 1)

        own_redis.start()
        deadline = time.monotonic() + 5
        while not link.available():
            assert time.monotonic() < deadline, "the link did not notice Redis was back"
            await asyncio.sleep(0.05)
        # Shared again (a restarted Redis without persistence starts full).
        await shared.acquire(7, limits, 0)
        assert await link.client.exists(f"{link.prefix}:rate:{{7}}")
    finally:
        await link.close()


async def test_workers_sharing_the_file_admit_exactly_one_allowance(sqlite_rates) -> None:
    stores: list[KeyRates] = [sqlite_rates() for _ in range(3)]
    limits = KeyLimits(requests_per_minute=10)
    admitted, refused = await burst(stores, 7, limits, 100)
    assert len(admitted) == 10
    assert {error.code for error in refused} == {"requests_per_minute_exceeded"}
    # A request given back on one worker is one more on another, and only one.
    await stores[0].cancel(7, limits, 0)
    admitted, _ = await burst(stores, 7, limits, 5)
    assert len(admitted) == 1


async def test_workers_sharing_the_file_share_the_token_rate(sqlite_rates) -> None:
    stores: list[KeyRates] = [sqlite_rates() for _ in range(3)]
    # 100 tokens a minute refill less than 2 a second: no 10-token request fits again soon.
    limits = KeyLimits(requests_per_minute=1000, tokens_per_minute=100)
    admitted, refused = await burst(stores, 7, limits, 50, tokens=10)
    assert len(admitted) == 10
    assert {error.code for error in refused} == {"tokens_per_minute_exceeded"}


async def test_sqlite_tokens_settle_across_workers(sqlite_rates) -> None:
    one, two = sqlite_rates(), sqlite_rates()
    limits = KeyLimits(tokens_per_minute=1000)
    await one.acquire(7, limits, 800)
    with pytest.raises(RateLimited):
        await two.acquire(7, limits, 300)
    await one.settle(7, limits, reserved=800, used=100)
    await two.acquire(7, limits, 300)


class SlowToAnswer:
    """A shared store whose give-backs wait for ``go``: the time a Redis round
    trip takes, stretched so that the test can cancel the request inside it."""

    def __init__(self, rates: RedisKeyRates) -> None:
        self.rates = rates
        self.go = asyncio.Event()

    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        return await self.rates.acquire(key_id, limits, tokens)

    async def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        await self.go.wait()
        await self.rates.settle(key_id, limits, reserved, used)

    async def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        await self.go.wait()
        await self.rates.cancel(key_id, limits, reserved)


async def test_a_request_cancelled_while_it_settles_still_gives_its_tokens_back(links) -> None:
    """settle runs in a ``finally`` of a handler that is often being cancelled
    (the client left): the give-back must still reach the shared store."""
    config = parse_config({"backends": [{"name": "x", "kind": "ollama", "url": "http://127.0.0.1:1",
                                         "models": ["m"]}],
                           "plans": [{"name": "pro", "price": "1"},
                                     {"name": "tokens", "price": "1", "tokens_per_minute": 100}]})

    async def no_month(account_id: int, start: date) -> int:
        raise AssertionError("no quota in these plans")

    store = SlowToAnswer(RedisKeyRates(await links()))
    gate = PlanGate(config, no_month, store)
    limits = KeyLimits(tokens_per_minute=100)
    principal = Principal(key_id=7, key_prefix="pk-test", account_id=1, account_name="a", plan="tokens")
    other_instance = RedisKeyRates(await links())
    await other_instance.acquire(7, limits, 100)
    settling = asyncio.ensure_future(gate.settle(Admission(principal, limits, reserved=100), None))
    await asyncio.sleep(0.05)  # waiting for the store
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    store.go.set()
    deadline = time.monotonic() + 5
    while True:
        try:
            await other_instance.acquire(7, limits, 100)
            break
        except RateLimited:
            assert time.monotonic() < deadline, "the tokens never came back"
            await asyncio.sleep(0.05)
