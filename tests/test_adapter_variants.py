"""Each kind's own quirks (the variants each fake in ``tests/fakes/`` speaks), over real sockets."""
from __future__ import annotations

import re
from typing import AsyncIterator

import pytest

from privatai.adapters.base import Adapter
from privatai.errors import BackendError, BackendUnavailable, ConfigError, InvalidRequest, UpstreamRejected
from privatai.core.events import Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from tests.adapter_helpers import (
    API_KEY,
    API_KEY_ENV,
    WEATHER_TOOL,
    backend_config,
    chat,
    collect,
    finish_of,
    started_adapter,
    text_of,
    thinking_of,
    tool_calls_of,
    usage_of,
)
from tests.fakes import Drop, ErrorLine, FakeBackend, FakeLlamaCpp, FakeOllama, FakeOpenAI, FakeVLLM, Raw, Sleep


async def _open(fake: FakeBackend, **config: object) -> tuple[FakeBackend, Adapter]:
    await fake.start()
    return fake, await started_adapter(backend_config(fake, **config))


@pytest.fixture
async def llama() -> AsyncIterator[tuple[FakeBackend, Adapter]]:
    fake, adapter = await _open(FakeLlamaCpp())
    yield fake, adapter
    await adapter.close()
    await fake.stop()


@pytest.fixture
async def ollama() -> AsyncIterator[tuple[FakeBackend, Adapter]]:
    fake, adapter = await _open(FakeOllama())
    yield fake, adapter
    await adapter.close()
    await fake.stop()


# -- llama.cpp ----------------------------------------------------------------


async def test_llamacpp_null_first_delta_and_32_alnum_tool_ids(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Kyoto"}}'))
    events = await collect(adapter.stream(chat("Kyoto?", tools=[WEATHER_TOOL]), "m"))
    [call] = tool_calls_of(events)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", call["id"])
    assert finish_of(events) == "tool_calls"
    # The content-null role chunk produced no empty text event.
    assert not any(isinstance(e, TextDelta) for e in events)


async def test_llamacpp_context_overflow_is_a_400_with_openai_code(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.fail(400, "the request exceeds the available context size, try increasing it",
              error_type="exceed_context_size_error")
    with pytest.raises(UpstreamRejected) as caught:
        await collect(adapter.stream(chat("long " * 100), "m"))
    assert caught.value.status == 400
    assert caught.value.code == "context_length_exceeded"
    assert "exceeds the available context size" in caught.value.message


async def test_llamacpp_loading_503_and_health(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    await adapter.probe()
    fake.healthy = False
    with pytest.raises(BackendUnavailable):
        await adapter.probe()
    fake.fail(503, "Loading model")
    with pytest.raises(BackendUnavailable):
        await collect(adapter.stream(chat("hi"), "m"))


@pytest.mark.parametrize(("code", "kind", "expected"), [
    (503, "unavailable_error", BackendUnavailable),
    (400, "exceed_context_size_error", UpstreamRejected),
])
async def test_llamacpp_in_band_error_before_first_token(llama: tuple[FakeBackend, Adapter], code: int,
                                                         kind: str, expected: type[Exception]) -> None:
    fake, adapter = llama
    fake.reply(ErrorLine("no", code=code, type=kind))
    with pytest.raises(expected):
        await collect(adapter.stream(chat("hi"), "m"))


async def test_llamacpp_old_error_field_mid_stream(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(TextDelta("Hi"), Raw(b'error: {"code": 500, "message": "slot died", "type": "server_error"}\n\n'))
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("Hi")
    with pytest.raises(BackendError, match="slot died"):
        await anext(stream)


async def test_sse_lines_split_across_reads_crlf_and_comments(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(
        Raw(b": keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel"),
        Sleep(0.05),
        Raw(b"lo\"},\"finish_reason\":null}]}\r\n\r\nda"),
        Sleep(0.05),
        Raw(b"ta: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\xc3"),
        Sleep(0.05),
        Raw(b"\xb6rld\"}}]}\n\n"),
    )
    events = await collect(adapter.stream(chat("hi"), "m"))
    assert text_of(events) == "Hello wörld"


async def test_usage_on_the_finish_chunk_is_taken(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(Raw(b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}],'
                   b'"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}\n\n'
                   b"data: [DONE]\n\n"), Drop())
    events = await collect(adapter.stream(chat("hi"), "m"))
    assert events == [TextDelta("ok"), Finish("stop"), Usage(4, 1)]


async def test_connection_dropped_mid_response(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(TextDelta("Half an ans"), Sleep(0.05), Drop())
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("Half an ans")
    with pytest.raises(BackendError) as caught:
        await anext(stream)
    assert not isinstance(caught.value, BackendUnavailable)


async def test_connection_dropped_after_finish_reason_is_a_normal_end(
        llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(Raw(b'data: {"choices":[{"index":0,"delta":{"content":"done"},"finish_reason":"length"}]}\n\n'),
               Drop())
    events = await collect(adapter.stream(chat("hi"), "m"))
    assert events == [TextDelta("done"), Finish("length")]


# -- vLLM -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "both"])
async def test_vllm_reasoning_fields_with_explicit_nulls_never_doubled(field: str) -> None:
    fake, adapter = await _open(FakeVLLM(reasoning_field=field))
    try:
        fake.reply(ThinkingDelta("Let me see."), ThinkingDelta(" Yes."), TextDelta("Yes."))
        events = await collect(adapter.stream(chat("?"), "m"))
    finally:
        await adapter.close()
        await fake.stop()
    assert events[:3] == [ThinkingDelta("Let me see."), ThinkingDelta(" Yes."), TextDelta("Yes.")]
    assert thinking_of(events) == "Let me see. Yes."


async def test_vllm_flat_errors_before_and_during_the_stream() -> None:
    fake, adapter = await _open(FakeVLLM(flat_errors=True))
    try:
        fake.fail(400, "This model's maximum context length is 4096 tokens. However, you requested 5000.")
        with pytest.raises(UpstreamRejected) as caught:
            await collect(adapter.stream(chat("hi"), "m"))
        assert caught.value.code == "context_length_exceeded"
        fake.reply(TextDelta("Part"), ErrorLine("engine dead", code=500, type="InternalServerError"))
        stream = adapter.stream(chat("hi"), "m")
        assert await anext(stream) == TextDelta("Part")
        with pytest.raises(BackendError, match="engine dead"):
            await anext(stream)
    finally:
        await adapter.close()
        await fake.stop()


async def test_vllm_tool_ids_and_forced_tool_choice_reports_tool_calls() -> None:
    fake, adapter = await _open(FakeVLLM())
    try:
        # vLLM ends a call forced by a named tool_choice with "stop".
        fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Rome"}}'), finish="stop")
        request = chat("Rome?", tools=[WEATHER_TOOL],
                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
        events = await collect(adapter.stream(request, "m"))
    finally:
        await adapter.close()
        await fake.stop()
    [call] = tool_calls_of(events)
    assert call["id"].startswith("chatcmpl-tool-")
    assert finish_of(events) == "tool_calls"
    assert fake.last_body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


# -- generic OpenAI -------------------------------------------------------------


async def test_openai_whole_tool_call_in_one_chunk_keeps_id_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    fake, adapter = await _open(FakeOpenAI(api_key=API_KEY, whole_tool_calls=True))
    try:
        fake.reply(ToolCallDelta(0, id="call_abc", name="get_weather", arguments='{"place": {"city": "Oslo"}}'))
        events = await collect(adapter.stream(chat("Oslo?", tools=[WEATHER_TOOL]), "m"))
    finally:
        await adapter.close()
        await fake.stop()
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "call_abc", "get_weather", '{"place": {"city": "Oslo"}}')]
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_openai_tool_fragments_without_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    fake, adapter = await _open(FakeOpenAI(api_key=API_KEY))
    frame = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[%s]},"finish_reason":null}]}\n\n'
    try:
        fake.reply(Raw(frame % b'{"id":"c1","type":"function","function":{"name":"a","arguments":"{\\"x\\""}}'),
                   Raw(frame % b'{"function":{"arguments":": 1}"}}'),
                   Raw(frame % b'{"id":"c2","type":"function","function":{"name":"b","arguments":"{}"}}'))
        events = await collect(adapter.stream(chat("go"), "m"))
    finally:
        await adapter.close()
        await fake.stop()
    assert tool_calls_of(events) == [{"id": "c1", "name": "a", "arguments": {"x": 1}},
                                     {"id": "c2", "name": "b", "arguments": {}}]
    assert finish_of(events) == "tool_calls"


async def test_openai_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOpenAI(api_key=API_KEY)
    await fake.start()
    try:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
        with pytest.raises(ConfigError, match=API_KEY_ENV):
            await started_adapter(backend_config(fake))
        monkeypatch.setenv(API_KEY_ENV, "sk-wrong")
        adapter = await started_adapter(backend_config(fake))
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await collect(adapter.stream(chat("hi"), "m"))
            assert caught.value.status == 502  # our credentials, not the client's
            assert "sk-wrong" not in caught.value.message
        finally:
            await adapter.close()
    finally:
        await fake.stop()


# -- Ollama ---------------------------------------------------------------------


@pytest.mark.parametrize("tool_ids", [True, False])
async def test_ollama_tool_calls_with_and_without_ids(tool_ids: bool) -> None:
    fake, adapter = await _open(FakeOllama(tool_ids=tool_ids))
    try:
        fake.reply(ToolCallDelta(0, id="call_up1", name="get_weather", arguments='{"place": {"city": "Lima"}}'),
                   ToolCallDelta(1, id="call_up2", name="get_weather", arguments='{"place": {"city": "Cusco"}}'))
        events = await collect(adapter.stream(chat("Peru?", tools=[WEATHER_TOOL]), "m"))
    finally:
        await adapter.close()
        await fake.stop()
    calls = tool_calls_of(events)
    assert [c["arguments"]["place"]["city"] for c in calls] == ["Lima", "Cusco"]
    ids = [c["id"] for c in calls]
    if tool_ids:
        assert ids == ["call_up1", "call_up2"]
    else:
        assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert [e.index for e in events if isinstance(e, ToolCallDelta)] == [0, 1]
    assert finish_of(events) == "tool_calls"


async def test_ollama_usage_and_thinking_fields(ollama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = ollama
    fake.reply(ThinkingDelta("Hmm."), TextDelta("Hi"), usage=(21, 2))
    events = await collect(adapter.stream(chat("hi", reasoning_effort="minimal"), "m"))
    assert events == [ThinkingDelta("Hmm."), TextDelta("Hi"), Finish("stop"), Usage(21, 2)]
    assert fake.last_body["think"] == "low"


async def test_ollama_reasoning_effort_none_and_tool_choice_none(ollama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = ollama
    await collect(adapter.stream(chat("hi", reasoning_effort="none", tools=[WEATHER_TOOL], tool_choice="none"),
                                 "m"))
    assert fake.last_body["think"] is False
    assert "tools" not in fake.last_body


async def test_ollama_missing_model_and_error_lines(ollama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = ollama
    fake.fail(404, 'model "m" not found, try pulling it first')
    with pytest.raises(BackendUnavailable, match="not found") as caught:
        await collect(adapter.stream(chat("hi"), "m"))
    assert caught.value.status == 502
    # An error line inside a 200 stream (status -1 in the package) is in-band.
    fake.reply(ErrorLine("llama runner process has terminated"))
    with pytest.raises(BackendError, match="terminated") as in_band:
        await collect(adapter.stream(chat("hi"), "m"))
    assert not isinstance(in_band.value, BackendUnavailable)


async def test_ollama_rejects_unparseable_tool_arguments_in_history(ollama: tuple[FakeBackend, Adapter]) -> None:
    _, adapter = ollama
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": "{not json"}}]},
               {"role": "tool", "tool_call_id": "c", "content": "r"}]
    with pytest.raises(InvalidRequest) as caught:
        await collect(adapter.stream(chat(history), "m"))
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


async def test_ollama_stream_cut_before_done(ollama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = ollama
    fake.reply(TextDelta("Hal"), Sleep(0.05), Drop())
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("Hal")
    with pytest.raises(BackendError):
        await anext(stream)


async def test_ollama_discovery_uses_tags(ollama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = ollama
    fake.models = ["qwen3:8b", "llama3.2:latest"]
    assert await adapter.list_models() == ["qwen3:8b", "llama3.2:latest"]
    assert fake.requests[-1].path == "/api/tags"


async def test_llamacpp_usage_absent_when_upstream_sends_none(llama: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = llama
    fake.reply(Raw(b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n'
                   b"data: [DONE]\n\n"), Drop())
    events = await collect(adapter.stream(chat("hi"), "m"))
    assert usage_of(events) is None


async def test_unreadable_chunks_become_our_errors(llama: tuple[FakeBackend, Adapter],
                                                   ollama: tuple[FakeBackend, Adapter]) -> None:
    for (fake, adapter), garbage in ((llama, b'data: {"choices": "nonsense"}\n\n'), (ollama, b"[1, 2]\n")):
        fake.reply(TextDelta("ok"), Raw(garbage))
        stream = adapter.stream(chat("hi"), "m")
        assert await anext(stream) == TextDelta("ok")
        with pytest.raises(BackendError, match="cannot read"):
            await anext(stream)
        fake.reply(Raw(b"data: not json\n\n" if fake.kind == "llamacpp" else b"not json\n"))
        with pytest.raises(BackendUnavailable):
            await collect(adapter.stream(chat("hi"), "m"))


async def test_ollama_behind_an_authenticating_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    fake, adapter = await _open(FakeOllama(), api_key_env=API_KEY_ENV)
    try:
        await collect(adapter.stream(chat("hi"), "m"))
    finally:
        await adapter.close()
        await fake.stop()
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"
