"""The API's surface as a client finds it: unknown routes named in a JSON
404, the public OpenAPI document listing every routed endpoint, and the
request id that links a response to its access line."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
import pytest

from privatai.api.openapi import openapi_document
from privatai.core.events import TextDelta
from tests.gateway import LocalGateway
from tests.scripted import ScriptedBackend, ScriptedBackends

MODEL = "m"


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("a")


@pytest.fixture
async def gateway(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[LocalGateway]:
    async with LocalGateway(tmp_path, {"backends": [backend.entry(MODEL)]}) as gw:
        yield gw


@pytest.fixture
async def key(gateway: LocalGateway) -> str:
    return await gateway.key()


async def test_unknown_routes_under_the_api_are_named(gateway: LocalGateway, key: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for method, path in (("GET", "/v1/files"), ("POST", "/api/v1/audio/speech"), ("GET", "/v1/")):
            answer = await http.request(method, path, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 404
            error = answer.json()["error"]
            assert error["message"].startswith(f"This gateway does not offer {method} {path};")
            assert "/api/v1/openapi.json" in error["message"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "unknown_route")
            # Without a key, nothing is said about which routes exist.
            anonymous = await http.request(method, path)
            assert anonymous.status_code == 401 and path not in anonymous.text
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        await client.files.list()
    assert "does not offer GET /v1/files" in info.value.message


async def test_openapi_document_is_public_and_lists_every_routed_endpoint(gateway: LocalGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        documents = [await http.get(prefix + "/openapi.json") for prefix in ("/api/v1", "/v1")]
    assert all(d.status_code == 200 and d.headers["content-type"] == "application/json" for d in documents)
    document = documents[0].json()
    assert documents[1].json() == document == openapi_document()
    assert gateway.app is not None
    routed = set()
    for route in gateway.app.router.routes:
        path = "/" + route.path.lstrip("/")
        if not path.startswith("/api/v1/") and path not in ("/healthz", "/readyz"):
            continue
        for method in route.methods - {"OPTIONS", "HEAD"}:
            routed.add((method.lower(), re.sub(r"<(\w+)(:\w+)?>", r"{\1}", path)))
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routed == documented
    # What needs a key says so; the document itself does not.
    assert document["paths"]["/api/v1/embeddings"]["post"]["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


async def test_the_access_line_names_the_request_id(gateway: LocalGateway, key: str, backend: ScriptedBackend,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="privatai.access")
    headers = {"Authorization": f"Bearer {key}"}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
        ("/chat/completions", {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}),
        ("/embeddings", {"model": MODEL, "input": "Hi"}),
        ("/completions", {"model": MODEL, "prompt": "Hi", "stream": True}),
        ("/responses", {"model": MODEL, "input": "Hi", "stream": True}),
        ("/responses", {"model": MODEL, "input": "Hi", "store": True}),
    ]
    ids = []
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, headers=headers) as http:
        for path, body in requests:
            backend.reply(TextDelta("Hello"))
            answer = await http.post(path, json=body)
            assert answer.status_code == (400 if body.get("store") else 200), answer.text
            ids.append(answer.headers["x-request-id"])
    backend.replies.clear()
    lines = [record.fields for record in caplog.records if record.name == "privatai.access"]  # type: ignore[attr-defined]
    assert [line["request_id"] for line in lines] == ids
    assert [line["route"] for line in lines] == ["/v1" + path for path, _ in requests]
    assert len(set(ids)) == len(ids)
