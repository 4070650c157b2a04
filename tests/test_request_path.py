"""The request path under hostile or awkward clients (issue 12): the real
gateway in front of a fake vLLM on real sockets, served in the test's loop
(LocalGateway), and as its own process where the process is what is looked
at (its event loop while it counts, its access log).

Bodies that used to be 500s, a queue wait that used to end in a 200 with an
in-band error, token counting that used to stall the event loop, a visitor
who left before the first token and was charged nothing, a web chat that took
any body from any site, and the one access line each request must leave.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from privatai.core import tokens
from privatai.core.events import TextDelta
from privatai.core.protocol import parse_chat_request
from tests.fakes import Drop, ErrorLine, FakeVLLM, Sleep
from tests.gateway import Gateway, LocalGateway

MODEL = "m"
VISITOR = "203.0.113.9"


def config(fake: FakeVLLM, **sections: Any) -> dict[str, Any]:
    backend = {"name": "a", "kind": "vllm", "url": fake.url, "models": [{"name": MODEL, "upstream": "fake-model"}],
               **sections.pop("backend", {})}
    web_chat = {"trusted_proxies": ["127.0.0.1"], "models": [MODEL], **sections.pop("web_chat", {})}
    return {"backends": [backend], "default_model": MODEL, "web_chat": web_chat, **sections}


def chat(content: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM() as backend:
        yield backend


async def leave_after_upload(gateway: LocalGateway, fake: FakeVLLM, path: str, body: dict[str, Any],
                             headers: dict[str, str]) -> None:
    """Send a streamed chat on a raw socket, wait until the backend has the
    request, then close the connection before any token came back."""
    data = json.dumps({**body, "stream": True}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{gateway.port}",
                                                 "Content-Type": "application/json",
                                                 "Content-Length": str(len(data)), **headers}.items())
    seen = len(fake.chat_bodies)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + data)
    await writer.drain()
    deadline = time.monotonic() + 20
    while len(fake.chat_bodies) == seen:
        assert time.monotonic() < deadline, "the backend never got the request"
        await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()
    await fake.wait_closed(10)


# -- bodies that were 500s --------------------------------------------------

BAD_BODIES = [
    (chat(max_tokens=2**64), "max_tokens"),
    (chat(seed=2**64), "seed"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"maximum": 2**64}}}]),
     "tools[0].function.parameters"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "user": %s}' % ("[" * 1000 + "]" * 1000), "user" + "[0]" * 63),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": json.loads("[" * 250 + "]" * 250)}}}]),
     "tools[0].function.parameters"),
    (chat(response_format={"type": "json_schema", "json_schema": {"schema": json.loads("[" * 250 + "]" * 250)}}),
     "response_format.json_schema"),
    (chat(tool_choice={"type": "function", "function": json.loads("[" * 250 + "]" * 250)}), "tool_choice"),
]


async def test_out_of_bounds_bodies_are_400_naming_the_field_on_the_api_and_the_web_chat(
        tmp_path: Path, fake: FakeVLLM, caplog: pytest.LogCaptureFixture) -> None:
    gateway = LocalGateway(tmp_path, config(fake))
    key = gateway.create_key()
    async with gateway:
        caplog.set_level(logging.DEBUG, logger="privatai")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            for body, param in BAD_BODIES:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                for path, headers in (("/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
                                      ("/webchat/api/chat/completions", {"X-Forwarded-For": VISITOR})):
                    streamed = data.replace(b'"messages"', b'"stream": true, "messages"', 1)
                    response = await client.post(path, content=streamed,
                                                 headers={**headers, "Content-Type": "application/json"})
                    assert response.status_code == 400, (path, param, response.text[:300])
                    error = response.json()["error"]
                    assert error["type"] == "invalid_request_error" and error["param"] == param, (path, error)
    assert fake.chat_bodies == []
    # Positive control: the gateway's records do reach the capture (its access lines).
    statuses = [getattr(record, "fields", {}).get("status") for record in caplog.records
                if record.name == "privatai.access"]
    assert statuses == [400] * 2 * len(BAD_BODIES)
    assert not [record for record in caplog.records if "request failed" in record.getMessage()]


# -- a queue wait ends in a real 429 ------------------------------------------

async def test_a_streamed_request_that_waits_out_the_queue_gets_a_real_429(tmp_path: Path, fake: FakeVLLM) -> None:
    # Keep-alive comments come every 0.2 s, well before the 1 s queue timeout.
    gateway = LocalGateway(tmp_path, config(fake, backend={"max_concurrency": 1}, server={"keepalive_interval": 0.2},
                                            routing={"queue_timeout": 1.0}))
    key = gateway.create_key()
    fake.reply(Sleep(4), TextDelta("first"))
    async with gateway:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, headers=headers) as client:
            holder = asyncio.create_task(client.post("/chat/completions", json=chat(stream=True)))
            while not fake.chat_bodies:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as queued:
                body = await queued.aread()
            waited = time.monotonic() - started
            assert queued.status_code == 429, body[:200]
            assert queued.headers["content-type"] == "application/json"
            assert int(queued.headers["retry-after"]) >= 1
            assert json.loads(body)["error"]["code"] == "capacity_exceeded"
            assert 0.9 <= waited < 3
            # The backend did not see it; the request holding the slot is unharmed.
            assert len(fake.chat_bodies) == 1
            held = await holder
            assert held.status_code == 200 and "first" in held.text


async def test_keep_alive_comments_once_a_backend_has_the_request(tmp_path: Path, fake: FakeVLLM) -> None:
    gateway = LocalGateway(tmp_path, config(fake, server={"keepalive_interval": 0.2}))
    key = gateway.create_key()
    fake.reply(Sleep(1.2), TextDelta("finally"))
    async with gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as response:
                lines = [line async for line in response.aiter_lines() if line]
    assert response.status_code == 200
    assert lines.count(": keep-alive") >= 3
    assert lines.index(": keep-alive") < next(i for i, line in enumerate(lines) if "finally" in line)
    assert lines[-1] == "data: [DONE]"


# -- counting never stalls the event loop -------------------------------------

async def test_healthz_answers_while_a_big_cut_off_prompt_is_counted(tmp_path: Path, fake: FakeVLLM) -> None:
    # 3.5 MB of request ids, as in a pasted log: about 2 million tokens, and
    # seconds of tiktoken on this machine.
    ids = random.Random(0)
    body = chat(" ".join(ids.randbytes(16).hex() for _ in range(106_000)))
    gateway = Gateway(tmp_path, config(fake))
    key = gateway.create_key()
    # The backend dies after one token: no usage from it, so the gateway
    # counts the 3.5 MB prompt itself, right after the client got [DONE].
    fake.reply(TextDelta("Sure"), Sleep(0.2), Drop())
    with gateway:
        headers = {"Authorization": f"Bearer {key}"}
        # Two clients: Sanic reads the next request of a connection only once
        # the previous one is over, so the probes need a connection of their own.
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, headers=headers) as chatter, \
                httpx.AsyncClient(base_url=gateway.url, timeout=60, headers=headers) as client:
            await client.get("/healthz")  # connected before the count starts
            streamed = await chatter.post("/v1/chat/completions", json={**body, "stream": True})
            assert '"error"' in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
            latencies = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                latencies.append(time.monotonic() - started)
                usage = (await client.get("/v1/usage")).json()
                if usage["requests"] == 1 and len(latencies) >= 5:
                    break
                await asyncio.sleep(0.02)
    expected = tokens.count_prompt(parse_chat_request(json.dumps(body).encode()))
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (expected, 1)
    assert max(latencies) < 0.5, f"/healthz took up to {max(latencies):.2f} s while the prompt was counted"


async def test_a_client_that_leaves_a_stream_with_a_big_prompt_stops_the_upstream(
        tmp_path: Path, fake: FakeVLLM) -> None:
    # A body larger than Sanic's 64 KB read buffer used to leave the socket
    # unread, so the gateway never saw the client go and the backend generated on.
    gateway = LocalGateway(tmp_path, config(fake))
    key = gateway.create_key()
    fake.reply(TextDelta("Sure"), Sleep(30), TextDelta(" never"))
    async with gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            async with client.stream("POST", "/chat/completions",
                                     json=chat("word " * 60_000, stream=True)) as response:
                async for line in response.aiter_lines():
                    if "Sure" in line:
                        break
            assert await fake.wait_closed(5) < 1.0
            deadline = time.monotonic() + 10
            while (usage := (await client.get("/usage")).json())["requests"] == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    assert usage["completion_tokens"] == 1


# -- the prompt is charged once a backend took the request --------------------

async def test_a_visitor_who_leaves_before_the_first_token_is_charged_the_prompt(
        tmp_path: Path, fake: FakeVLLM) -> None:
    long_prompt = "Please think about this carefully. " * 300  # about 1,800 tokens
    gateway = LocalGateway(tmp_path, config(fake, web_chat={"tokens_per_day": 1000}))
    fake.reply(Sleep(30), TextDelta("late"))
    async with gateway:
        await leave_after_upload(gateway, fake, "/webchat/api/chat/completions", chat(long_prompt),
                                 {"X-Forwarded-For": VISITOR})
        fake.reply(TextDelta("hello"))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            deadline = time.monotonic() + 10
            while True:  # the slot is freed once the first request's usage is settled
                again = await client.post("/webchat/api/chat/completions", json=chat("Hi", stream=True),
                                          headers={"X-Forwarded-For": VISITOR})
                if again.status_code != 429 or again.json()["error"]["code"] != "concurrent_streams_exceeded":
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    assert again.status_code == 429, again.text[:200]
    assert again.json()["error"]["code"] == "tokens_per_day_exceeded"


async def test_an_api_client_that_leaves_before_the_first_token_is_billed_the_prompt(
        tmp_path: Path, fake: FakeVLLM) -> None:
    gateway = LocalGateway(tmp_path, config(fake))
    key = gateway.create_key()
    body = chat("Count me, even though I leave.")
    fake.reply(Sleep(30), TextDelta("late"))
    async with gateway:
        await leave_after_upload(gateway, fake, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"})
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            deadline = time.monotonic() + 10
            while (usage := (await client.get("/usage")).json())["requests"] == 0:
                assert time.monotonic() < deadline, usage
                await asyncio.sleep(0.1)
    prompt = tokens.count_prompt(parse_chat_request(json.dumps(body).encode()))
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, prompt, 0)


async def test_a_request_that_leaves_while_queued_is_not_billed(tmp_path: Path, fake: FakeVLLM) -> None:
    gateway = LocalGateway(tmp_path, config(fake, backend={"max_concurrency": 1}, routing={"queue_timeout": 5}))
    key = gateway.create_key()
    fake.reply(Sleep(2), TextDelta("held"))
    async with gateway:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, headers=headers) as client:
            holder = asyncio.create_task(client.post("/chat/completions", json=chat()))
            while not fake.chat_bodies:
                await asyncio.sleep(0.02)
            queued = asyncio.create_task(client.post("/chat/completions", json=chat(stream=True)))
            await asyncio.sleep(0.5)
            queued.cancel()  # leaves while waiting for the slot: no backend read its prompt
            assert (await holder).status_code == 200
            await asyncio.sleep(1.5)
            usage = (await client.get("/usage")).json()
    assert usage["requests"] == 1 and len(fake.chat_bodies) == 1


# -- the web chat takes JSON from its own page only ----------------------------

async def test_the_web_chat_takes_only_json_from_its_own_origin(tmp_path: Path, fake: FakeVLLM) -> None:
    gateway = LocalGateway(tmp_path, config(fake, web_chat={"requests_per_minute": 100}))
    body = json.dumps(chat("Hi", stream=True))
    async with gateway:
        own = f"http://127.0.0.1:{gateway.port}"
        refused = [
            ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
            ({}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "cross_origin_request"),
            ({"Content-Type": "application/json", "Origin": "null"}, 403, "cross_origin_request"),
            ({"Content-Type": "application/json", "Origin": "http://[bad"}, 403, "cross_origin_request"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site", "Origin": own}, 403,
             "cross_origin_request"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403, "cross_origin_request"),
        ]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            for headers, status, code in refused:
                response = await client.post("/webchat/api/chat/completions", content=body,
                                             headers={**headers, "X-Forwarded-For": VISITOR})
                assert response.status_code == status, (headers, response.text[:200])
                assert response.json()["error"]["code"] == code
            assert fake.chat_bodies == []
            accepted = [
                {"Content-Type": "application/json; charset=utf-8", "Origin": own, "Sec-Fetch-Site": "same-origin"},
                {"Content-Type": "application/json"},  # not a browser: no Origin, no Sec-Fetch-Site
            ]
            for headers in accepted:
                response = await client.post("/webchat/api/chat/completions", content=body,
                                             headers={**headers, "X-Forwarded-For": VISITOR})
                assert response.status_code == 200, (headers, response.text[:200])
                assert response.text.endswith("data: [DONE]\n\n")
    assert len(fake.chat_bodies) == 2


# -- one access line per request -----------------------------------------------

ACCESS = re.compile(r"privatai\.access: request (.*)$", re.MULTILINE)


def requests_logged(gateway: Gateway) -> list[str]:
    """Access lines, without those of the test helper waiting for /healthz."""
    return [line for line in ACCESS.findall(gateway.output()) if "route=/healthz" not in line]


async def test_every_request_leaves_exactly_one_access_line(tmp_path: Path, fake: FakeVLLM) -> None:
    gateway = Gateway(tmp_path, config(fake))
    key = gateway.create_key()
    with gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            fake.reply(TextDelta("whole"))
            assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
            fake.reply(TextDelta("streamed"))
            assert (await client.post("/v1/chat/completions", json=chat(stream=True))).status_code == 200
            fake.reply(TextDelta("half"), ErrorLine("upstream broke"))
            assert "upstream broke" in (await client.post("/v1/chat/completions", json=chat(stream=True))).text
            fake.reply(TextDelta("cut"), Sleep(30), TextDelta(" off"))
            async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
                async for line in response.aiter_lines():
                    if "cut" in line:
                        break
            await fake.wait_closed(10)
            assert (await client.post("/v1/chat/completions", json=chat(model="nope"))).status_code == 404
            assert (await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})).status_code == 401
            fake.reply(TextDelta("visitor"))
            assert (await client.post("/webchat/api/chat/completions", json=chat(stream=True),
                                      headers={"X-Forwarded-For": VISITOR})).status_code == 200
            deadline = time.monotonic() + 10
            while len(requests_logged(gateway)) < 7 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a second line for any of them would have come by now
    lines = requests_logged(gateway)
    chats = [line for line in lines if "route=/v1/chat/completions" in line]
    assert len(lines) == 7, lines
    assert [re.search(r"status=(\d+)", line).group(1) for line in chats] == ["200", "200", "200", "200", "404"]
    whole, streamed, broken, cut = chats[:4]
    assert "tokens_out=1" in whole and "tokens_out=1" in streamed and "backend=a" in streamed
    assert "error=BackendError" in broken and "tokens_out=1" in broken
    assert "tokens_out=1" in cut and "bytes=" in cut
    assert any("route=/webchat/api/chat/completions status=200" in line and "tokens_in=" in line for line in lines)
