"""Every adapter kind against its wire-format fake on a real socket: the same
behaviour through each (text, multi-turn, thinking, tools, length, errors,
disconnects), asserting both the events and what the backend received."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from privatai.adapters.base import Adapter
from privatai.errors import BackendError, BackendUnavailable, UpstreamRejected
from privatai.core.events import Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from tests.adapter_helpers import (
    WEATHER_TOOL,
    backend_config,
    chat,
    closed_port,
    collect,
    finish_of,
    started_adapter,
    text_of,
    thinking_of,
    tool_calls_of,
    usage_of,
)
from tests.fakes import ErrorLine, FakeBackend, Hang, Sleep


def upstream_messages(fake: FakeBackend, n: int = -1) -> list[dict[str, Any]]:
    return fake.chat_bodies[n]["messages"]


async def test_plain_text(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Hel"), TextDelta("lo!"), usage=(9, 2))
    events = await collect(adapter.stream(chat("Say hello"), "upstream-model"))
    assert events == [TextDelta("Hel"), TextDelta("lo!"), Finish("stop"), Usage(9, 2)]
    body = fake.last_body
    assert body["model"] == "upstream-model"
    assert body["stream"] is True
    assert upstream_messages(fake) == [{"role": "user", "content": "Say hello"}]
    if fake.kind != "ollama":
        assert body["stream_options"] == {"include_usage": True}
    # Options the client did not set are not invented (the model's defaults apply).
    for absent in ("temperature", "top_p", "max_tokens", "options", "tools", "think", "format"):
        assert absent not in body


async def test_multi_turn_history_reaches_backend(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Paris, as I said."))
    request = chat([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}]},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Again?"},
    ])
    events = await collect(adapter.stream(request, "m"))
    assert text_of(events) == "Paris, as I said."
    assert upstream_messages(fake) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Again?"},
    ]


async def test_thinking_is_separated_and_requested(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(ThinkingDelta("Six times seven"), ThinkingDelta(" is 42."), TextDelta("42"))
    events = await collect(adapter.stream(chat("6*7?", reasoning_effort="high"), "m"))
    assert thinking_of(events) == "Six times seven is 42."
    assert text_of(events) == "42"
    assert events[:2] == [ThinkingDelta("Six times seven"), ThinkingDelta(" is 42.")]
    body = fake.last_body
    if fake.kind == "ollama":
        assert body["think"] == "high"
    else:
        assert body["reasoning_effort"] == "high"
    if fake.kind in ("llamacpp", "vllm"):
        assert body["chat_template_kwargs"] == {"enable_thinking": True}


async def test_thinking_switched_off(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    await collect(adapter.stream(chat("hi", think=False), "m"))
    body = fake.last_body
    if fake.kind == "ollama":
        assert body["think"] is False
    elif fake.kind in ("llamacpp", "vllm"):
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert "reasoning_effort" not in body


async def test_tool_round_trip(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    question = [{"role": "user", "content": "Weather in Tokyo?"}]
    fake.reply(TextDelta("Let me check."),
               ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Tokyo"}, "unit": "C"}'))
    first = await collect(adapter.stream(chat(question, tools=[WEATHER_TOOL], tool_choice="auto"), "m"))
    [call] = tool_calls_of(first)
    assert call["name"] == "get_weather"
    assert call["arguments"] == {"place": {"city": "Tokyo"}, "unit": "C"}
    assert finish_of(first) == "tool_calls"
    assert text_of(first) == "Let me check."
    # The tool schema reaches the backend intact, nested parts included.
    assert fake.last_body["tools"] == [WEATHER_TOOL]

    fake.reply(TextDelta("Sunny, 21 °C."))
    history = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": '{"place": {"city": "Tokyo"}, "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "sunny", "temp": 21}'},
    ]
    second = await collect(adapter.stream(chat(history, tools=[WEATHER_TOOL]), "m"))
    assert text_of(second) == "Sunny, 21 °C."
    assert finish_of(second) == "stop"
    assistant, tool = upstream_messages(fake)[1:]
    if fake.kind == "ollama":
        # Ollama wants the arguments as an object and the tool's name on the result.
        assert assistant["tool_calls"][0]["function"]["arguments"] == {"place": {"city": "Tokyo"}, "unit": "C"}
        assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
        assert tool == {"role": "tool", "content": '{"sky": "sunny", "temp": 21}',
                        "tool_name": "get_weather", "tool_call_id": call["id"]}
    else:
        assert assistant["tool_calls"] == [
            {"id": call["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": '{"place": {"city": "Tokyo"}, "unit": "C"}'}}]
        assert assistant["content"] is None
        assert tool == {"role": "tool", "content": '{"sky": "sunny", "temp": 21}', "tool_call_id": call["id"]}


async def test_two_tool_calls_get_distinct_indexes_and_ids(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Tokyo"}}'),
               ToolCallDelta(1, name="get_weather", arguments='{"place": {"city": "Osaka"}}'))
    events = await collect(adapter.stream(chat("Tokyo and Osaka?", tools=[WEATHER_TOOL]), "m"))
    calls = tool_calls_of(events)
    assert [c["arguments"]["place"]["city"] for c in calls] == ["Tokyo", "Osaka"]
    assert len({c["id"] for c in calls}) == 2
    assert sorted({e.index for e in events if isinstance(e, ToolCallDelta)}) == [0, 1]


async def test_length_cutoff(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Once upon"), finish="length", usage=(5, 3))
    events = await collect(adapter.stream(chat("A story", max_tokens=3), "m"))
    assert finish_of(events) == "length"
    assert usage_of(events) == Usage(5, 3)
    body = fake.last_body
    if fake.kind == "ollama":
        assert body["options"] == {"num_predict": 3}
    else:
        assert body["max_tokens"] == 3


async def test_options_are_passed(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    request = chat("JSON please", temperature=0.2, top_p=0.9, max_completion_tokens=50, stop="END",
                   seed=7, response_format={"type": "json_schema",
                                            "json_schema": {"name": "a", "schema": schema, "strict": True}})
    await collect(adapter.stream(request, "m"))
    body = fake.last_body
    if fake.kind == "ollama":
        assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 50, "stop": ["END"],
                                   "seed": 7}
        assert body["format"] == schema
    else:
        assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.2, 0.9, ["END"], 7)
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "a", "schema": schema, "strict": True}}
        field = "max_completion_tokens" if fake.kind == "openai" else "max_tokens"
        assert body[field] == 50


async def test_json_object_format(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    await collect(adapter.stream(chat("JSON", response_format={"type": "json_object"}), "m"))
    body = fake.last_body
    if fake.kind == "ollama":
        assert body["format"] == "json"
    else:
        assert body["response_format"] == {"type": "json_object"}


async def test_upstream_400_is_rejected_with_its_message(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(400, "invalid JSON schema in response_format")
    with pytest.raises(UpstreamRejected) as caught:
        await collect(adapter.stream(chat("hi"), "m"))
    assert caught.value.status == 400
    assert "invalid JSON schema in response_format" in caught.value.message


async def test_upstream_500_is_unavailable(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(500, "CUDA out of memory")
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(chat("hi"), "m"))
    assert caught.value.retryable
    assert caught.value.type == "backend_error"


async def test_unreachable_backend(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, url=fake.url.replace(str(fake.port), str(closed_port()))))
    try:
        with pytest.raises(BackendUnavailable):
            await collect(adapter.stream(chat("hi"), "m"))
        with pytest.raises(BackendUnavailable):
            await adapter.probe()
    finally:
        await adapter.close()


async def test_mid_stream_error_is_a_backend_error(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Partial"), ErrorLine("model crashed"))
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("Partial")
    with pytest.raises(BackendError) as caught:
        await anext(stream)
    assert not isinstance(caught.value, BackendUnavailable)
    assert "model crashed" in caught.value.message


async def test_closing_the_stream_closes_the_upstream_connection(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Thinking very hard"), Hang())
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("Thinking very hard")
    await stream.aclose()  # type: ignore[attr-defined]
    assert await fake.wait_closed(0.1) < 0.1
    # The adapter still works afterwards (the pool is not poisoned).
    fake.reply(TextDelta("again"))
    assert text_of(await collect(adapter.stream(chat("hi"), "m"))) == "again"


async def test_cancelling_the_consumer_closes_the_upstream_connection(
        pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Tok"), Hang())
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in adapter.stream(chat("hi"), "m"):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    begin = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_closed(0.1)
    assert time.monotonic() - begin < 0.1


async def test_first_token_timeout(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, first_token_timeout=0.2))
    fake.reply(Sleep(2), TextDelta("too late"))
    begin = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable):
            await collect(adapter.stream(chat("hi"), "m"))
    finally:
        await adapter.close()
    assert time.monotonic() - begin < 1.5


async def test_idle_timeout_after_first_token(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, idle_timeout=0.2))
    fake.reply(TextDelta("first"), Sleep(2), TextDelta("too late"))
    stream = adapter.stream(chat("hi"), "m")
    try:
        assert await anext(stream) == TextDelta("first")
        with pytest.raises(BackendError) as caught:
            await anext(stream)
        assert not isinstance(caught.value, BackendUnavailable)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await adapter.close()


async def test_model_discovery_and_probe(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.models = ["alpha", "beta"]
    assert await adapter.list_models() == ["alpha", "beta"]
    await adapter.probe()


async def test_think_tags_in_content_become_thinking(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, think_tags=True))
    fake.reply(TextDelta("<th"), TextDelta("ink>\nStep one"), TextDelta(", step two.</thi"),
               TextDelta("nk>\n\nThe answer"), TextDelta(" is 4."))
    try:
        events = await collect(adapter.stream(chat("2+2?"), "m"))
    finally:
        await adapter.close()
    assert thinking_of(events) == "Step one, step two."
    assert text_of(events) == "The answer is 4."
    assert "<" not in text_of(events) + thinking_of(events)


async def test_finished_responses_reuse_the_connection(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    for _ in range(3):
        fake.reply(TextDelta("ok"))
        await collect(adapter.stream(chat("hi"), "m"))
    peers = {r.peer for r in fake.requests if r.path == fake.chat_path}
    assert len(peers) == 1, "each request opened a new connection"
