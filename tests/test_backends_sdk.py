"""Through every backend kind, the openai SDK sees the same results.

Each kind is a fake on a real socket speaking that backend's exact wire
format; the gateway is the real app with its real adapters, served in the
test's loop on a real port; the client is the SDK (its async client, as the
server shares the loop).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import openai
import orjson
import pytest
import pytest_asyncio

from privatai.adapters.reported_usage import MAX_REPORTED_TOKENS
from privatai.core import tokens
from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta
from privatai.core.protocol import parse_chat_request
from tests.fakes import FAKES, ErrorLine, FakeBackend
from tests.gateway import LocalGateway, local_gateway_on_fake

# The module's servers live in one event loop, shared by its tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ["ollama", "llamacpp", "vllm", "openai"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


class Setup:
    def __init__(self, fake: FakeBackend, gateway: LocalGateway, client: openai.AsyncOpenAI) -> None:
        self.fake, self.gateway, self.client = fake, gateway, client


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=KINDS)
async def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    """One fake and one gateway per kind, shared by the module's tests."""
    kind = request.param
    async with local_gateway_on_fake(kind, tmp_path_factory.mktemp(f"gw-{kind}")) as (fake, gateway):
        key = await gateway.key()
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
        yield Setup(fake, gateway, client)


async def chat(setup: Setup, messages: list[dict[str, Any]], **options: Any) -> Any:
    return await setup.client.chat.completions.create(model="chat-model", messages=messages, **options)


async def chunks_of(setup: Setup, messages: list[dict[str, Any]], **options: Any) -> list[Any]:
    return [chunk async for chunk in await chat(setup, messages, stream=True, **options)]


def extra(obj: Any, name: str) -> Any:
    return (obj.model_extra or {}).get(name)


async def test_plain_text_whole_and_streamed(setup: Setup) -> None:
    setup.fake.reply(TextDelta("Hello"), TextDelta(" world"), usage=(12, 2))
    completion = await chat(setup, [{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content == "Hello world"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 2)
    assert completion.model == "chat-model"
    assert setup.fake.last_body["model"] == "fake-model"

    setup.fake.reply(TextDelta("Hello"), TextDelta(" world"), usage=(12, 2))
    chunks = await chunks_of(setup, [{"role": "user", "content": "Hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert [c.usage.total_tokens for c in chunks if c.usage] == [14]


async def test_multi_turn_history_reaches_the_backend(setup: Setup) -> None:
    history = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "What is the capital of Germany?"},
               {"role": "assistant", "content": "The capital of Germany is Berlin."},
               {"role": "user", "content": "What is the population?"}]
    setup.fake.reply(TextDelta("About 3.7 million."))
    assert (await chat(setup, history)).choices[0].message.content == "About 3.7 million."
    sent = setup.fake.last_body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [(m["role"], m["content"]) for m in history]


async def test_thinking_streams_as_delta_thinking_and_is_never_doubled(setup: Setup) -> None:
    setup.fake.reply(ThinkingDelta("Let me "), ThinkingDelta("think."), TextDelta("Paris."))
    chunks = await chunks_of(setup, [{"role": "user", "content": "Capital of France?"}])
    thinking = "".join(extra(c.choices[0].delta, "thinking") or "" for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (thinking, text) == ("Let me think.", "Paris.")
    setup.fake.reply(ThinkingDelta("Hmm."), TextDelta("Paris."))
    message = (await chat(setup, [{"role": "user", "content": "Capital of France?"}])).choices[0].message
    assert (extra(message, "thinking"), message.content) == ("Hmm.", "Paris.")


async def test_tool_round_trip(setup: Setup) -> None:
    setup.fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"city": "Berlin"}'))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Berlin?"}]
    first = await chat(setup, messages, tools=TOOLS, tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Berlin"}
    sent_tools = setup.fake.last_body["tools"]
    assert sent_tools[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}

    # The same call streamed: one id and name, arguments in pieces that join up.
    setup.fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"city": "Berlin"}'))
    chunks = await chunks_of(setup, messages, tools=TOOLS)
    fragments = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert fragments[0].id and fragments[0].function.name == "get_weather"
    assert all(f.id is None and f.function.name is None for f in fragments[1:])
    assert json.loads("".join(f.function.arguments or "" for f in fragments)) == {"city": "Berlin"}

    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call.id, "type": "function",
                      "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    setup.fake.reply(TextDelta("It is sunny and 21 C in Berlin."))
    answer = await chat(setup, messages, tools=TOOLS)
    assert answer.choices[0].message.content == "It is sunny and 21 C in Berlin."
    assert answer.choices[0].finish_reason == "stop"
    sent = setup.fake.last_body["messages"]
    assistant, tool = sent[1], sent[2]
    arguments = assistant["tool_calls"][0]["function"]["arguments"]
    if setup.fake.kind == "ollama":
        assert arguments == {"city": "Berlin"}  # Ollama wants an object
    else:
        assert json.loads(arguments) == {"city": "Berlin"}
    assert tool["role"] == "tool" and tool["content"] == "Sunny, 21 C"


async def test_length_cut_off(setup: Setup) -> None:
    setup.fake.reply(TextDelta("Once upon"), finish="length")
    completion = await chat(setup, [{"role": "user", "content": "Tell a story"}], max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Once upon"
    body = setup.fake.last_body
    sent_limit = body["options"]["num_predict"] if setup.fake.kind == "ollama" else body["max_tokens"]
    assert sent_limit == 2


async def test_upstream_errors(setup: Setup) -> None:
    setup.fake.fail(400, "This model's maximum context length is 2048 tokens",
                    error_type="exceed_context_size_error")
    with pytest.raises(openai.BadRequestError) as rejected:
        await chat(setup, [{"role": "user", "content": "very long"}])
    assert "context" in rejected.value.message
    setup.fake.fail(500, "CUDA out of memory")
    with pytest.raises(openai.InternalServerError) as failed:
        await chat(setup, [{"role": "user", "content": "x"}])
    assert failed.value.status_code in (502, 503)
    assert failed.value.body["type"] == "backend_error"


async def test_upstream_429_reaches_the_client_with_its_retry_after(setup: Setup) -> None:
    setup.fake.fail(429, "Rate limit reached, slow down", headers={"Retry-After": "3"})
    with pytest.raises(openai.RateLimitError) as limited:
        await chat(setup, [{"role": "user", "content": "x"}], stream=True)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body["type"] == "rate_limit_error"
    assert "slow down" in limited.value.message


async def test_upstream_usage_is_checked_before_it_is_billed(setup: Setup) -> None:
    messages = [{"role": "user", "content": "Count these words, please."}]
    setup.fake.reply(TextDelta("Five words, I count."), usage=(-7, 2**63))
    usage = (await chat(setup, messages)).usage
    # Nonsense is not reported: the gateway counts, as for an upstream that reports nothing.
    prompt = tokens.count_prompt(parse_chat_request(orjson.dumps({"model": "chat-model", "messages": messages})))
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, tokens.count_completion("Five words, I count."))
    setup.fake.reply(TextDelta("Huge."), usage=(2**63, 3))
    chunks = await chunks_of(setup, messages, stream_options={"include_usage": True})
    totals = [c.usage for c in chunks if c.usage]
    assert [(u.prompt_tokens, u.completion_tokens) for u in totals] == [(MAX_REPORTED_TOKENS, 3)]


async def test_mid_stream_error_arrives_in_band(setup: Setup) -> None:
    setup.fake.reply(TextDelta("partial"), ErrorLine("the model crashed"))
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in await chat(setup, [{"role": "user", "content": "x"}], stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "partial"
    assert "crashed" in str(info.value.message)


async def test_discovered_models_are_merged_into_models(tmp_path: Path) -> None:
    async with FAKES["ollama"](models=("llama3.2:latest", "qwen3:8b")) as fake:
        backend = {"name": "ollama", "kind": "ollama", "url": fake.url, "models": ["configured"],
                   "discover_models": True}
        gateway = LocalGateway(tmp_path, {"backends": [backend]})
        key = gateway.create_key()
        async with gateway:
            client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
            models = await client.models.list()
            assert sorted(m.id for m in models.data) == ["configured", "llama3.2:latest", "qwen3:8b"]
            fake.reply(TextDelta("hi"))
            reply = await client.chat.completions.create(model="qwen3:8b",
                                                         messages=[{"role": "user", "content": "x"}])
            assert reply.choices[0].message.content == "hi"
            assert fake.last_body["model"] == "qwen3:8b"
