"""Metering is exact under concurrency, disconnects and shutdown (issue: keys and usage).

The 500 requests run against the app in this process with scripted backends
(what is billed is the handler's and the meter's business; the clients and
their disconnects are real sockets). The SIGTERM test needs a real process.
"""
from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from privatai.core import tokens
from privatai.core.events import TextDelta
from privatai.core.protocol import parse_chat_request
from tests.fakes import FakeVLLM, Sleep
from tests.gateway import Gateway, LocalGateway
from tests.scripted import ScriptedBackends

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
