"""The database away: usage held in memory and written once when it is back,
known keys served from the authentication cache for a bounded grace."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Iterator

import pytest

from privatai.errors import AuthenticationFailed, ServiceUnavailable
from privatai.store.database import Store
from privatai.store.recorder import Batch, Refused, UsageRecorder
from privatai.store.records import utc_now
from tests.services import PostgreSQL, Target, started_postgresql


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    store = await target.open()
    yield store
    await store.close()


async def _totals(store: Store, key_id: int) -> tuple[int, int, int]:
    usage = await store.usage_for_key(key_id)
    return usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]


class LostCommit:
    """The store, but the first write's answer is lost after it committed: the
    connection dropped between COMMIT and its acknowledgement."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    async def write_usage(self, batch: Batch) -> list[Refused]:
        self.calls += 1
        refused = await self.store.write_usage(batch)
        if self.calls == 1:
            raise ConnectionResetError("connection lost after COMMIT")
        return refused

    async def prune_usage(self, retention_days: int) -> int:
        return await self.store.prune_usage(retention_days)


async def test_a_batch_retried_after_a_lost_commit_is_counted_once(store: Store) -> None:
    await store.create_account("acme")
    key = await store.authenticate((await store.create_key("acme")).key)
    sink = LostCommit(store)
    recorder = UsageRecorder(sink)
    recorder.record(key.key_id, "m", 10, 20)
    with pytest.raises(ConnectionResetError):
        await recorder.flush()
    recorder.record(key.key_id, "m", 1, 2)
    await recorder.flush()
    assert await _totals(store, key.key_id) == (2, 11, 22)
    assert recorder.pending_counts == {}


class Down:
    async def write_usage(self, batch: Batch) -> list[Refused]:
        raise ConnectionRefusedError("database down")

    async def prune_usage(self, retention_days: int) -> int:
        raise ConnectionRefusedError("database down")


async def test_held_usage_is_bounded_and_the_loss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    recorder = UsageRecorder(Down(), max_rows=3)
    caplog.set_level(logging.INFO, "privatai.store.recorder")
    for key_id in range(2):
        recorder.record(key_id, "m", 1, 1)
    with pytest.raises(ConnectionRefusedError):
        await recorder.flush()  # two rows in doubt now
    for key_id in range(2, 6):
        recorder.record(key_id, "m", 1, 1)
    recorder.record(0, "m", 1, 1)  # a row already held keeps counting
    held = recorder.pending_counts
    assert sorted(key[0] for key in held) == [0, 1, 2]
    assert held[(0, utc_now().date().isoformat(), "m")].requests == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("usage cannot be written" in m for m in messages) == 1
    assert sum("usage held in memory is full" in m for m in messages) == 1


@pytest.fixture(scope="module")
def own_postgresql() -> Iterator[PostgreSQL]:
    """A PostgreSQL of this module's own, to stop and start."""
    server = started_postgresql()
    yield server
    server.stop()


async def test_postgresql_down_known_keys_within_grace_usage_held_and_written_once(
        own_postgresql: PostgreSQL) -> None:
    server = own_postgresql
    database = server.new_database()
    store = await Store.open(server.url(database), password=server.password, cache_ttl=0.1, grace=3.0)
    recorder = UsageRecorder(store, flush_interval=0.05)
    try:
        await store.create_account("acme")
        raw = (await store.create_key("acme")).key
        never_seen = (await store.create_key("acme")).key
        key = await store.authenticate(raw)
        recorder.start()

        server.pause()
        outage = time.monotonic()
        await asyncio.sleep(0.2)  # the cached outcome's TTL is over
        assert await store.reachable() is False
        for _ in range(5):
            assert (await store.authenticate(raw)).key_id == key.key_id
            recorder.record(key.key_id, "m", 3, 4)
        # A key this instance never saw cannot be checked: a clear 503, not a 500 or a 401.
        with pytest.raises(ServiceUnavailable) as refused:
            await store.authenticate(never_seen)
        assert refused.value.status == 503 and refused.value.code == "store_unavailable"
        # Malformed keys still get their 401 without the database.
        with pytest.raises(AuthenticationFailed):
            await store.authenticate("privat_nonsense")
        await asyncio.sleep(0.3)
        assert recorder.failing

        # The grace is bounded: after it, the cached key is refused too.
        await asyncio.sleep(max(0.0, outage + 3.3 - time.monotonic()))
        with pytest.raises(ServiceUnavailable):
            await store.authenticate(raw)

        server.resume()
        await asyncio.sleep(1.1)  # past the pause between database attempts
        assert (await store.authenticate(raw)).key_id == key.key_id
        await recorder.stop()
        assert not recorder.failing and recorder.pending_counts == {}
        assert await _totals(store, key.key_id) == (5, 15, 20)
    finally:
        if not (server.data / "postmaster.pid").exists():
            server.resume()
        await recorder.stop()
        await store.close()
        server.drop_database(database)
