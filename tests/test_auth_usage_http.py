"""API keys and /usage through the gateway's HTTP API, with the openai SDK.

The app runs in this process on a real port with a scripted backend: what is
tested is the key check and the usage the store reports, not a model.
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import AsyncIterator

import httpx
import openai
import pytest

from privatai.core.events import TextDelta
from tests.gateway import LocalGateway, eventually
from tests.scripted import ScriptedBackend, ScriptedBackends

MODEL = "smollm2-135m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("e")


@pytest.fixture
async def gateway(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[LocalGateway]:
    async with LocalGateway(tmp_path, {"default_model": MODEL, "backends": [backend.entry(MODEL)]}) as gw:
        yield gw


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def sdk(gateway: LocalGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)


async def post(http: httpx.AsyncClient, gateway: LocalGateway, headers: dict[str, str] | None) -> httpx.Response:
    return await http.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers or {})


async def cli(gateway: LocalGateway, *args: str) -> None:
    done = await gateway.cli(*args)
    assert done.returncode == 0, done.stderr


def expire(path: str, key: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE api_keys SET expires_at = '2001-01-01T00:00:00' WHERE prefix = ?", (key[:12],))
    db.close()


async def expire_and_revoke(gateway: LocalGateway, expired: str, revoked: str) -> None:
    # The CLI refuses past expiry dates, so age one key in the database directly
    # (in a thread: the server in this loop may hold the write lock a moment).
    await asyncio.to_thread(expire, gateway.config["store"]["path"], expired)
    await cli(gateway, "keys", "revoke", revoked[:12])


async def test_auth_matrix(gateway: LocalGateway, http: httpx.AsyncClient) -> None:
    api_key = await gateway.key()
    expired = await gateway.key("matrix")
    revoked = await gateway.key("matrix")
    await expire_and_revoke(gateway, expired, revoked)
    cases = {
        "missing": None,
        "not bearer": {"Authorization": f"Basic {api_key}"},
        "malformed": {"Authorization": "Bearer privat_short"},
        "unknown": {"Authorization": "Bearer privat_" + "A" * 40},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "expired": {"Authorization": f"Bearer {expired}"},
    }
    for case, headers in cases.items():
        response = await post(http, gateway, headers)
        assert response.status_code == 401, case
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error", case
    assert (await post(http, gateway, {"Authorization": f"Bearer {api_key}"})).status_code == 200
    for path in ("/models", "/usage"):
        assert (await http.get(gateway.base_url + path)).status_code == 401
    # Health needs no key.
    assert (await http.get(f"{gateway.url}/healthz")).status_code == 200


async def test_sdk_raises_authentication_error(gateway: LocalGateway) -> None:
    client = sdk(gateway, "privat_" + "B" * 40)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


async def test_suspended_account_gets_403_until_activated(gateway: LocalGateway) -> None:
    key = await gateway.key("suspendme")
    client = sdk(gateway, key)
    assert (await client.models.list()).data
    await cli(gateway, "accounts", "suspend", "suspendme")

    async def refused() -> openai.PermissionDeniedError | None:
        try:
            await client.models.list()
        except openai.PermissionDeniedError as exc:
            return exc
        return None

    # The server caches key lookups for 2 s: the suspension applies within that.
    denied = await eventually(refused, 5, "the suspension applied")
    assert "suspended" in denied.message
    await cli(gateway, "accounts", "activate", "suspendme")

    async def served() -> bool:
        try:
            return bool((await client.models.list()).data)
        except openai.PermissionDeniedError:
            return False

    await eventually(served, 5, "the activation applied")


async def test_usage_endpoint_matches_what_clients_received(gateway: LocalGateway, backend: ScriptedBackend,
                                                            http: httpx.AsyncClient) -> None:
    key = await gateway.key("usage-acct")
    other = await gateway.key("usage-acct")
    headers = {"Authorization": f"Bearer {key}"}
    empty = (await http.get(f"{gateway.url}/api/v1/usage", headers=headers)).json()
    assert empty == {"tokens_used": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0,
                     "last_used": None}
    client = sdk(gateway, key)
    backend.reply(TextDelta("Hello"), TextDelta(" there"), usage=(9, 2))
    backend.reply(TextDelta("Hi"), TextDelta(" again"), TextDelta("!"), usage=(9, 3))
    seen_prompt = seen_completion = 0
    for stream in (False, True):
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model=MODEL, stream=True, max_tokens=4, messages=[{"role": "user", "content": "Hello"}])]
            usage = next(c.usage for c in chunks if c.usage)
        else:
            usage = (await client.chat.completions.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hello"}])).usage
        seen_prompt += usage.prompt_tokens
        seen_completion += usage.completion_tokens
    assert (seen_prompt, seen_completion) == (18, 5)
    # Requests refused before a backend count nothing.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])
    await sdk(gateway, other).chat.completions.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Yo"}])

    body = (await http.get(f"{gateway.url}/api/v1/usage", headers=headers)).json()
    assert body["requests"] == 2
    assert body["prompt_tokens"] == seen_prompt and body["completion_tokens"] == seen_completion
    assert body["tokens_used"] == seen_prompt + seen_completion
    assert body["last_used"] and body["last_used"][:4].isdigit()

    by_model = (await http.get(f"{gateway.url}/api/v1/usage?by_model=true", headers=headers)).json()
    assert by_model["models"][MODEL]["requests"] == 2
    account = (await http.get(f"{gateway.url}/v1/usage?scope=account", headers=headers)).json()
    assert account["requests"] == 3
    future = (await http.get(f"{gateway.url}/v1/usage?since=2999-01-01", headers=headers)).json()
    assert future["requests"] == 0
    bad = await http.get(f"{gateway.url}/v1/usage?since=yesterday", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
