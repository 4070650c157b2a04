"""Non-streamed client requests through every adapter kind: the upstream is
asked for a non-streamed answer (one JSON body in the kind's format, served by
its fake) and the adapter yields the same events the streaming path would."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from privatai.adapters.base import Adapter
from privatai.errors import BackendUnavailable, UpstreamRejected
from privatai.core.events import Fingerprint, Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
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
from tests.fakes import Drop, ErrorLine, FakeBackend, FakeOllama, FakeVLLM, Hang, Raw, Sleep


def whole(messages: list[dict[str, Any]] | str, **fields: Any) -> Any:
    """A request whose client wants a non-streamed answer."""
    return chat(messages, stream=False, **fields)


async def test_plain_text_is_asked_for_and_read_non_streamed(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Hel"), TextDelta("lo!"), usage=(9, 2))
    events = await collect(adapter.stream(whole("Say hello"), "upstream-model"))
    # llama-server names its build in every answer; it goes out before the content.
    opening = [Fingerprint("b6000-fake")] if fake.kind == "llamacpp" else []
    assert events == [*opening, TextDelta("Hello!"), Finish("stop"), Usage(9, 2)]
    body = fake.last_body
    assert body["model"] == "upstream-model"
    assert body["stream"] is False
    assert "stream_options" not in body
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]


async def test_thinking_and_text(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(ThinkingDelta("Six times seven"), ThinkingDelta(" is 42."), TextDelta("42"))
    events = await collect(adapter.stream(whole("6*7?", reasoning_effort="high"), "m"))
    opening = [Fingerprint("b6000-fake")] if fake.kind == "llamacpp" else []
    assert events[:len(opening) + 2] == [*opening, ThinkingDelta("Six times seven is 42."), TextDelta("42")]
    assert finish_of(events) == "stop"
    if fake.kind == "ollama":
        assert fake.last_body["think"] == "high"
    else:
        assert fake.last_body["reasoning_effort"] == "high"


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "both"])
async def test_vllm_reasoning_variants_give_the_thinking_once(field: str) -> None:
    async with FakeVLLM(reasoning_field=field) as fake:
        adapter = await started_adapter(backend_config(fake))
        try:
            fake.reply(ThinkingDelta("Hmm."), TextDelta("Yes."))
            with_thinking = await collect(adapter.stream(whole("?"), "m"))
            fake.reply(TextDelta("No thinking."))
            without = await collect(adapter.stream(whole("?"), "m"))
        finally:
            await adapter.close()
    assert with_thinking[:2] == [ThinkingDelta("Hmm."), TextDelta("Yes.")]
    # Explicit nulls in the reasoning fields are no thinking.
    assert without[0] == TextDelta("No thinking.")
    assert thinking_of(without) == ""


async def test_tool_calls_arrive_whole_with_ids(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Tokyo"}, "unit": "C"}'),
               ToolCallDelta(1, name="get_weather", arguments='{"place": {"city": "Osaka"}}'))
    events = await collect(adapter.stream(whole("Tokyo and Osaka?", tools=[WEATHER_TOOL]), "m"))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    # One event per whole call, with its index, id, name and full arguments.
    assert [d.index for d in deltas] == [0, 1]
    calls = tool_calls_of(events)
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert calls[0]["arguments"] == {"place": {"city": "Tokyo"}, "unit": "C"}
    assert calls[1]["arguments"] == {"place": {"city": "Osaka"}}
    assert len({c["id"] for c in calls}) == 2
    # content is null (or empty, Ollama) with only tool calls: no text event.
    assert not any(isinstance(e, TextDelta) for e in events)
    # Ollama and some servers say "stop" after a tool call.
    assert finish_of(events) == "tool_calls"
    assert fake.last_body["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize("tool_ids", [True, False])
async def test_ollama_tool_calls_with_and_without_id_and_index(tool_ids: bool) -> None:
    async with FakeOllama(tool_ids=tool_ids) as fake:
        adapter = await started_adapter(backend_config(fake))
        try:
            fake.reply(TextDelta("Checking."),
                       ToolCallDelta(0, id="call_given1", name="get_weather",
                                     arguments='{"place": {"city": "Tokyo"}}'),
                       ToolCallDelta(1, name="get_weather", arguments='{"place": {"city": "Osaka"}}'))
            events = await collect(adapter.stream(whole("?", tools=[WEATHER_TOOL]), "m"))
        finally:
            await adapter.close()
    calls = tool_calls_of(events)
    assert [c["arguments"]["place"]["city"] for c in calls] == ["Tokyo", "Osaka"]
    assert all(c["id"] for c in calls) and len({c["id"] for c in calls}) == 2
    if tool_ids:
        assert calls[0]["id"] == "call_given1"
    # Ollama's arguments object becomes the JSON string clients expect.
    assert all(isinstance(e.arguments, str) for e in events if isinstance(e, ToolCallDelta))
    assert text_of(events) == "Checking."
    assert finish_of(events) == "tool_calls"
    assert fake.last_body["stream"] is False


async def test_length_finish_and_usage(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Once upon"), finish="length", usage=(5, 3))
    events = await collect(adapter.stream(whole("A story", max_tokens=3), "m"))
    assert text_of(events) == "Once upon"
    assert finish_of(events) == "length"
    assert usage_of(events) == Usage(5, 3)
    assert events[-2:] == [Finish("length"), Usage(5, 3)]


async def test_think_tags_in_content_become_thinking(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, think_tags=True))
    fake.reply(TextDelta("<think>\nStep one.</think>\n\nThe answer"), TextDelta(" is 4."))
    try:
        events = await collect(adapter.stream(whole("2+2?"), "m"))
    finally:
        await adapter.close()
    assert thinking_of(events) == "Step one."
    assert text_of(events) == "The answer is 4."


async def test_upstream_400_is_rejected_with_its_message(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(400, "invalid JSON schema in response_format")
    with pytest.raises(UpstreamRejected) as caught:
        await collect(adapter.stream(whole("hi"), "m"))
    assert caught.value.status == 400
    assert "invalid JSON schema in response_format" in caught.value.message


async def test_upstream_500_is_unavailable(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(500, "CUDA out of memory")
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(whole("hi"), "m"))
    assert caught.value.retryable


async def test_error_while_generating_is_unavailable(pair: tuple[FakeBackend, Adapter]) -> None:
    """Non-streamed, nothing reached the client yet: another backend may retry."""
    fake, adapter = pair
    fake.reply(TextDelta("Partial"), ErrorLine("model crashed"))
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(whole("hi"), "m"))
    assert "model crashed" in caught.value.message


@pytest.mark.parametrize("step", [Raw(b"this is not JSON"), Raw(b"[1, 2]"), Raw(b'{"unexpected": 1}'), Drop()],
                         ids=["not-json", "not-object", "no-answer", "dropped"])
async def test_unreadable_or_lost_answer_is_unavailable(pair: tuple[FakeBackend, Adapter], step: Any) -> None:
    fake, adapter = pair
    fake.reply(step)
    with pytest.raises(BackendUnavailable):
        await collect(adapter.stream(whole("hi"), "m"))


async def test_unreachable_backend(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, url=fake.url.replace(str(fake.port), str(closed_port()))))
    try:
        with pytest.raises(BackendUnavailable):
            await collect(adapter.stream(whole("hi"), "m"))
    finally:
        await adapter.close()


async def test_first_token_timeout_bounds_the_whole_call(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, first_token_timeout=0.2))
    fake.reply(TextDelta("never"), Hang())
    begin = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await collect(adapter.stream(whole("hi"), "m"))
    finally:
        await adapter.close()
    assert caught.value.retryable
    assert time.monotonic() - begin < 1.5
    # The timed-out upstream request was closed, not left generating.
    await fake.wait_closed(0.1)


async def test_idle_timeout_does_not_apply(pair: tuple[FakeBackend, Adapter]) -> None:
    """Silence is normal while a non-streamed answer is generated."""
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, idle_timeout=0.05, first_token_timeout=5))
    fake.reply(TextDelta("slow"), Sleep(0.3), TextDelta(" answer"))
    try:
        assert text_of(await collect(adapter.stream(whole("hi"), "m"))) == "slow answer"
    finally:
        await adapter.close()


async def test_cancelling_the_wait_closes_the_upstream_connection(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Thinking very hard"), Hang())
    stream = adapter.stream(whole("hi"), "m")
    task = asyncio.create_task(anext(stream))
    # Wait until the request is at the fake, then leave.
    while not fake.streams:
        await asyncio.sleep(0.002)
    begin = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()  # type: ignore[attr-defined]
    assert await fake.wait_closed(0.1) < 0.1
    assert time.monotonic() - begin < 0.1
    # The adapter still works afterwards (the pool is not poisoned).
    fake.reply(TextDelta("again"))
    assert text_of(await collect(adapter.stream(whole("hi"), "m"))) == "again"


async def test_finished_answers_reuse_the_connection(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    for _ in range(3):
        fake.reply(TextDelta("ok"))
        await collect(adapter.stream(whole("hi"), "m"))
    peers = {r.peer for r in fake.requests if r.path == fake.chat_path}
    assert len(peers) == 1, "each request opened a new connection"


async def test_streamed_requests_still_stream(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("Hel"), TextDelta("lo!"), usage=(9, 2))
    events = await collect(adapter.stream(chat("Say hello", stream=True), "m"))
    assert events == [TextDelta("Hel"), TextDelta("lo!"), Finish("stop"), Usage(9, 2)]
    assert fake.last_body["stream"] is True
    if fake.kind != "ollama":
        assert fake.last_body["stream_options"] == {"include_usage": True}
