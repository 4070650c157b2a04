"""API keys and /usage through the live gateway, with the openai SDK."""
from __future__ import annotations

import sqlite3
import time

import httpx
import openai
import pytest

from tests.gateway import Gateway

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def post(gateway: Gateway, headers: dict[str, str] | None) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers or {}, timeout=60)


def expire_and_revoke(gateway: Gateway, expired: str, revoked: str) -> None:
    # The CLI refuses past expiry dates, so age one key in the database directly.
    db = sqlite3.connect(gateway.config["store"]["path"])
    with db:
        db.execute("UPDATE api_keys SET expires_at = '2001-01-01T00:00:00' WHERE prefix = ?", (expired[:12],))
    db.close()
    gateway.cli("keys", "revoke", revoked[:12])


def test_auth_matrix(embedded_gateway: Gateway, api_key: str) -> None:
    expired = embedded_gateway.create_key("matrix")
    revoked = embedded_gateway.create_key("matrix")
    expire_and_revoke(embedded_gateway, expired, revoked)
    time.sleep(2.5)  # the server caches key lookups for 2 s
    cases = {
        "missing": None,
        "not bearer": {"Authorization": f"Basic {api_key}"},
        "malformed": {"Authorization": "Bearer privat_short"},
        "unknown": {"Authorization": "Bearer privat_" + "A" * 40},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "expired": {"Authorization": f"Bearer {expired}"},
    }
    for case, headers in cases.items():
        response = post(embedded_gateway, headers)
        assert response.status_code == 401, case
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error", case
    assert post(embedded_gateway, {"Authorization": f"Bearer {api_key}"}).status_code == 200
    for path in ("/models", "/usage"):
        assert httpx.get(embedded_gateway.base_url + path, timeout=10).status_code == 401
    # Health needs no key.
    assert httpx.get(f"{embedded_gateway.url}/healthz", timeout=10).status_code == 200


def test_sdk_raises_authentication_error(embedded_gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=embedded_gateway.base_url, api_key="privat_" + "B" * 40, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_suspended_account_gets_403_until_activated(embedded_gateway: Gateway) -> None:
    key = embedded_gateway.create_key("suspendme")
    client = openai.OpenAI(base_url=embedded_gateway.base_url, api_key=key, max_retries=0)
    assert client.models.list().data
    embedded_gateway.cli("accounts", "suspend", "suspendme")
    time.sleep(2.5)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.models.list()
    assert "suspended" in info.value.message
    embedded_gateway.cli("accounts", "activate", "suspendme")
    time.sleep(2.5)
    assert client.models.list().data


def test_usage_endpoint_matches_what_clients_received(embedded_gateway: Gateway) -> None:
    key = embedded_gateway.create_key("usage-acct")
    other = embedded_gateway.create_key("usage-acct")
    headers = {"Authorization": f"Bearer {key}"}
    empty = httpx.get(f"{embedded_gateway.url}/api/v1/usage", headers=headers, timeout=10).json()
    assert empty == {"tokens_used": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0,
                     "last_used": None}
    client = openai.OpenAI(base_url=embedded_gateway.base_url, api_key=key, max_retries=0)
    seen_prompt = seen_completion = 0
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(model=MODEL, stream=True, max_tokens=4,
                                                         messages=[{"role": "user", "content": "Hello"}]))
            usage = next(c.usage for c in chunks if c.usage)
        else:
            usage = client.chat.completions.create(model=MODEL, max_tokens=4,
                                                   messages=[{"role": "user", "content": "Hello"}]).usage
        seen_prompt += usage.prompt_tokens
        seen_completion += usage.completion_tokens
    # Requests refused before a backend count nothing.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    openai.OpenAI(base_url=embedded_gateway.base_url, api_key=other, max_retries=0).chat.completions.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Yo"}])

    body = httpx.get(f"{embedded_gateway.url}/api/v1/usage", headers=headers, timeout=10).json()
    assert body["requests"] == 2
    assert body["prompt_tokens"] == seen_prompt and body["completion_tokens"] == seen_completion
    assert body["tokens_used"] == seen_prompt + seen_completion
    assert body["last_used"] and body["last_used"][:4].isdigit()

    by_model = httpx.get(f"{embedded_gateway.url}/api/v1/usage?by_model=true", headers=headers, timeout=10).json()
    assert by_model["models"][MODEL]["requests"] == 2
    account = httpx.get(f"{embedded_gateway.url}/v1/usage?scope=account", headers=headers, timeout=10).json()
    assert account["requests"] == 3
    future = httpx.get(f"{embedded_gateway.url}/v1/usage?since=2999-01-01", headers=headers, timeout=10).json()
    assert future["requests"] == 0
    bad = httpx.get(f"{embedded_gateway.url}/v1/usage?since=yesterday", headers=headers, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
