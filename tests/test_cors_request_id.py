"""x-request-id on every response, and CORS for the configured origins only."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from privatai.core.events import TextDelta
from tests.fakes import FAKES, FakeBackend
from tests.gateway import Gateway, LocalGateway

ALLOWED = "https://app.example.com"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeBackend, Gateway, str]]:
    with FAKES["vllm"]() as fake:
        config: dict[str, Any] = {
            "backends": [{"name": "vllm-1", "kind": "vllm", "url": fake.url,
                          "models": [{"name": "chat-model", "upstream": "fake-model"}]}],
            "server": {"cors_origins": [ALLOWED]}}
        gateway = Gateway(tmp_path_factory.mktemp("gw-cors"), config)
        key = gateway.create_key()
        with gateway:
            yield fake, gateway, key


def test_every_response_has_its_own_request_id(served: tuple[FakeBackend, Gateway, str]) -> None:
    fake, gateway, key = served
    auth = {"Authorization": f"Bearer {key}"}
    fake.reply(TextDelta("Hi"))
    fake.reply(TextDelta("Hi"))
    responses = [
        httpx.get(f"{gateway.base_url}/models", headers=auth),
        httpx.get(f"{gateway.base_url}/models"),  # 401
        httpx.get(f"{gateway.base_url}/nope", headers=auth),  # 404
        httpx.post(f"{gateway.base_url}/chat/completions", headers=auth,
                   json={"messages": [{"role": "user", "content": "Hi"}]}),
        httpx.post(f"{gateway.base_url}/chat/completions", headers=auth,
                   json={"messages": [{"role": "user", "content": "Hi"}], "stream": True}),
        httpx.post(f"{gateway.base_url}/chat/completions", headers=auth, json={"messages": []}),  # 400
        httpx.get(f"{gateway.url}/healthz"),
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 200, 200, 400, 200]
    assert responses[4].headers["content-type"].startswith("text/event-stream")
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(i and REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_the_sdk_sees_the_request_id(served: tuple[FakeBackend, Gateway, str]) -> None:
    fake, gateway, key = served
    fake.reply(TextDelta("Hi"))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="chat-model",
                                                           messages=[{"role": "user", "content": "Hi"}])
    assert REQUEST_ID.match(raw.headers["x-request-id"])
    assert raw.parse().choices[0].message.content == "Hi"


def test_preflight_needs_no_key_and_allows_only_listed_origins(served: tuple[FakeBackend, Gateway, str]) -> None:
    _, gateway, _ = served
    asked = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}
    ok = httpx.options(f"{gateway.base_url}/chat/completions", headers={"Origin": ALLOWED, **asked})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    other = httpx.options(f"{gateway.url}/api/v1/models", headers={"Origin": "https://evil.example", **asked})
    assert other.status_code == 204
    assert "access-control-allow-origin" not in other.headers


def test_responses_expose_request_id_and_rate_limit_headers_to_listed_origins(
        served: tuple[FakeBackend, Gateway, str]) -> None:
    _, gateway, key = served
    listed = httpx.get(f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}", "Origin": ALLOWED})
    assert listed.headers["access-control-allow-origin"] == ALLOWED
    exposed = [h.strip() for h in listed.headers["access-control-expose-headers"].split(",")]
    assert "x-request-id" in exposed and "retry-after" in exposed and "x-ratelimit-remaining-requests" in exposed
    assert "Origin" in listed.headers.get_list("vary")
    unlisted = httpx.get(f"{gateway.base_url}/models",
                         headers={"Authorization": f"Bearer {key}", "Origin": "https://evil.example"})
    assert unlisted.status_code == 200 and "access-control-allow-origin" not in unlisted.headers


async def test_no_cors_by_default(tmp_path: Path) -> None:
    async with FAKES["vllm"]() as fake:
        gateway = LocalGateway(tmp_path, {"backends": [{"name": "v", "kind": "vllm", "url": fake.url,
                                                        "models": ["chat-model"]}]})
        async with gateway, httpx.AsyncClient() as client:
            response = await client.options(f"{gateway.base_url}/chat/completions",
                                            headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
            assert response.status_code == 204 and "access-control-allow-origin" not in response.headers
            assert REQUEST_ID.match(response.headers["x-request-id"])
