"""The router for the endpoints that are not chat (embeddings, legacy
completions), in process over scripted backends: the same model names,
failover, circuit breaker and capacity as chat (test_router.py)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from privatai.config import parse_config
from privatai.core.completions import parse_completion_request
from privatai.core.embeddings import EmbeddingResult, parse_embeddings_request
from privatai.core.events import Event, TextDelta
from privatai.core.routing import RouteInfo, Router
from privatai.errors import BackendUnavailable, CapacityExceeded, NotOffered, UpstreamRejected
from tests.adapter_helpers import chat, text_of
from tests.fakes import Hang
from tests.fakes.endpoints import fake_vector
from tests.scripted import ScriptedBackends

MODEL = "m"


async def started(routers: list[Router], backends: list[dict[str, Any]], **routing: Any) -> Router:
    router = Router(parse_config({"backends": backends, "routing": {"health_interval": 3600, **routing}}))
    await router.start()
    routers.append(router)
    return router


async def embed(router: Router, texts: list[str], info: RouteInfo | None = None) -> EmbeddingResult:
    body = parse_embeddings_request(json.dumps({"input": texts, "model": MODEL}).encode())
    return await router.call(MODEL, info or RouteInfo(), lambda adapter, upstream: adapter.embed(body, texts, upstream))


async def complete(router: Router, prompt: str, info: RouteInfo | None = None) -> list[Event]:
    body = parse_completion_request(json.dumps({"prompt": prompt, "model": MODEL}).encode())
    events = router.events(MODEL, info or RouteInfo(),
                           lambda adapter, upstream: adapter.complete_text(body, prompt, upstream))
    return [event async for event in events]


async def test_public_name_reaches_the_backend_as_its_upstream_name(scripted: ScriptedBackends,
                                                                     routers: list[Router]) -> None:
    a = scripted.backend("a")
    router = await started(routers, [{**a.entry(), "models": [{"name": MODEL, "upstream": "up-m"}]}])
    result = await embed(router, ["one", "two words"])
    assert result.vectors == [fake_vector("one"), fake_vector("two words")]
    assert a.asked[-1].model == "up-m"
    a.reply(TextDelta(" upon"), TextDelta(" a time"))
    assert text_of(await complete(router, "Once")) == " upon a time"
    assert a.asked[-1].model == "up-m" and a.asked[-1].request.messages[0].content == "Once"


@pytest.mark.parametrize("endpoint", ["embeddings", "completions"])
async def test_failover_before_the_answer_and_the_circuit(scripted: ScriptedBackends, routers: list[Router],
                                                         endpoint: str) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    router = await started(routers, [a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)],
                           failure_threshold=2, recovery_time=3600)
    for _ in range(2):
        a.fail(503, "overloaded")
        info = RouteInfo()
        if endpoint == "embeddings":
            assert (await embed(router, ["x"], info)).vectors == [fake_vector("x")]
        else:
            assert text_of(await complete(router, "x", info)) == b.default_text
        assert (info.backend, info.attempts) == ("b", 2)
    # Two failures in a row opened a's circuit: b alone is asked now.
    assert router.health(router.backends["a"]) == "down"
    asked_a = len(a.asked)
    await embed(router, ["y"])
    assert len(a.asked) == asked_a


async def test_a_rejected_request_is_not_tried_elsewhere(scripted: ScriptedBackends, routers: list[Router]) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    router = await started(routers, [a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)])
    a.fail(400, "input too long")
    with pytest.raises(UpstreamRejected):
        await embed(router, ["x"])
    assert b.asked == []
    # A backend that answers, if only "no", is up: as for chat.
    assert router.health(router.backends["a"]) == "up"


async def test_capacity_is_shared_with_chat(scripted: ScriptedBackends, routers: list[Router]) -> None:
    a = scripted.backend("a")
    router = await started(routers, [a.entry(MODEL, max_concurrency=1)], queue_timeout=0.2)
    a.reply(Hang())
    held = router.stream(chat("Hi"), MODEL, RouteInfo())
    first = asyncio.ensure_future(held.__anext__())  # type: ignore[attr-defined]
    while a.in_flight == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(CapacityExceeded) as info:
        await embed(router, ["x"])
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    with pytest.raises(CapacityExceeded):
        await complete(router, "x")
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await held.aclose()  # type: ignore[attr-defined]
    # The slot is free again.
    assert (await embed(router, ["x"])).vectors == [fake_vector("x")]


async def test_a_backend_without_the_endpoint_passes_it_on(scripted: ScriptedBackends,
                                                          routers: list[Router]) -> None:
    chat_only, both = scripted.backend("chat-only"), scripted.backend("both")
    chat_only.text_endpoints = False
    router = await started(routers, [chat_only.entry(MODEL, weight=100), both.entry(MODEL, weight=0.01)])
    info = RouteInfo()
    assert (await embed(router, ["x"], info)).vectors == [fake_vector("x")]
    assert info.backend == "both"
    # Not offered is no failure of the chat-only server.
    assert router.health(router.backends["chat-only"]) == "up"


async def test_not_offered_anywhere_is_a_400(scripted: ScriptedBackends, routers: list[Router]) -> None:
    chat_only = scripted.backend("chat-only")
    chat_only.text_endpoints = False
    router = await started(routers, [chat_only.entry(MODEL)])
    with pytest.raises(NotOffered) as info:
        await embed(router, ["x"])
    assert info.value.status == 400 and "Embeddings are not offered" in info.value.message
    with pytest.raises(NotOffered):
        await complete(router, "x")
    assert router.backends["chat-only"].in_flight == 0


async def test_no_backend_up(scripted: ScriptedBackends, routers: list[Router]) -> None:
    a = scripted.backend("a")
    router = await started(routers, [a.entry(MODEL)])
    a.down = True
    with pytest.raises(BackendUnavailable):
        await embed(router, ["x"])
