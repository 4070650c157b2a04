"""Metering is exact under concurrency, disconnects and shutdown (issue: keys and usage).

The 500 requests run against the app in this process with scripted backends
(what is billed is the handler's and the meter's business; the clients and
their disconnects are real sockets). The SIGTERM test needs a real process.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import openai

from privatai.core import tokens
from privatai.core.events import TextDelta
from privatai.core.protocol import parse_chat_request
from tests.fakes import FakeVLLM, Sleep
from tests.gateway import Gateway, LocalGateway
from tests.scripted import ScriptedBackends
from tests.services import PASSWORD_ENV, PostgreSQL

SLOW_STEPS = (TextDelta("alpha"), Sleep(0.8), TextDelta(" beta"), Sleep(0.8), TextDelta(" gamma"))
# For clients that leave after the first token: the pause is far longer than
# any scheduling lag, so what the server delivered is exactly what they read.
CUT_STEPS = (TextDelta("alpha"), Sleep(20), TextDelta(" beta"))


def config(fast: FakeVLLM, slow: FakeVLLM) -> dict[str, Any]:
    return {"backends": [
        {"name": "fast", "kind": "vllm", "url": fast.url, "max_concurrency": 1000,
         "models": [{"name": "fast", "upstream": "fake-model"}]},
        {"name": "slow", "kind": "vllm", "url": slow.url, "max_concurrency": 1000,
         "models": [{"name": "slow", "upstream": "fake-model"}]}],
        "server": {"grace_period": 30}}


def body(i: int, model: str, stream: bool, include_usage: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"model": model, "stream": stream,
                            "messages": [{"role": "system", "content": "You are terse."},
                                         {"role": "user", "content": f"Request number {i}, please answer."}]}
    if include_usage:
        data["stream_options"] = {"include_usage": True}
    return data


async def streamed(client: httpx.AsyncClient, url: str, headers: dict[str, str], data: dict[str, Any],
                   cut_after: int | None = None) -> tuple[int, int]:
    """(prompt, completion) tokens this client was billed for, as it can tell."""
    text = []
    async with client.stream("POST", url, json=data, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                return chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                text.append(chunk["choices"][0]["delta"].get("content") or "")
            if cut_after is not None and len([t for t in text if t]) == cut_after:
                break
    # Cut off by us: billed for the prompt and for what was delivered, counted with tiktoken.
    prompt = tokens.count_prompt(parse_chat_request(json.dumps(data).encode()))
    return prompt, tokens.count_text("".join(text))


async def test_500_requests_over_20_keys_are_metered_exactly(tmp_path: Path, scripted: ScriptedBackends) -> None:
    fast, slow = scripted.backend("fast"), scripted.backend("slow")
    for _ in range(60):
        slow.reply(*CUT_STEPS, usage=(99, 2))
    gateway = LocalGateway(tmp_path, {
        "backends": [fast.entry("fast", max_concurrency=1000), slow.entry("slow", max_concurrency=1000)],
        "server": {"grace_period": 30}})
    keys = [gateway.create_key(f"acct{i % 5}") for i in range(20)]
    url = f"{gateway.base_url}/chat/completions"
    billed: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
    async with gateway, httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            key = keys[i % 20]
            headers = {"Authorization": f"Bearer {key}"}
            if i % 10 == 9:    # leaves after the first token
                prompt, completion = await streamed(client, url, headers, body(i, "slow", True), cut_after=1)
            elif i % 3 == 0:
                response = await client.post(url, json=body(i, "fast", False), headers=headers)
                assert response.status_code == 200
                usage = response.json()["usage"]
                prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
            else:
                prompt, completion = await streamed(client, url, headers, body(i, "fast", True, i % 3 == 1))
            totals = billed[key]
            totals[0] += 1
            totals[1] += prompt
            totals[2] += completion

        await asyncio.gather(*(one(i) for i in range(500)))
    # Stopped as a server stops (the last disconnects noticed, usage flushed);
    # a fresh start reads what was stored.
    async with LocalGateway(tmp_path, gateway.config) as restarted, httpx.AsyncClient(timeout=30) as client:
        for key in keys:
            stored = (await client.get(f"{restarted.base_url}/usage",
                                       headers={"Authorization": f"Bearer {key}"})).json()
            assert [stored["requests"], stored["prompt_tokens"], stored["completion_tokens"]] \
                == billed[key], key[:12]
    assert sum(t[0] for t in billed.values()) == 500
    assert slow.in_flight == 0 and all(record.client_closed for record in slow.streams)


async def test_sigterm_during_open_streams_loses_no_usage(tmp_path: Path) -> None:
    async with FakeVLLM() as fast, FakeVLLM() as slow:
        for _ in range(20):
            slow.reply(*SLOW_STEPS, usage=(40, 3))
        gateway = Gateway(tmp_path, config(fast, slow))
        key = gateway.create_key()
        headers = {"Authorization": f"Bearer {key}"}
        gateway.start()
        url = f"{gateway.base_url}/chat/completions"
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
            streams = [asyncio.create_task(streamed(client, url, headers, body(i, "slow", True))) for i in range(20)]
            while len(slow.streams) < 20:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*streams)
        assert await asyncio.to_thread(gateway.proc.wait, 60) == 0
        assert results == [(40, 3)] * 20  # every stream finished with the backend's usage
        gateway.proc = None
        # A restart (in this process) reads what the stopped one stored.
        async with LocalGateway(tmp_path / "restart", gateway.config) as restarted, \
                httpx.AsyncClient(timeout=10) as client:
            stored = (await client.get(f"{restarted.base_url}/usage", headers=headers)).json()
        assert (stored["requests"], stored["prompt_tokens"], stored["completion_tokens"]) == (20, 800, 60)


async def test_absurd_backend_usage_blocks_no_other_key(tmp_path: Path) -> None:
    """A backend reports more than 2**63 prompt tokens and a negative completion:
    the adapters take that as no report and count the request instead, the
    client is told those counts and the store keeps exactly them, and every
    other key's usage is still exact in /usage and survives a restart.
    No periodic flush runs meanwhile: /usage writes what is pending first."""
    async with FakeVLLM() as fast, FakeVLLM() as slow:
        fast.reply(TextDelta("hi"), usage=(2**63 + 5, -7))
        gateway = Gateway(tmp_path, {**config(fast, slow), "store": {"flush_interval": 600}})
        liar = {"Authorization": f"Bearer {gateway.create_key('a')}"}
        honest = {"Authorization": f"Bearer {gateway.create_key('b')}"}
        url = f"{gateway.base_url}/chat/completions"
        told = [0, 0, 0]
        with gateway:
            async with httpx.AsyncClient(timeout=30) as client:
                lied = await client.post(url, json=body(0, "fast", False), headers=liar)
                assert lied.status_code == 200
                counted = lied.json()["usage"]
                assert 0 < counted["prompt_tokens"] < 2**31 and 0 <= counted["completion_tokens"] < 2**31
                for i in (1, 2):
                    usage = (await client.post(url, json=body(i, "fast", False), headers=honest)).json()["usage"]
                    told = [told[0] + 1, told[1] + usage["prompt_tokens"], told[2] + usage["completion_tokens"]]
                    stored = await client.get(f"{gateway.base_url}/usage", headers=honest)
                    assert stored.status_code == 200
                    assert [stored.json()[k] for k in ("requests", "prompt_tokens", "completion_tokens")] == told
                clamped = await client.get(f"{gateway.base_url}/usage", headers=liar)
                assert clamped.status_code == 200
                assert clamped.json()["requests"] == 1
                assert [clamped.json()[k] for k in ("prompt_tokens", "completion_tokens")] == \
                    [counted["prompt_tokens"], counted["completion_tokens"]]
        # The honest usage written at shutdown is there after a restart.
        with gateway:
            stored = httpx.get(f"{gateway.base_url}/usage", headers=honest, timeout=10).json()
        assert [stored[k] for k in ("requests", "prompt_tokens", "completion_tokens")] == told


# The README's bound: a crash loses at most the usage of the last
# store.flush_interval seconds plus that of a write in progress. A write of a
# few rows takes milliseconds; WRITE_IN_PROGRESS allows for a loaded 2-core
# machine (and the event loop's lag under this load) and is the only slack.
FLUSH_INTERVAL = 0.5
WRITE_IN_PROGRESS = 0.5


async def test_sigkill_under_load_loses_at_most_the_flush_interval(tmp_path: Path) -> None:
    async with FakeVLLM() as fast, FakeVLLM() as slow:
        gateway = Gateway(tmp_path, {**config(fast, slow), "store": {"flush_interval": FLUSH_INTERVAL}})
        keys = [{"Authorization": f"Bearer {gateway.create_key(f'acct{i}')}"} for i in range(4)]
        workers = 16
        gateway.start()
        url = f"{gateway.base_url}/chat/completions"
        answered: list[tuple[float, int, int, int]] = []  # when, key, prompt, completion
        killed = asyncio.Event()
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=workers)) as client:
            async def worker(i: int) -> None:
                while not killed.is_set():
                    try:
                        response = await client.post(url, json=body(i, "fast", False), headers=keys[i % 4])
                    except httpx.HTTPError:
                        return  # the server is gone
                    usage = response.json()["usage"]
                    answered.append((time.monotonic(), i % 4, usage["prompt_tokens"], usage["completion_tokens"]))

            tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
            await asyncio.sleep(3.0)
            assert gateway.proc is not None
            gateway.proc.kill()
            kill_time = time.monotonic()
            killed.set()
            await asyncio.gather(*tasks)
        await asyncio.to_thread(gateway.proc.wait, 10)
        gateway.proc = None
        assert len(answered) > 50, "too little load to test anything"

        with gateway:
            stored = [httpx.get(f"{gateway.base_url}/usage", headers=headers, timeout=10).json()
                      for headers in keys]
        safe = kill_time - FLUSH_INTERVAL - WRITE_IN_PROGRESS
        for k in range(4):
            told = [(when, p, c) for when, key, p, c in answered if key == k]
            must = [(p, c) for when, p, c in told if when < safe]
            # Everything answered before the bound is stored...
            assert stored[k]["requests"] >= len(must)
            assert stored[k]["prompt_tokens"] >= sum(p for p, _ in must)
            assert stored[k]["completion_tokens"] >= sum(c for _, c in must)
            # ...and nothing beyond what was answered, or recorded for a request
            # still in flight when the process died (one per worker of the key).
            in_flight = workers // 4
            assert stored[k]["requests"] <= len(told) + in_flight


async def test_a_gateway_on_postgresql_meters_exactly(tmp_path: Path, postgresql: PostgreSQL) -> None:
    """The same gateway on PostgreSQL: keys made by the CLI, 40 answers through
    the openai SDK, /usage and a restart agree with what the clients were told."""
    database = postgresql.new_database()
    try:
        async with FakeVLLM() as fast, FakeVLLM() as slow:
            store = {"url": postgresql.url(database), "password_env": PASSWORD_ENV}
            gateway = Gateway(tmp_path, {**config(fast, slow), "store": store})
            keys = [gateway.create_key(f"acct{i % 2}") for i in range(4)]
            told: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
            with gateway:
                async def one(i: int) -> None:
                    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=keys[i % 4], max_retries=0)
                    messages = body(i, "fast", False)["messages"]
                    if i % 2:
                        stream = await client.chat.completions.create(
                            model="fast", messages=messages, stream=True, stream_options={"include_usage": True})
                        usage = [chunk.usage async for chunk in stream if chunk.usage][0]
                    else:
                        usage = (await client.chat.completions.create(model="fast", messages=messages)).usage
                    assert usage is not None
                    totals = told[keys[i % 4]]
                    totals[0] += 1
                    totals[1] += usage.prompt_tokens
                    totals[2] += usage.completion_tokens

                await asyncio.gather(*(one(i) for i in range(40)))
                async with httpx.AsyncClient(timeout=10) as http:
                    for key in keys:
                        stored = (await http.get(f"{gateway.base_url}/usage",
                                                 headers={"Authorization": f"Bearer {key}"})).json()
                        assert [stored["requests"], stored["prompt_tokens"], stored["completion_tokens"]] \
                            == told[key], key[:12]
            with gateway:  # a restart reads it all back from PostgreSQL
                for key in keys:
                    stored = httpx.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"},
                                       timeout=10).json()
                    assert [stored["requests"], stored["prompt_tokens"], stored["completion_tokens"]] == told[key]
            total = [sum(t[i] for t in told.values()) for i in range(3)]
            assert gateway.cli("usage").stdout.splitlines()[-1].split()[:4] == [
                "TOTAL", *(f"{n:,}" for n in total)]
    finally:
        postgresql.drop_database(database)
