"""Routing, capacity and failure handling, with fake backends on real sockets."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from privatai.core.events import TextDelta
from tests.fakes import Drop, FakeBackend, FakeVLLM, Hang, Sleep
from tests.gateway import Gateway

MODEL = "m"


def backend(name: str, fake: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": fake.kind, "url": fake.url, "models": [{"name": MODEL, "upstream": "fake-model"}],
            **extra}


def gateway_for(tmp_path: Path, backends: list[dict[str, Any]], **sections: Any) -> Gateway:
    routing = {"health_interval": 0.3, "failure_threshold": 2, "recovery_time": 1.0, **sections.pop("routing", {})}
    return Gateway(tmp_path, {"backends": backends, "routing": routing, **sections})


async def sse(client: httpx.AsyncClient, gateway: Gateway, key: str, body: dict[str, Any]) -> list[str]:
    """All SSE lines (data and comments) of one streamed request."""
    lines = []
    async with client.stream("POST", f"{gateway.base_url}/chat/completions", json={**body, "stream": True},
                             headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
    return lines


def chat_body(text: str = "Hi") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


def usage_of(gateway: Gateway, key: str) -> dict[str, Any]:
    return httpx.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()


async def test_killed_replica_is_skipped_until_it_recovers(tmp_path: Path) -> None:
    async with FakeVLLM() as a, FakeVLLM() as b:
        gateway = gateway_for(tmp_path, [backend("a", a), backend("b", b)])
        key = gateway.create_key()
        with gateway:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(timeout=30) as client:
                await a.stop()  # killed: connection refused
                results = [await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                             headers=headers) for _ in range(20)]
                assert [r.status_code for r in results] == [200] * 20
                assert all(r.json()["choices"][0]["message"]["content"] for r in results)
                ready = (await client.get(f"{gateway.url}/readyz")).json()
                assert ready["backends"]["a"] != "up" and ready["backends"]["b"] == "up"

                served_by_b = len(b.chat_bodies)
                await a.start()  # back on the same port
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if (await client.get(f"{gateway.url}/readyz")).json()["backends"]["a"] == "up":
                        break
                    await asyncio.sleep(0.2)
                else:
                    pytest.fail("the recovered backend was never probed healthy again")
                # Concurrent requests spread over both replicas again.
                results = await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions",
                                                             json=chat_body(), headers=headers)
                                                 for _ in range(20)))
                assert [r.status_code for r in results] == [200] * 20
                assert a.chat_bodies, "the recovered replica got no traffic"
                assert len(b.chat_bodies) > served_by_b


async def test_failover_before_first_token_on_5xx_and_timeouts(tmp_path: Path) -> None:
    async with FakeVLLM() as a, FakeVLLM() as b:
        fast_timeouts = {"first_token_timeout": 0.5}
        gateway = gateway_for(tmp_path, [backend("a", a, weight=100, **fast_timeouts), backend("b", b, weight=0.01)],
                              routing={"failure_threshold": 10})
        key = gateway.create_key()
        with gateway:
            async with httpx.AsyncClient(timeout=30) as client:
                headers = {"Authorization": f"Bearer {key}"}
                a.fail(500, "boom")
                b.reply(TextDelta("from b"))
                first = await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(), headers=headers)
                assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "from b"
                a.reply(Hang())
                b.reply(TextDelta("from b again"))
                lines = await sse(client, gateway, key, chat_body())
                assert any("from b again" in line for line in lines) and lines[-1] == "data: [DONE]"


async def test_backend_dying_mid_stream_gives_in_band_error_and_records_usage(tmp_path: Path) -> None:
    async with FakeVLLM() as a, FakeVLLM() as b:
        gateway = gateway_for(tmp_path, [backend("a", a, weight=100), backend("b", b, weight=0.01)])
        key = gateway.create_key()
        with gateway:
            a.reply(TextDelta("Hello"), TextDelta(" there"), Sleep(0.1), Drop())
            async with httpx.AsyncClient(timeout=30) as client:
                lines = await sse(client, gateway, key, chat_body("Tell me"))
            data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in data if c.get("choices")) \
                == "Hello there"
            assert data[-1]["error"]["type"] == "backend_error"
            assert lines[-1] == "data: [DONE]"
            assert not b.chat_bodies, "no retry after the first token"
            usage = usage_of(gateway, key)
            assert usage["requests"] == 1 and usage["completion_tokens"] == 2  # "Hello", " there"


async def test_overload_gives_only_200_and_429_with_retry_after(tmp_path: Path) -> None:
    async with FakeVLLM() as fake:
        gateway = gateway_for(tmp_path, [backend("a", fake, max_concurrency=2)],
                              routing={"queue_timeout": 0.5, "max_queue": 4})
        key = gateway.create_key()
        for _ in range(400):
            fake.reply(Sleep(0.3), TextDelta("ok"))
        with gateway:
            assert gateway.proc is not None
            process = psutil.Process(gateway.proc.pid)
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=500)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                async def one(stream: bool) -> httpx.Response:
                    return await client.post(f"{gateway.base_url}/chat/completions",
                                             json={**chat_body(), "stream": stream}, headers=headers)

                warm = await asyncio.gather(*(one(i % 2 == 0) for i in range(40)))
                rss_before = process.memory_info().rss
                responses = await asyncio.gather(*(one(i % 2 == 0) for i in range(300)))
                rss_after = process.memory_info().rss
            statuses = {r.status_code for r in warm + responses}
            assert statuses <= {200, 429}, statuses
            assert 200 in statuses and 429 in statuses
            for response in warm + responses:
                if response.status_code == 429:
                    assert int(response.headers["Retry-After"]) >= 1
                    assert response.json()["error"]["code"] == "capacity_exceeded"
            # Bounded queue: 300 more requests at once do not grow the process much.
            assert rss_after - rss_before < 30 * 1024 * 1024


async def test_client_disconnect_closes_upstream_releases_slot_and_meters(tmp_path: Path) -> None:
    async with FakeVLLM() as fake:
        gateway = gateway_for(tmp_path, [backend("a", fake, max_concurrency=1)], routing={"queue_timeout": 2})
        key = gateway.create_key()
        fake.reply(TextDelta("one"), TextDelta(" two"), Sleep(30), TextDelta(" never"))
        with gateway:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(timeout=30) as client:
                received = []
                async with client.stream("POST", f"{gateway.base_url}/chat/completions",
                                         json={**chat_body(), "stream": True}, headers=headers) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            received.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
                        if len(received) == 2:
                            break
                # Leaving the block closed our connection.
                closed_after = await fake.wait_closed(2.0)
                assert closed_after < 0.5
                assert "".join(received) == "one two"
                # The slot is free again: with max_concurrency 1 this would wait otherwise.
                fake.reply(TextDelta("next"))
                again = await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(), headers=headers)
                assert again.status_code == 200
                await asyncio.sleep(1.5)  # usage is flushed every second
                usage = usage_of(gateway, key)
        assert usage["requests"] == 2
        # The disconnected request is billed for the two tokens it got (+1 for "next").
        assert usage["completion_tokens"] == 2 + 1


async def test_slow_first_token_sends_keep_alive_comments(tmp_path: Path) -> None:
    async with FakeVLLM() as fake:
        gateway = gateway_for(tmp_path, [backend("a", fake)], server={"keepalive_interval": 0.3})
        key = gateway.create_key()
        fake.reply(Sleep(1.5), TextDelta("finally"))
        with gateway:
            async with httpx.AsyncClient(timeout=30) as client:
                lines = await sse(client, gateway, key, chat_body())
    keepalives = [line for line in lines if line.startswith(":")]
    assert len(keepalives) >= 3
    assert lines.index(keepalives[0]) < next(i for i, line in enumerate(lines) if "finally" in line)
    assert lines[-1] == "data: [DONE]"


async def test_reload_under_load_drops_no_stream(tmp_path: Path) -> None:
    async with FakeVLLM() as a, FakeVLLM() as b:
        gateway = gateway_for(tmp_path, [backend("a", a)])
        key = gateway.create_key()
        for _ in range(10):
            a.reply(*[step for i in range(10) for step in (TextDelta(f"t{i} "), Sleep(0.1))])
        with gateway:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
                streams = [asyncio.create_task(sse(client, gateway, key, chat_body())) for _ in range(10)]
                await asyncio.sleep(0.4)
                # Change backend a's settings and add backend b, then reload.
                config = yaml.safe_load(gateway.config_path.read_text())
                config["backends"] = [backend("a", a, weight=2), backend("b", b)]
                gateway.config_path.write_text(yaml.safe_dump(config))
                reload = gateway.cli("reload", "--pid", str(gateway.proc.pid))
                assert "valid" in reload.stdout
                results = await asyncio.gather(*streams)
                for lines in results:
                    assert lines[-1] == "data: [DONE]"
                    text = "".join(json.loads(l[6:])["choices"][0]["delta"].get("content", "")
                                   for l in lines if l.startswith("data: {") and '"choices":[{' in l)
                    assert text == "".join(f"t{i} " for i in range(10))
                # The new backend serves after the reload.
                deadline = time.monotonic() + 5
                while not b.chat_bodies and time.monotonic() < deadline:
                    await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                                       headers={"Authorization": f"Bearer {key}"})
                                           for _ in range(4)))
                assert b.chat_bodies
                # An invalid file keeps the running configuration.
                gateway.config_path.write_text("backends: nonsense\n")
                bad = gateway.cli("reload", "--pid", str(gateway.proc.pid), check=False)
                assert bad.returncode == 2 and "backends" in bad.stderr
                # Even a SIGHUP sent behind the CLI's back keeps the running configuration.
                os.kill(gateway.proc.pid, signal.SIGHUP)
                await asyncio.sleep(0.5)
                assert "reload refused" in gateway.output()
                ok = await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                       headers={"Authorization": f"Bearer {key}"})
                assert ok.status_code == 200
