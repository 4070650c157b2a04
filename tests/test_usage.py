"""Usage recording: exact under concurrency, never lost, only numbers stored;
on SQLite and on PostgreSQL (the ``target`` fixture, tests/services.py)."""
from __future__ import annotations

import asyncio
import logging
import random
import re
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import AsyncIterator

import pytest
import sqlalchemy.exc

from privatai.config import StoreConfig
from privatai.core.protocol import parse_chat_request
from privatai.core.tokens import count_completion, count_prompt
from privatai.store.database import Store
from privatai.store.recorder import MAX_TOKENS, Batch, Counts, UsageRecorder
from privatai.store.records import Principal, utc_now
from tests.services import PostgreSQL, Target

ISO_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "privatai.db")


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    store = await target.open()
    yield store
    await store.close()


@pytest.fixture
async def recorder(store: Store) -> AsyncIterator[UsageRecorder]:
    recorder = UsageRecorder(store, flush_interval=0.01)
    yield recorder
    await recorder.stop()


async def _principals(store: Store, n: int, account: str = "acme") -> list[Principal]:
    await store.create_account(account)
    return [await store.authenticate((await store.create_key(account, label=f"k{i}")).key)
            for i in range(n)]


async def _db_totals(store: Store) -> dict[tuple[int, str], tuple[int, int, int]]:
    """What the usage table holds, read past the store's own queries."""
    async with store._db.read() as conn:
        rows = (await conn.exec_driver_sql(
            "SELECT key_id, model, sum(requests), sum(prompt_tokens), sum(completion_tokens)"
            " FROM usage_daily GROUP BY key_id, model")).all()
    return {(k, m): (int(r), int(p), int(c)) for k, m, r, p, c in rows}


async def test_concurrent_records_are_exact(store: Store, recorder: UsageRecorder) -> None:
    principals = await _principals(store, 5)
    models = ["phi4-mini", "llama3.2", "smollm2"]
    expected: dict[tuple[int, str], list[int]] = {}
    recorder.start()

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(100):
            principal, model = rng.choice(principals), rng.choice(models)
            prompt, completion = rng.randrange(0, 5000), rng.randrange(0, 5000)
            recorder.record(principal.key_id, model, prompt, completion)
            totals = expected.setdefault((principal.key_id, model), [0, 0, 0])
            totals[0] += 1
            totals[1] += prompt
            totals[2] += completion
            await asyncio.sleep(rng.random() / 1000)  # interleave with the background flushes

    await asyncio.gather(*(client(seed) for seed in range(50)))
    await recorder.stop()
    assert recorder.pending_counts == {}
    assert await _db_totals(store) == {key: tuple(v) for key, v in expected.items()}
    assert sum(v[0] for v in expected.values()) == 5000


async def test_failed_flush_keeps_counts_pending(db_path: str) -> None:
    store = await Store.open(db_path, busy_timeout=0.2)
    recorder = UsageRecorder(store, flush_interval=0.01)
    try:
        [principal] = await _principals(store, 1)
        # Another process (the CLI, a backup) holds the write lock past the busy timeout.
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        recorder.record(principal.key_id, "m", 10, 20)
        with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
            await recorder.flush()
        recorder.record(principal.key_id, "m", 1, 2)
        assert [(c.requests, c.prompt_tokens, c.completion_tokens)
                for c in recorder.pending_counts.values()] == [(2, 11, 22)]

        # The background task keeps retrying without losing or doubling anything.
        recorder.start()
        await asyncio.sleep(0.5)
        blocker.execute("ROLLBACK")
        blocker.close()
        await recorder.stop()
        assert await _db_totals(store) == {(principal.key_id, "m"): (2, 11, 22)}
    finally:
        await recorder.stop()
        await store.close()


def _totals(usage: dict) -> tuple[int, int, int]:
    return usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]


async def test_out_of_range_counts_are_clamped_and_block_nobody(store: Store, recorder: UsageRecorder) -> None:
    liar, honest = await _principals(store, 2)
    recorder.record(liar.key_id, "m", 2**64 + 1, -5)
    recorder.record(honest.key_id, "m", 10, 20)
    recorder.record(honest.key_id, "m", -1000, -1000)  # counts a request, lowers nothing
    recorder.record(honest.key_id, "m", 2.0, float("nan"))  # type: ignore[arg-type]
    await recorder.flush()
    assert recorder.pending_counts == {}
    assert _totals(await store.usage_for_key(liar.key_id)) == (1, MAX_TOKENS, 0)
    assert _totals(await store.usage_for_key(honest.key_id)) == (3, 12, 20)
    # Clamped rows keep adding up without overflowing a 64-bit column.
    for _ in range(3):
        recorder.record(liar.key_id, "m", 2**70, 2**70)
        await recorder.flush()
    assert _totals(await store.usage_for_key(liar.key_id)) == (4, 4 * MAX_TOKENS, 3 * MAX_TOKENS)


async def test_rows_the_database_refuses_are_dropped_and_the_rest_written(
        store: Store, recorder: UsageRecorder, caplog: pytest.LogCaptureFixture) -> None:
    alive, other = await _principals(store, 2)
    day = utc_now().date().isoformat()
    refused = await store.write_usage(Batch({
        (alive.key_id, day, "big"): Counts(1, 2**63, 0),   # beyond a 64-bit column
        (alive.key_id, day, "m"): Counts(1, 5, 6),
        (9999, day, "m"): Counts(1, 1, 1),                  # no such key (deleted)
        (other.key_id, day, "m"): Counts(2, 7, 8)}))
    assert sorted(refused) == [((alive.key_id, day, "big"), False), ((9999, day, "m"), True)]
    assert _totals(await store.usage_for_key(alive.key_id)) == (1, 5, 6)
    assert _totals(await store.usage_for_key(other.key_id)) == (2, 7, 8)

    # Through the recorder: a key that vanished (its account erased while a
    # request of it was counted) is dropped with one line at INFO, not ERROR;
    # a row out of range is an ERROR; every later flush still works.
    recorder.record(9999, "m", 1, 1)
    recorder.record(other.key_id, "m", 1, 1)
    with caplog.at_level(logging.INFO, logger="privatai.store.recorder"):
        await recorder.flush()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "usage of a deleted key dropped (key id 9999)")]
    assert recorder.pending_counts == {}
    recorder.record(other.key_id, "m", 1, 1)
    await recorder.flush()
    assert _totals(await store.usage_for_key(other.key_id)) == (4, 9, 10)


async def test_cancelled_flush_neither_loses_nor_doubles(store: Store, recorder: UsageRecorder) -> None:
    [principal] = await _principals(store, 1)
    for _ in range(200):
        recorder.record(principal.key_id, "m", 3, 4)
        flush = asyncio.ensure_future(recorder.flush())
        await asyncio.sleep(0)
        flush.cancel()
    await recorder.flush()
    assert await _db_totals(store) == {(principal.key_id, "m"): (200, 600, 800)}


async def test_stop_flushes_even_if_the_loop_cancelled_the_task(store: Store, recorder: UsageRecorder) -> None:
    [principal] = await _principals(store, 1)
    recorder.start()
    recorder.record(principal.key_id, "m", 1, 1)
    assert recorder._task is not None
    recorder._task.cancel()  # what a shutting-down event loop does to pending tasks
    await asyncio.sleep(0)
    await recorder.stop()
    assert await _db_totals(store) == {(principal.key_id, "m"): (1, 1, 1)}


async def test_usage_survives_close_and_reopen(target: Target) -> None:
    store = await target.open()
    [principal] = await _principals(store, 1)
    recorder = UsageRecorder(store)
    recorder.start()
    recorder.record(principal.key_id, "m", 5, 7)
    await recorder.stop()  # flushes a last time
    await store.close()

    store = await target.open()
    try:
        usage = await store.usage_for_key(principal.key_id)
        assert {k: usage[k] for k in ("requests", "prompt_tokens", "completion_tokens", "tokens_used")} == {
            "requests": 1, "prompt_tokens": 5, "completion_tokens": 7, "tokens_used": 12}
    finally:
        await store.close()


async def test_usage_json_has_the_seed_shape(store: Store, recorder: UsageRecorder) -> None:
    alice, bob = await _principals(store, 2)
    assert await store.usage_for_key(alice.key_id) == {
        "tokens_used": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "last_used": None}

    recorder.record(alice.key_id, "phi4-mini", 100, 50)
    recorder.record(alice.key_id, "phi4-mini", 1, 2)
    recorder.record(alice.key_id, "llama3.2", 10, 20)
    recorder.record(bob.key_id, "llama3.2", 1000, 2000)
    await recorder.flush()
    usage = await store.usage_for_key(alice.key_id)
    assert set(usage) == {"tokens_used", "prompt_tokens", "completion_tokens", "requests", "last_used"}
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"], usage["tokens_used"]) == (
        3, 111, 72, 183)
    assert ISO_SECONDS.fullmatch(usage["last_used"])

    by_model = await store.usage_for_key(alice.key_id, by_model=True)
    assert by_model["models"] == {
        "llama3.2": {"tokens_used": 30, "prompt_tokens": 10, "completion_tokens": 20, "requests": 1},
        "phi4-mini": {"tokens_used": 153, "prompt_tokens": 101, "completion_tokens": 52, "requests": 2},
    }

    account = await store.usage_for_account(alice.account_id, by_model=True)
    assert (account["requests"], account["tokens_used"]) == (4, 3183)
    assert account["models"]["llama3.2"]["requests"] == 2
    assert ISO_SECONDS.fullmatch(account["last_used"])


async def test_period_filters_and_pruning(store: Store) -> None:
    [principal] = await _principals(store, 1)
    today = utc_now().date()
    days = [today - timedelta(days=n) for n in (0, 10, 399, 401, 800)]
    batch = Batch()
    for n, day in enumerate(days):
        batch.counts[(principal.key_id, day.isoformat(), "m")] = Counts(1, 10 ** n, 0)
    await store.write_usage(batch)

    def prompt(usage: dict) -> int:
        return usage["prompt_tokens"]

    assert prompt(await store.usage_for_key(principal.key_id)) == 11111
    assert prompt(await store.usage_for_key(principal.key_id, since=today - timedelta(days=10))) == 11
    assert prompt(await store.usage_for_key(principal.key_id, until=today - timedelta(days=10))) == 11110
    assert prompt(await store.usage_for_key(principal.key_id, since=days[2], until=days[1])) == 110
    assert prompt(await store.usage_for_key(principal.key_id, since=date(1999, 1, 1),
                                            until=date(1999, 1, 2))) == 0

    assert await store.prune_usage(400) == 2
    assert prompt(await store.usage_for_key(principal.key_id)) == 111


async def test_recorder_prunes_at_start_when_retention_is_set(target: Target) -> None:
    config = StoreConfig(**target.store_config(), usage_retention_days=30, flush_interval=0.01)
    store = await Store.from_config(config)
    recorder = UsageRecorder.from_config(store, config)
    try:
        [principal] = await _principals(store, 1)
        old = (utc_now().date() - timedelta(days=31)).isoformat()
        await store.write_usage(Batch({(principal.key_id, old, "m"): Counts(1, 1, 1)}))
        recorder.start()
        await asyncio.sleep(0.1)
        assert (await store.usage_for_key(principal.key_id))["requests"] == 0
    finally:
        await recorder.stop()
        await store.close()


async def test_only_counts_are_stored(target: Target, request: pytest.FixtureRequest) -> None:
    canary = "CANARY-7f3a9c prompt text that must never be stored"
    store = await target.open()
    await store.create_account("acme")
    created = await store.create_key("acme", label="ci")
    principal = await store.authenticate(created.key)
    recorder = UsageRecorder(store)
    chat = parse_chat_request(
        ('{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % canary).encode())
    recorder.record(principal.key_id, chat.model or "m", count_prompt(chat),
                    count_completion(canary + " answer", canary + " thinking", '{"q": "%s"}' % canary))
    await recorder.flush()
    files = [Path(target.location), Path(target.location + "-wal")]
    if target.kind == "sqlite":
        assert files[1].exists()  # the WAL is read before the checkpoint at close

    def dump() -> bytes:
        """Everything the database holds, as bytes."""
        if target.kind == "postgresql":
            server: PostgreSQL = request.getfixturevalue("postgresql")
            return server.dump(target.location.rsplit("/", 1)[1]).encode()
        with sqlite3.connect(target.location) as db:
            text = "\n".join(db.iterdump()).encode()
        return text + b"".join(file.read_bytes() for file in files if file.exists())

    for _ in range(2):
        data = dump()
        assert b"CANARY" not in data
        assert created.key.encode() not in data
        assert created.key[12:].encode() not in data  # the part no listing shows
        assert principal.key_prefix.encode() in data  # the dump is of the right database
        await store.close()
        store = await target.open()
    await store.close()
