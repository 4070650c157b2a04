"""Routing, capacity and failure handling through the gateway's HTTP API.

Most tests script their backends in process (tests/scripted.py) and serve the
app in the test's loop on a real port (LocalGateway): failover, the circuit,
keep-alive and reload are the router's and the handler's behaviour, whatever
the wire. Where the wire matters, the backends are fakes on real sockets: a
killed server (connection refused, back on the same port), a client leaving
(the upstream connection must close), and the bounded queue of a real
gateway process (its memory).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from privatai.core.events import TextDelta
from tests.fakes import Drop, FakeBackend, FakeVLLM, Hang, Sleep
from tests.gateway import Gateway, LocalGateway, eventually
from tests.scripted import ScriptedBackends

MODEL = "m"
ROUTING = {"health_interval": 0.3, "failure_threshold": 2, "recovery_time": 1.0}


def backend(name: str, fake: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": fake.kind, "url": fake.url, "models": [{"name": MODEL, "upstream": "fake-model"}],
            **extra}


def config_for(backends: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    routing = {**ROUTING, **sections.pop("routing", {})}
    return {"backends": backends, "routing": routing, **sections}


def local(tmp_path: Path, backends: list[dict[str, Any]], **sections: Any) -> LocalGateway:
    return LocalGateway(tmp_path, config_for(backends, **sections))


async def sse(client: httpx.AsyncClient, gateway: LocalGateway | Gateway, key: str,
              body: dict[str, Any]) -> list[str]:
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


def text_of(lines: list[str]) -> str:
    return "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in lines if line.startswith("data: {") and '"choices":[{' in line)


async def usage_of(client: httpx.AsyncClient, gateway: LocalGateway, key: str) -> dict[str, Any]:
    return (await client.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})).json()


async def readyz(client: httpx.AsyncClient, gateway: LocalGateway) -> dict[str, Any]:
    return (await client.get(f"{gateway.url}/readyz")).json()


# -- in process, scripted backends ------------------------------------------------------


async def test_down_replica_is_skipped_until_it_recovers(tmp_path: Path, scripted: ScriptedBackends) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    gateway = local(tmp_path, [a.entry(MODEL), b.entry(MODEL)])
    key = gateway.create_key()
    async with gateway, httpx.AsyncClient(timeout=30) as client:
        headers = {"Authorization": f"Bearer {key}"}
        a.down = True
        results = [await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(), headers=headers)
                   for _ in range(20)]
        assert [r.status_code for r in results] == [200] * 20
        assert all(r.json()["choices"][0]["message"]["content"] for r in results)
        ready = await readyz(client, gateway)
        assert ready["backends"]["a"] != "up" and ready["backends"]["b"] == "up"
        assert len(b.asked) == 20

        a.down = False
        await eventually(lambda: _is_up(client, gateway, "a"), 15, "a probed healthy again")
        results = await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                                     headers=headers) for _ in range(20)))
        assert [r.status_code for r in results] == [200] * 20
        assert a.asked, "the recovered replica got no traffic"
        assert len(b.asked) > 20


async def _is_up(client: httpx.AsyncClient, gateway: LocalGateway, name: str) -> bool:
    return (await readyz(client, gateway))["backends"][name] == "up"


async def test_failover_before_first_token_on_5xx_and_timeouts(tmp_path: Path, scripted: ScriptedBackends) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    gateway = local(tmp_path, [a.entry(MODEL, weight=100, first_token_timeout=0.5), b.entry(MODEL, weight=0.01)],
                    routing={"failure_threshold": 10})
    key = gateway.create_key()
    async with gateway, httpx.AsyncClient(timeout=30) as client:
        headers = {"Authorization": f"Bearer {key}"}
        a.fail(500, "boom")
        b.reply(TextDelta("from b"))
        first = await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(), headers=headers)
        assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "from b"
        a.reply(Hang())
        b.reply(TextDelta("from b again"))
        lines = await sse(client, gateway, key, chat_body())
        assert any("from b again" in line for line in lines) and lines[-1] == "data: [DONE]"
        # Both requests went to a first (its weight), then failed over.
        assert len(a.asked) == 2 and len(b.asked) == 2


async def test_backend_dying_mid_stream_gives_in_band_error_and_records_usage(
        tmp_path: Path, scripted: ScriptedBackends) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    gateway = local(tmp_path, [a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)])
    key = gateway.create_key()
    a.reply(TextDelta("Hello"), TextDelta(" there"), Sleep(0.1), Drop())
    async with gateway, httpx.AsyncClient(timeout=30) as client:
        lines = await sse(client, gateway, key, chat_body("Tell me"))
        data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in data if c.get("choices")) \
            == "Hello there"
        assert data[-1]["error"]["type"] == "backend_error"
        assert lines[-1] == "data: [DONE]"
        assert not b.asked, "no retry after the first token"
        usage = await eventually(lambda: _used(client, gateway, key, requests=1), 5, "usage recorded")
        assert usage["requests"] == 1 and usage["completion_tokens"] == 2  # "Hello", " there"


async def _used(client: httpx.AsyncClient, gateway: LocalGateway, key: str, requests: int) -> dict[str, Any] | None:
    usage = await usage_of(client, gateway, key)
    return usage if usage["requests"] >= requests else None


async def test_slow_first_token_sends_keep_alive_comments(tmp_path: Path, scripted: ScriptedBackends) -> None:
    a = scripted.backend("a")
    gateway = local(tmp_path, [a.entry(MODEL)], server={"keepalive_interval": 0.3})
    key = gateway.create_key()
    a.reply(Sleep(1.5), TextDelta("finally"))
    async with gateway, httpx.AsyncClient(timeout=30) as client:
        lines = await sse(client, gateway, key, chat_body())
    keepalives = [line for line in lines if line.startswith(":")]
    assert len(keepalives) >= 3
    assert lines.index(keepalives[0]) < next(i for i, line in enumerate(lines) if "finally" in line)
    assert lines[-1] == "data: [DONE]"


async def test_full_backends_queue_then_429_with_retry_after(tmp_path: Path, scripted: ScriptedBackends) -> None:
    """The bounded queue in detail: at most max_concurrency streams reach the
    backend, queued requests are served in turn, the rest get a 429."""
    a = scripted.backend("a")
    gateway = local(tmp_path, [a.entry(MODEL, max_concurrency=2)], routing={"queue_timeout": 0.5, "max_queue": 4})
    key = gateway.create_key()
    for _ in range(40):
        a.reply(Sleep(0.3), TextDelta("ok"))
    async with gateway, httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        responses = await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions",
                                                       json={**chat_body(), "stream": i % 2 == 0}, headers=headers)
                                           for i in range(20)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    # Two at a time, 0.3 s each, for up to 0.5 s in the queue: the two running
    # and up to four queued are served, not the other fourteen.
    assert 2 <= statuses.count(200) <= 6 and a.peak_in_flight == 2
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "capacity_exceeded"


async def test_reload_under_load_drops_no_stream(tmp_path: Path, scripted: ScriptedBackends,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    gateway = local(tmp_path, [a.entry(MODEL)])
    key = gateway.create_key()
    for _ in range(10):
        a.reply(*[step for i in range(10) for step in (TextDelta(f"t{i} "), Sleep(0.1))])
    async with gateway, httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
        streams = [asyncio.create_task(sse(client, gateway, key, chat_body())) for _ in range(10)]
        await asyncio.sleep(0.4)
        # Change backend a's settings and add backend b, then reload: the
        # CLI validates the file and sends SIGHUP, here to this very process.
        config = yaml.safe_load(gateway.config_path.read_text())
        config["backends"] = [a.entry(MODEL, weight=2), b.entry(MODEL)]
        gateway.write_config(config)
        reload = await gateway.cli("reload", "--pid", str(os.getpid()))
        assert "valid" in reload.stdout
        results = await asyncio.gather(*streams)
        for lines in results:
            assert lines[-1] == "data: [DONE]"
            assert text_of(lines) == "".join(f"t{i} " for i in range(10))

        # The new backend serves after the reload.
        async def b_served() -> bool:
            await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                               headers={"Authorization": f"Bearer {key}"}) for _ in range(4)))
            return bool(b.asked)

        await eventually(b_served, 5, "backend b served")
        # An invalid file keeps the running configuration.
        gateway.config_path.write_text("backends: nonsense\n")
        bad = await gateway.cli("reload", "--pid", str(os.getpid()))
        assert bad.returncode == 2 and "backends" in bad.stderr
        # Even a SIGHUP sent behind the CLI's back keeps the running configuration.
        with caplog.at_level(logging.ERROR, logger="privatai"):
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: _logged(caplog, "reload refused"), 5, "the reload refused")
        ok = await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                               headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# -- real sockets ------------------------------------------------------------------------


async def test_killed_replica_is_skipped_until_it_recovers(tmp_path: Path) -> None:
    """A backend server that is killed (connection refused) and comes back on
    its port: failover and recovery over real connections."""
    async with FakeVLLM() as a, FakeVLLM() as b:
        gateway = local(tmp_path, [backend("a", a), backend("b", b)])
        key = gateway.create_key()
        async with gateway, httpx.AsyncClient(timeout=30) as client:
            headers = {"Authorization": f"Bearer {key}"}
            await a.stop()  # killed: connection refused
            results = [await client.post(f"{gateway.base_url}/chat/completions", json=chat_body(),
                                         headers=headers) for _ in range(20)]
            assert [r.status_code for r in results] == [200] * 20
            assert all(r.json()["choices"][0]["message"]["content"] for r in results)
            ready = await readyz(client, gateway)
            assert ready["backends"]["a"] != "up" and ready["backends"]["b"] == "up"

            served_by_b = len(b.chat_bodies)
            await a.start()  # back on the same port
            await eventually(lambda: _is_up(client, gateway, "a"), 15, "a probed healthy again")
            # Concurrent requests spread over both replicas again.
            results = await asyncio.gather(*(client.post(f"{gateway.base_url}/chat/completions",
                                                         json=chat_body(), headers=headers)
                                             for _ in range(20)))
            assert [r.status_code for r in results] == [200] * 20
            assert a.chat_bodies, "the recovered replica got no traffic"
            assert len(b.chat_bodies) > served_by_b


async def test_client_disconnect_closes_upstream_releases_slot_and_meters(tmp_path: Path) -> None:
    async with FakeVLLM() as fake:
        gateway = local(tmp_path, [backend("a", fake, max_concurrency=1)], routing={"queue_timeout": 2})
        key = gateway.create_key()
        fake.reply(TextDelta("one"), TextDelta(" two"), Sleep(30), TextDelta(" never"))
        async with gateway, httpx.AsyncClient(timeout=30) as client:
            headers = {"Authorization": f"Bearer {key}"}
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
            usage = await eventually(lambda: _used(client, gateway, key, requests=2), 5, "usage recorded")
    assert usage["requests"] == 2
    # The disconnected request is billed for the two tokens it got (+1 for "next").
    assert usage["completion_tokens"] == 2 + 1


async def test_overload_gives_only_200_and_429_with_retry_after(tmp_path: Path) -> None:
    """A real gateway process under 340 requests: only 200 and 429, and the
    bounded queue keeps its memory flat."""
    async with FakeVLLM() as fake:
        gateway = Gateway(tmp_path, config_for([backend("a", fake, max_concurrency=2)],
                                               routing={"queue_timeout": 0.5, "max_queue": 4}))
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
