"""A gateway stopped (SIGTERM) while its database is down loses no usage: the
next start writes it, once. Real gateway processes, the openai SDK as client,
a real PostgreSQL stopped and started, a real SQLite file locked by another
process. (tests/test_store_outage.py: the recorder and spill files alone.)"""
from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from privatai.ops.canary_scan import Canaries
from tests.fakes import FakeLlamaCpp
from privatai.core.events import TextDelta
from tests.gateway import Gateway
from tests.services import PASSWORD_ENV, PostgreSQL, started_postgresql

MODEL = "chat-model"


@pytest.fixture(scope="module")
def own_postgresql() -> Iterator[PostgreSQL]:
    """A PostgreSQL of this module's own, to stop and start."""
    server = started_postgresql()
    yield server
    server.stop()


class Told:
    """What the clients were told they used, summed."""

    def __init__(self) -> None:
        self.requests = self.prompt = self.completion = 0

    def add(self, prompt: int, completion: int) -> None:
        self.requests += 1
        self.prompt += prompt
        self.completion += completion

    def totals(self) -> tuple[int, int, int]:
        return self.requests, self.prompt, self.completion


def _requests(gateway: Gateway, fake: FakeLlamaCpp, key: str, n: int, canaries: Canaries, told: Told) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    for i in range(n):
        prompt = canaries.add(f"prompt {told.requests}")
        fake.reply(TextDelta(canaries.add(f"answer {told.requests}")), usage=(7 + i, 3 + 2 * i))
        if i % 2:
            stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                    stream=True, stream_options={"include_usage": True})
            usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
        else:
            usage = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}]).usage
        assert usage is not None
        told.add(usage.prompt_tokens, usage.completion_tokens)


def _stored(gateway: Gateway, key: str) -> tuple[int, int, int]:
    """The key's usage as GET /usage reports it to the key's owner."""
    response = httpx.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["requests"], body["prompt_tokens"], body["completion_tokens"]


def _kept(log: str, at_least: int, at_most: int) -> int:
    """The count of the stop's "kept" line: at least what was served during
    the outage, at most everything (a flush may not have run before it)."""
    [kept] = re.findall(r"usage of (\d+) request\(s\) kept in ", log)
    assert at_least <= int(kept) <= at_most, log
    return int(kept)


def _spill_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("privatai-usage-"))


def _assert_no_canary(canaries: Canaries, *paths: Path) -> None:
    for path in paths:
        data = path.read_bytes()
        found = [label for label, needle in canaries.needles() if needle in data]
        assert found == [], f"{path.name} holds {found}"


def _config(fake: FakeLlamaCpp, store: dict[str, Any]) -> dict[str, Any]:
    return {"backends": [{"name": "llamacpp-1", "kind": "llamacpp", "url": fake.url,
                          "models": [{"name": MODEL, "upstream": "fake-model"}]}],
            "store": {"flush_interval": 0.2, **store}}


def test_postgresql_down_gateway_restarted_nothing_lost_nothing_doubled(
        own_postgresql: PostgreSQL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = own_postgresql
    database = server.new_database()
    monkeypatch.setenv(PASSWORD_ENV, server.password)  # for the CLI run in this process
    spill = tmp_path / "spill"
    canaries, told = Canaries(), Told()
    try:
        with FakeLlamaCpp() as fake:
            gateway = Gateway(tmp_path / "gateway", _config(fake, {
                "url": server.url(database), "password_env": PASSWORD_ENV, "spill_dir": str(spill)}))
            key = gateway.create_key()
            canaries.add("api key", key)
            with gateway:
                _requests(gateway, fake, key, 3, canaries, told)
                server.pause()
                _requests(gateway, fake, key, 4, canaries, told)  # the key works from the cache
                assert gateway.stop() == 0
            kept = _kept(gateway.output(), 4, 7)
            [spilled] = _spill_files(spill)
            _assert_no_canary(canaries, spilled, gateway.output_path)

            server.resume()
            with gateway:
                assert _stored(gateway, key) == told.totals() and told.requests == 7
                assert _spill_files(spill) == []
            assert f"usage of {kept} request(s) from 1 spill file(s) written" in gateway.output()
            _assert_no_canary(canaries, gateway.output_path)
    finally:
        if not (server.data / "postmaster.pid").exists():
            server.resume()
        server.drop_database(database)


def test_sqlite_locked_gateway_restarted_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    canaries, told = Canaries(), Told()
    with FakeLlamaCpp() as fake:
        gateway = Gateway(tmp_path, _config(fake, {}))  # spill files beside the database by default
        key = gateway.create_key()
        canaries.add("api key", key)
        with gateway:
            _requests(gateway, fake, key, 2, canaries, told)
            # Another process holds the write lock: every write fails after the busy timeout.
            locker = sqlite3.connect(tmp_path / "privatai.db", isolation_level=None)
            try:
                locker.execute("BEGIN EXCLUSIVE")
                _requests(gateway, fake, key, 3, canaries, told)
                assert gateway.stop() == 0
            finally:
                locker.close()
        kept = _kept(gateway.output(), 3, 5)
        [spilled] = _spill_files(tmp_path)
        _assert_no_canary(canaries, spilled, gateway.output_path)

        # `privatai check` names the file waiting, as a warning, not a failure.
        checked = gateway.cli("check", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"Held usage {tmp_path}: warning: 1 spill file(s)" in checked.stdout

        with gateway:
            assert _stored(gateway, key) == told.totals() and told.requests == 5
            assert _spill_files(tmp_path) == []
        assert f"usage of {kept} request(s) from 1 spill file(s) written" in gateway.output()
        _assert_no_canary(canaries, gateway.output_path)


def _wait_for_workers(gateway: Gateway, starts: int) -> None:
    """Until every worker of the ``starts``-th start is up, and so has replayed
    what it claimed (before serving)."""
    deadline = time.monotonic() + 60
    while gateway.output().count("with 2 workers") < starts:
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)


def test_workers_stopped_while_sqlite_is_locked_lose_nothing_and_replay_once(tmp_path: Path) -> None:
    canaries, told = Canaries(), Told()

    async def burst(gateway: Gateway, key: str, n: int) -> None:
        # A connection per request, so that both workers serve some.
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, http_client=http)

            async def one(i: int) -> None:
                prompt = canaries.add(f"prompt {i}")
                usage = (await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}] * (1 + i % 3))).usage
                assert usage is not None
                told.add(usage.prompt_tokens, usage.completion_tokens)

            await asyncio.gather(*(one(i) for i in range(n)))

    with FakeLlamaCpp() as fake:
        config = _config(fake, {})
        config["server"] = {"workers": 2}
        gateway = Gateway(tmp_path, config)
        key = gateway.create_key()
        canaries.add("api key", key)
        locker = sqlite3.connect(tmp_path / "privatai.db", isolation_level=None)
        try:
            with gateway:
                _wait_for_workers(gateway, 1)
                locker.execute("BEGIN EXCLUSIVE")  # nothing of the burst can be written
                asyncio.run(burst(gateway, key, 40))
                assert gateway.stop() == 0
        finally:
            locker.close()
        first = gateway.output()
        kept = [int(n) for n in re.findall(r"usage of (\d+) request\(s\) kept in ", first)]
        # Each worker that served kept its own, in a file of its own.
        assert sum(kept) == 40 and len(_spill_files(tmp_path)) == len(kept), first
        _assert_no_canary(canaries, *_spill_files(tmp_path), gateway.output_path)

        with gateway:
            _wait_for_workers(gateway, 2)  # the second start's
            assert _stored(gateway, key) == told.totals() and told.requests == 40
        assert _spill_files(tmp_path) == []
        replayed = re.findall(r"usage of (\d+) request\(s\) from (\d+) spill file\(s\) written",
                              gateway.output()[len(first):])
        assert sum(int(n) for n, _ in replayed) == 40 and sum(int(f) for _, f in replayed) == len(kept)
