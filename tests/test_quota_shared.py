"""Monthly quotas counted where several processes share them: in a real,
throwaway Redis (each "instance" is its own RedisLink) and in the SQLite file
the workers of one machine share (each "worker" its own connection and thread).
Whole gateways with 2 workers and 2 instances are in tests/test_quota_processes.py."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

from privatai.errors import LimitsUnavailable
from privatai.limits import quota_sqlite, sqlite_state
from privatai.limits.quota_redis import FallbackQuotas, RedisQuotas
from privatai.limits.quota_sqlite import SqliteQuotas
from privatai.limits.redis_link import RedisLink
from privatai.plans.quota import Hold, QuotaExceeded, QuotaLedger, Quotas, SharedQuotas, month_start, utc_today
from tests.services import REDIS_PASSWORD_ENV, RedisServer
from tests.test_redis_state import config_for, links, own_redis  # noqa: F401 - fixtures

NOVEMBER, DECEMBER = date(2026, 11, 1), date(2026, 12, 1)
# Redis expires a month's count after it: tests that use Redis run in the real month.
THIS_MONTH = month_start(utc_today())


class Store:
    """The store's month sums as ``month_loader`` reads them: counts the loads."""

    def __init__(self, used: int = 0) -> None:
        self.used = used
        self.loads = 0

    async def load(self, account_id: int, start: date) -> int:
        self.loads += 1
        await asyncio.sleep(0.01)  # a real query suspends: let concurrent first requests meet here
        return self.used


class Calendar:
    def __init__(self, today: date = THIS_MONTH) -> None:
        self.today = today

    def __call__(self) -> date:
        return self.today


@pytest.fixture
def sqlite_quotas(tmp_path: Path) -> Iterator[Callable[..., SqliteQuotas]]:
    path = tmp_path / "quotas.sqlite"
    sqlite_state.create(path, quota_sqlite.SCHEMA)
    made: list[SqliteQuotas] = []

    def make(store: Store, today: Callable[[], date] = Calendar()) -> SqliteQuotas:
        made.append(SqliteQuotas(path, store.load, today))
        return made[-1]

    yield make
    for quotas in made:
        quotas.close()


async def burst(stores: list[Quotas], account_id: int, quota: int, tokens: int,
                count: int) -> tuple[list[Hold], list[QuotaExceeded]]:
    outcomes = await asyncio.gather(*(stores[i % len(stores)].reserve(account_id, quota, tokens, None)
                                      for i in range(count)), return_exceptions=True)
    held = [o for o in outcomes if isinstance(o, Hold)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(held) + len(refused) == count, [o for o in outcomes if isinstance(o, BaseException)]
    return held, refused


async def check_one_count(stores: list[SharedQuotas], store: Store) -> None:
    """What every shared count must do, whichever process asks."""
    # 40 tokens used this month; 3 processes reserve 10 each at once against
    # 100: used + reserved reaches the quota after exactly 6 reservations.
    held, refused = await burst(list(stores), 1, 100, 10, 60)
    assert len(held) == 6 and len(refused) == 54
    assert {error.code for error in refused} == {"quota_exceeded"}
    assert refused[0].status == 403 and "100 tokens (with the requests still running)" in refused[0].message
    # The processes found no count at once, each loaded the store's 40, and
    # the count holds it once (else fewer or more than 6 would fit).
    assert 1 <= store.loads <= len(stores)
    # Settled on other processes than admitted them: 6 used 5 each (30 back).
    for i, hold in enumerate(held):
        await stores[(i + 1) % len(stores)].settle(1, hold, 10, 5)
    # 70 used, nothing reserved: three more of 10 fit.
    assert len((await burst(list(stores), 1, 100, 10, 10))[0]) == 3
    # Another account has its own count (also 40 used in the store).
    assert len((await burst(list(stores), 2, 100, 10, 20))[0]) == 6


async def test_workers_reserve_against_one_count_in_the_shared_file(sqlite_quotas) -> None:
    store = Store(used=40)
    await check_one_count([sqlite_quotas(store) for _ in range(3)], store)


async def test_instances_reserve_against_one_count_in_redis(links) -> None:
    store = Store(used=40)
    await check_one_count([RedisQuotas(await links(), store.load, Calendar()) for _ in range(3)], store)


async def test_a_count_is_seeded_once_from_the_store_even_when_two_seed_at_once(links) -> None:
    first, second = Store(used=70), Store(used=70)
    one = RedisQuotas(await links(), first.load, Calendar())
    two = RedisQuotas(await links(), second.load, Calendar())
    held, _ = await burst([one, two], 5, 100, 10, 10)
    assert first.loads == second.loads == 1  # both found no count and loaded ...
    assert len(held) == 3  # ... and the count holds 70 once, not 140 or 0
    # From then on nobody asks the store.
    await burst([one, two], 5, 100, 10, 4)
    assert first.loads == second.loads == 1


async def test_a_request_admitted_last_month_ends_its_reservation_there_and_counts_now(sqlite_quotas) -> None:
    calendar = Calendar(NOVEMBER)  # the file keeps months without expiry: any month will do
    store = Store(used=0)
    one, two = sqlite_quotas(store, calendar), sqlite_quotas(store, calendar)
    evening = await one.reserve(9, 100, 100, None)
    assert evening.month == NOVEMBER
    with pytest.raises(QuotaExceeded):
        await two.reserve(9, 100, 5, None)
    calendar.today = date(2026, 12, 1)
    december = await two.reserve(9, 100, 10, None)  # a fresh month, seeded from the store (0)
    assert december.month == DECEMBER
    await one.settle(9, evening, 100, 50)  # November's hold ends; its 50 tokens count in December
    held, _ = await burst([one, two], 9, 100, 10, 10)
    assert len(held) == 4  # 50 used + 10 reserved + 4 × 10 reaches 100


async def test_redis_holds_account_ids_and_numbers_that_expire_after_the_month(links) -> None:
    link = await links()
    quotas = RedisQuotas(link, Store(used=3).load, Calendar())
    hold = await quotas.reserve(42, 1000, 17, None)
    keys = [k.decode() for k in await link.client.keys(f"{link.prefix}:*")]
    assert keys == [f"{link.prefix}:quota:{{42}}:{THIS_MONTH:%Y-%m}"]
    assert await link.client.hgetall(keys[0]) == {b"u": b"3", b"r": b"17"}
    # The second day of the next month begins.
    next_month = (THIS_MONTH + timedelta(days=31)).replace(day=2)
    expires = await link.client.expiretime(keys[0])
    assert expires == int(datetime(next_month.year, next_month.month, 2, tzinfo=timezone.utc).timestamp())
    await quotas.settle(42, hold, 17, 12)
    assert await link.client.hgetall(keys[0]) == {b"u": b"15", b"r": b"0"}


async def test_a_redis_that_lost_its_data_is_seeded_again_from_the_store(links) -> None:
    link = await links()
    store = Store(used=0)
    quotas = RedisQuotas(link, store.load, Calendar())
    await quotas.reserve(3, 100, 10, None)
    await link.client.delete(f"{link.prefix}:quota:{{3}}:{THIS_MONTH:%Y-%m}")
    store.used = 90  # what the store recorded meanwhile
    await quotas.reserve(3, 100, 10, None)
    with pytest.raises(QuotaExceeded):
        await quotas.reserve(3, 100, 10, None)
    assert store.loads == 2


@pytest.fixture
async def down_link(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisLink]:
    """A link to a Redis of the test's own (prefix ``down``), to stop and start."""
    monkeypatch.setenv(REDIS_PASSWORD_ENV, own_redis.password)
    link = RedisLink(config_for(own_redis, "down"), ping_interval=0.1)
    await link.start()
    yield link
    await link.close()


async def test_redis_down_the_quota_goes_on_per_instance_then_shared_again(
        down_link: RedisLink, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "privatai.state.redis")
    link = down_link
    store = Store(used=0)
    shared = RedisQuotas(link, store.load, Calendar())
    quotas = FallbackQuotas(shared, QuotaLedger(store.load, Calendar()))
    hold = await quotas.reserve(7, 100, 30, None)
    assert not hold.local
    await quotas.settle(7, hold, 30, 30)

    own_redis.stop()
    with pytest.raises(LimitsUnavailable):
        await shared.reserve(7, 100, 10, None)
    # This instance's ledger, loaded from the store (which has the 30 by now).
    store.used = 30
    local = [await quotas.reserve(7, 100, 30, None) for _ in range(3)]
    assert all(hold.local for hold in local)
    with pytest.raises(QuotaExceeded):
        await quotas.reserve(7, 100, 1, None)
    assert "Redis unreachable" in (link.problem() or "")
    assert "limits are per instance" in caplog.text

    own_redis.start()
    deadline = time.monotonic() + 10
    while not link.available():
        assert time.monotonic() < deadline, "the link never came back"
        await asyncio.sleep(0.05)
    # The requests admitted during the outage settle now: their usage is
    # added to the shared count if Redis kept it, and is in the store
    # (which seeds it afresh) if Redis lost it. Either way it is 30 + 3 × 20.
    for hold in local:
        await quotas.settle(7, hold, 30, 20)
    store.used = 90
    back = await quotas.reserve(7, 100, 10, None)
    assert not back.local
    assert await link.client.hget(f"down:quota:{{7}}:{THIS_MONTH:%Y-%m}", "u") == b"90"
    with pytest.raises(QuotaExceeded):
        await quotas.reserve(7, 100, 1, None)


async def test_one_process_ledger_never_suspends_once_the_month_is_loaded() -> None:
    ledger = QuotaLedger(Store(used=0).load, Calendar())
    await ledger.reserve(1, 100, 10, None)  # loads the month
    step = ledger.reserve(1, 100, 10, None)
    with pytest.raises(StopIteration) as finished:
        step.send(None)  # runs to its end in one step: no await suspends
    hold = finished.value.value
    settle = ledger.settle(1, hold, 10, 10)
    with pytest.raises(StopIteration):
        settle.send(None)
