"""The web-chat counters in a real, throwaway Redis (tests/services.py), as
several instances see them: each "instance" is its own RedisLink."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from privatai.errors import LimitsUnavailable
from privatai.limits.redis_link import AUTH_CHANNEL, RedisLink
from privatai.limits.redis_state import FallbackLimitState, RedisLimitState
from privatai.limits.shared import LimitRules
from privatai.limits.state_config import StateConfig
from tests.services import REDIS_PASSWORD_ENV, RedisServer, started_redis

RULES = LimitRules(rpm=10, tokens_per_day=1000, concurrent_streams=100)


def config_for(server: RedisServer, prefix: str) -> StateConfig:
    return StateConfig(redis_url=server.url, password_env=REDIS_PASSWORD_ENV, key_prefix=prefix)


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[RedisLink]]]:
    """Started links to the session's Redis, one prefix per test."""
    prefix = "t" + secrets.token_hex(4)
    made: list[RedisLink] = []

    async def make() -> RedisLink:
        link = RedisLink(config_for(redis_server, prefix), ping_interval=0.1)
        await link.start()
        made.append(link)
        return link

    yield make
    for link in made:
        await link.close()


def identity() -> str:
    return secrets.token_hex(16)


async def test_a_burst_over_three_instances_admits_exactly_the_rpm(links) -> None:
    states = [RedisLimitState(await links()) for _ in range(3)]
    who = identity()
    verdicts = await asyncio.gather(*(states[i % 3].admit(who, RULES, time.time()) for i in range(50)))
    admitted = [v for v in verdicts if v.admitted]
    assert len(admitted) == 10
    refused = [v for v in verdicts if not v.admitted]
    assert {v.rule for v in refused} == {"requests_per_minute"}
    # The oldest admission was a moment ago: a retry makes sense in about a minute.
    assert all(58 < v.retry_after <= 60 for v in refused)
    assert sorted(v.remaining for v in admitted) == list(range(10))
    # Another identity has its own budget.
    assert (await states[0].admit(identity(), RULES, time.time())).admitted


async def test_concurrent_streams_are_shared_and_released(links) -> None:
    one, two = RedisLimitState(await links()), RedisLimitState(await links())
    rules = LimitRules(rpm=10, tokens_per_day=1000, concurrent_streams=1)
    who = identity()
    assert (await one.admit(who, rules, time.time())).admitted
    busy = await two.admit(who, rules, time.time())
    assert (busy.admitted, busy.rule, busy.retry_after) == (False, "concurrent_streams", 5.0)
    await one.release(who, 10, time.time())
    assert (await two.admit(who, rules, time.time())).admitted


async def test_tokens_per_day_are_charged_by_release_on_any_instance(links) -> None:
    one, two = RedisLimitState(await links()), RedisLimitState(await links())
    who = identity()
    assert (await one.admit(who, RULES, time.time())).admitted
    await one.release(who, 600, time.time())
    assert (await two.admit(who, RULES, time.time())).admitted
    await two.release(who, 400, time.time())
    spent = await one.admit(who, RULES, time.time())
    assert (spent.admitted, spent.rule) == (False, "tokens_per_day")
    assert 86390 < spent.retry_after <= 86400


async def test_only_keyed_hashes_with_ttls_are_stored(links, redis_server: RedisServer) -> None:
    link = await links()
    state = RedisLimitState(link, slot_ttl=120)
    who = identity()
    assert (await state.admit(who, RULES, time.time())).admitted
    keys = sorted(k.decode() for k in await link.client.keys(f"{link.prefix}:*"))
    base = f"{link.prefix}:lim:{{{who}}}"
    assert keys == [f"{base}:a", f"{base}:d", f"{base}:m"]
    ttls = {k: await link.client.ttl(k) for k in keys}
    assert 0 < ttls[f"{base}:m"] <= 61
    assert 86400 < ttls[f"{base}:d"] <= 86460
    assert 0 < ttls[f"{base}:a"] <= 120
    await state.release(who, 5, time.time())
    # The last slot given back leaves no counter behind.
    assert not await link.client.exists(f"{base}:a")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and start."""
    server = started_redis()
    yield server
    server.close()


async def test_redis_down_web_chat_closed_api_per_instance_then_shared_again(
        own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(REDIS_PASSWORD_ENV, own_redis.password)
    caplog.set_level(logging.INFO, "privatai.state.redis")
    link = RedisLink(config_for(own_redis, "down"), ping_interval=0.1)
    await link.start()
    try:
        shared = RedisLimitState(link)
        api = FallbackLimitState(RedisLimitState(link))
        rules = LimitRules(rpm=2, tokens_per_day=1000, concurrent_streams=10)
        who = identity()
        assert (await shared.admit(who, rules, time.time())).admitted
        assert await shared.problem() is None

        own_redis.stop()
        for _ in range(5):
            with pytest.raises(LimitsUnavailable) as refused:
                await shared.admit(who, rules, time.time())
        assert refused.value.status == 503
        assert refused.value.to_dict()["error"]["code"] == "limits_unavailable"
        assert "Redis unreachable" in (await shared.problem() or "")
        # The API's limits go on per instance, with their own fresh counters.
        local = [await api.admit(who, rules, time.time()) for _ in range(3)]
        assert [v.admitted for v in local] == [True, True, False]
        await api.release(who, 0, time.time())
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis unreachable" in warnings[0].getMessage()

        own_redis.start()
        deadline = time.monotonic() + 5
        while await shared.problem() is not None:
            assert time.monotonic() < deadline, "the link did not notice Redis was back"
            await asyncio.sleep(0.05)
        # Shared again (a restarted Redis without persistence starts empty).
        assert (await shared.admit(who, rules, time.time())).admitted
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await link.close()


async def test_auth_notices_reach_every_subscriber(links, redis_server: RedisServer) -> None:
    heard: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    subscribers = []
    for event in heard:
        link = RedisLink(config_for(redis_server, (await links()).prefix), ping_interval=0.1)
        await link.start(on_message=event.set)
        subscribers.append(link)
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in heard)), 5)  # the initial catch-up
        for event in heard:
            event.clear()
        publisher = await links()
        await asyncio.sleep(0.2)  # both are subscribed by now
        started = time.monotonic()
        assert await publisher.publish(AUTH_CHANNEL, "changed")
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in heard)), 1)
        assert time.monotonic() - started < 1
    finally:
        for link in subscribers:
            await link.close()
