"""The LimitState implementations the workers use: the same rules in memory
and in the SQLite file several worker processes share, exact across processes."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from privatai.limits import sqlite_state
from privatai.limits.shared import DAY, MINUTE, LimitRules, LimitState, MemoryLimitState
from privatai.limits.sqlite_state import SqliteLimitState

ME = "6d182a80387c7eecae5cc4243ad86e23"
OTHER = "0f0e0d0c0b0a09080706050403020100"


@pytest.fixture(params=["memory", "sqlite"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LimitState]:
    if request.param == "memory":
        yield MemoryLimitState()
        return
    path = tmp_path / "limits.sqlite"
    sqlite_state.create(path)
    shared = SqliteLimitState(path)
    yield shared
    shared.close()


async def test_requests_per_minute_with_exact_retry_after_and_headers(state: LimitState) -> None:
    rules = LimitRules(rpm=3, tokens_per_day=10**9, concurrent_streams=10)
    for n in range(3):
        verdict = await state.admit(ME, rules, 1000.0 + n)
        assert verdict.admitted and verdict.rule is None and verdict.retry_after == 0
        assert (verdict.limit, verdict.remaining) == (3, 2 - n)
        await state.release(ME, 0, 1000.0 + n)
    refused = await state.admit(ME, rules, 1010.0)
    assert not refused.admitted and refused.rule == "requests_per_minute"
    assert refused.retry_after == pytest.approx(50.0)  # the first request leaves the window at 1060
    assert (refused.limit, refused.remaining, refused.reset_seconds) == (3, 0, pytest.approx(50.0))
    assert (await state.admit(OTHER, rules, 1010.0)).admitted  # per identity
    assert (await state.admit(ME, rules, 1000.0 + MINUTE)).admitted



async def test_a_request_decided_after_a_later_one_waits_no_longer_than_the_window(state: LimitState) -> None:
    """Workers read their clocks before they take the shared file: a request
    can be decided after one that read a later time. Its Retry-After was
    then more than the minute (61 s), and its start went into the log out of order."""
    rules = LimitRules(rpm=2, tokens_per_day=10**9, concurrent_streams=10)
    assert (await state.admit(ME, rules, 1000.5)).admitted
    assert (await state.admit(ME, rules, 1000.9)).admitted
    refused = await state.admit(ME, rules, 1000.2)  # read its clock before both
    assert not refused.admitted and refused.rule == "requests_per_minute"
    assert 0 < refused.retry_after <= MINUTE and refused.reset_seconds <= MINUTE
    # The first start leaves the window at 1060.5, not earlier.
    assert not (await state.admit(ME, rules, 1060.4)).admitted
    assert (await state.admit(ME, rules, 1060.5)).admitted

async def test_tokens_per_day_charged_on_release(state: LimitState) -> None:
    rules = LimitRules(rpm=100, tokens_per_day=1000, concurrent_streams=10)
    assert (await state.admit(ME, rules, 0.0)).admitted
    await state.release(ME, 999, 1.0)
    assert (await state.admit(ME, rules, 2.0)).admitted
    await state.release(ME, 5, 3.0)
    refused = await state.admit(ME, rules, 4.0)
    assert refused.rule == "tokens_per_day" and refused.retry_after == pytest.approx(DAY - 4.0)
    assert (await state.admit(ME, rules, DAY)).admitted  # a new day window


async def test_concurrent_streams_held_until_released(state: LimitState) -> None:
    rules = LimitRules(rpm=100, tokens_per_day=10**9, concurrent_streams=2)
    assert (await state.admit(ME, rules, 0.0)).admitted
    assert (await state.admit(ME, rules, 0.1)).admitted
    refused = await state.admit(ME, rules, 0.2)
    assert refused.rule == "concurrent_streams" and refused.retry_after > 0
    await state.release(ME, 10, 0.3)
    assert (await state.admit(ME, rules, 0.4)).admitted
    assert (await state.admit(ME, rules, 0.5)).rule == "concurrent_streams"


async def test_lowered_limit_applies_to_what_was_used(state: LimitState) -> None:
    wide = LimitRules(rpm=5, tokens_per_day=10**9, concurrent_streams=10)
    for n in range(3):
        assert (await state.admit(ME, wide, float(n))).admitted
    narrow = LimitRules(rpm=2, tokens_per_day=10**9, concurrent_streams=10)
    assert (await state.admit(ME, narrow, 3.0)).rule == "requests_per_minute"


async def test_state_healthy(state: LimitState) -> None:
    assert await state.problem() is None


# -- across processes -----------------------------------------------------------


def _hammer(path: str, start: multiprocessing.synchronize.Event, tries: int, out: multiprocessing.Queue) -> None:
    async def run() -> int:
        shared = SqliteLimitState(Path(path))
        rules = LimitRules(rpm=7, tokens_per_day=10**9, concurrent_streams=100)
        admitted = 0
        for _ in range(tries):
            admitted += (await shared.admit(ME, rules, 5000.0)).admitted
        shared.close()
        return admitted

    start.wait()
    out.put(asyncio.run(run()))


def _take_a_slot_and_die(path: str) -> None:
    async def run() -> None:
        shared = SqliteLimitState(Path(path))
        assert (await shared.admit(ME, LimitRules(100, 10**9, 1), 1.0)).admitted

    asyncio.run(run())
    os._exit(0)  # no release: a worker killed mid-answer


def test_three_processes_admit_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite"
    sqlite_state.create(path)
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_hammer, args=(str(path), start, 20, out)) for _ in range(3)]
    for process in processes:
        process.start()
    start.set()
    counts = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    assert sum(counts) == 7  # 60 attempts at once from 3 processes


async def test_slots_of_a_dead_worker_are_given_back(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite"
    sqlite_state.create(path)
    process = multiprocessing.get_context("fork").Process(target=_take_a_slot_and_die, args=(str(path),))
    process.start()
    process.join(timeout=30)
    shared = SqliteLimitState(path)
    try:
        # Its one slot died with it; the minute's request it took still counts.
        verdict = await shared.admit(ME, LimitRules(100, 10**9, 1), 2.0)
        assert verdict.admitted and verdict.remaining == 98
    finally:
        shared.close()


def test_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite"
    sqlite_state.create(path)
    assert path.stat().st_mode & 0o777 == 0o600
