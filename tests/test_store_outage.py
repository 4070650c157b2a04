"""The database away: usage held in memory and written once when it is back,
known keys served from the authentication cache for a bounded grace; held
usage spilled to a file by a stop before it is back, and written once by the
next start (tests/test_usage_spill_process.py: with gateway processes)."""
from __future__ import annotations

import asyncio
import json
import logging
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from privatai.errors import AuthenticationFailed, ServiceUnavailable
from privatai.store.database import Store
from privatai.store.recorder import Batch, Counts, Refused, UsageRecorder
from privatai.store.records import utc_now
from privatai.store.spill import SpillDir
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


async def _key(store: Store) -> int:
    await store.create_account("acme")
    return (await store.authenticate((await store.create_key("acme")).key)).key_id


class Flaky:
    """The store behind a switch: ``down`` refuses every write; ``lose_next``
    lets the next write commit and then raises, as a connection lost while
    COMMIT's answer was on its way."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.lose_next = False

    async def write_usage(self, batch: Batch) -> list[Refused]:
        if self.down:
            raise ConnectionRefusedError("database down")
        refused = await self.store.write_usage(batch)
        if self.lose_next:
            self.lose_next = False
            raise ConnectionResetError("connection lost after COMMIT")
        return refused

    async def prune_usage(self, retention_days: int) -> int:
        return await self.store.prune_usage(retention_days)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("privatai-usage-"))


async def test_a_stop_while_down_spills_and_the_next_start_writes_it_once(
        store: Store, target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key_id = await _key(store)
    spill = tmp_path / "spill"
    sink = Flaky(store)
    first = UsageRecorder(sink, spill=SpillDir(spill, target.location))
    first.record(key_id, "m", 10, 20)
    sink.lose_next = True
    with pytest.raises(ConnectionResetError):
        await first.flush()  # committed, but the recorder cannot know: in doubt
    sink.down = True
    first.record(key_id, "m", 1, 2)
    first.record(key_id, "m", 100, 200)
    await first.stop()  # no exception: kept in the file
    assert first.pending_counts == {}
    [path] = _files(spill)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_bytes())
    # The batch in doubt with the id it was tried under, and the rest under a new one.
    assert len(stored["batches"]) == 2 and stored["batches"][0]["id"] != stored["batches"][1]["id"]
    assert await _totals(store, key_id) == (1, 10, 20)
    assert any(f"usage of 3 request(s) kept in {path}" in r.getMessage() for r in caplog.records)

    sink.down = False
    second = UsageRecorder(sink, spill=SpillDir(spill, target.location))
    await second.replay_spilled()
    # The committed batch is recognised by its id: not counted twice.
    assert await _totals(store, key_id) == (3, 111, 222)
    assert list(spill.iterdir()) == []
    third = UsageRecorder(sink, spill=SpillDir(spill, target.location))
    await third.replay_spilled()
    assert await _totals(store, key_id) == (3, 111, 222)
    for recorder in (second, third):
        await recorder.stop()


async def _spilled_while_down(store: Store, target: Target, directory: Path) -> tuple[int, Flaky, Path]:
    """A key, the store switched off, and the spill file of a stop that held one request of it."""
    key_id = await _key(store)
    sink = Flaky(store)
    sink.down = True
    first = UsageRecorder(sink, spill=SpillDir(directory, target.location))
    first.record(key_id, "m", 3, 4)
    await first.stop()
    [spilled] = _files(directory)
    return key_id, sink, spilled


async def test_spill_files_replayed_while_still_down_are_held_claimed_and_spilled_again(
        store: Store, target: Target, tmp_path: Path) -> None:
    key_id, sink, spilled = await _spilled_while_down(store, target, tmp_path)

    # A start during the outage takes the file in and holds it; another
    # process starting meanwhile must not take the same file.
    second = UsageRecorder(sink, spill=SpillDir(tmp_path, target.location), flush_interval=0.05)
    await second.replay_spilled()
    assert second.failing
    assert [c.requests for c in second.pending_counts.values()] == [1]
    [claimed] = _files(tmp_path)
    assert claimed.name.startswith(spilled.name + ".claimed-")
    bystander = UsageRecorder(sink, spill=SpillDir(tmp_path, target.location))
    await bystander.replay_spilled()
    assert bystander.pending_counts == {}

    # Stopped again while down: one new file replaces the claimed one.
    second.record(key_id, "m", 5, 6)
    await second.stop()
    [again] = _files(tmp_path)
    assert ".claimed-" not in again.name and again != spilled

    # The next start with the database back writes it all, once.
    sink.down = False
    third = UsageRecorder(sink, spill=SpillDir(tmp_path, target.location), flush_interval=0.05)
    await third.replay_spilled()
    assert await _totals(store, key_id) == (2, 8, 10)
    assert _files(tmp_path) == []
    await third.stop()
    await bystander.stop()


async def test_a_held_replay_is_written_by_the_periodic_flush_when_the_database_returns(
        store: Store, target: Target, tmp_path: Path) -> None:
    key_id, sink, _ = await _spilled_while_down(store, target, tmp_path)
    second = UsageRecorder(sink, spill=SpillDir(tmp_path, target.location))
    await second.replay_spilled()
    second.record(key_id, "m", 1, 1)
    sink.down = False
    await second.flush()  # what the periodic flush does
    assert await _totals(store, key_id) == (2, 4, 5)
    assert _files(tmp_path) == []
    await second.stop()


def _write_spill(directory: Path, location: str, body: bytes) -> Path:
    """A spill file with a valid name and ``body``."""
    path = SpillDir(directory, location).write([])
    path.write_bytes(body)
    return path


async def test_an_unreadable_spill_file_is_moved_aside_and_never_half_applied(
        store: Store, target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key_id = await _key(store)
    spill = tmp_path / "spill"
    good_batch = {"id": "a" * 32, "rows": [[key_id, "2026-01-02", "m", 1, 5, 6]], "last_used": {}}
    # The first batch is valid, the second is not: the whole file is refused.
    bad_batch = {"id": "b" * 32, "rows": [[key_id, "2026-01-02", "m", -1, 5, 6]], "last_used": {}}
    half = {"version": 1, "spilled": utc_now().isoformat(), "batches": [good_batch, bad_batch]}
    secret = "CANARY-not-a-usage-file"
    bad = [_write_spill(spill, target.location, json.dumps(half).encode()),
           _write_spill(spill, target.location, f"{{\"note\": \"{secret}\"".encode()),
           _write_spill(spill, target.location, b"\xff\xfe")]
    good = _write_spill(spill, target.location, json.dumps({**half, "batches": [{**good_batch, "id": "c" * 32}]}).encode())
    recorder = UsageRecorder(Flaky(store), spill=SpillDir(spill, target.location))
    await recorder.replay_spilled()
    assert await _totals(store, key_id) == (1, 5, 6)  # the good file only
    assert not good.exists()
    assert sorted(p.name for p in spill.iterdir()) == sorted(p.name + ".corrupt" for p in bad)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("cannot be read" in m for m in errors)
    assert secret not in caplog.text
    await recorder.stop()


async def test_files_of_another_database_are_left_alone(store: Store, target: Target, tmp_path: Path) -> None:
    key_id = await _key(store)
    other = SpillDir(tmp_path, "postgresql://privatai@elsewhere:5432/other")
    path = other.write([Batch({(key_id, "2026-01-02", "m"): Counts(1, 2, 3)}, id="d" * 32)])
    recorder = UsageRecorder(Flaky(store), spill=SpillDir(tmp_path, target.location))
    await recorder.replay_spilled()
    assert path.exists() and await _totals(store, key_id) == (0, 0, 0)
    await recorder.stop()


def test_each_file_is_claimed_by_exactly_one_of_many_concurrent_claimers(tmp_path: Path) -> None:
    location = str(tmp_path / "privatai.db")
    written = [SpillDir(tmp_path, location).write([Batch({(1, "2026-01-02", "m"): Counts(1, 1, 1)},
                                                         id=f"{n:032x}")]) for n in range(60)]
    claims: list[list[str]] = []
    start = threading.Barrier(4)

    def claimer() -> None:
        start.wait()
        claimed = SpillDir(tmp_path, location).claim()
        claims.append([b.id for b in claimed.batches])

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [batch_id for claim in claims for batch_id in claim]
    assert sorted(ids) == sorted(f"{n:032x}" for n in range(60))
    assert not any(path.exists() for path in written)


async def test_a_claim_of_a_dead_process_is_taken_over_and_an_old_file_written_with_a_warning(
        store: Store, target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    key_id = await _key(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = SpillDir(tmp_path, target.location).write([Batch({(key_id, "2026-01-02", "m"): Counts(1, 2, 3)},
                                                            id="e" * 32)])
    body = json.loads(path.read_bytes())
    body["spilled"] = (utc_now() - timedelta(days=8)).isoformat()
    claimed = path.with_name(f"{path.name}.claimed-{dead.pid}-0123456789ab")
    claimed.write_text(json.dumps(body))
    path.unlink()
    recorder = UsageRecorder(Flaky(store), spill=SpillDir(tmp_path, target.location))
    await recorder.replay_spilled()
    assert await _totals(store, key_id) == (1, 2, 3)
    assert _files(tmp_path) == []
    assert "is older than the 7 days batch ids are kept" in caplog.text
    await recorder.stop()
