"""Embeddings, legacy completions and the Responses API through every
backend kind, with the official openai SDK as the client: what it returns,
what each fake received, and what /usage then reports.

Each kind is a fake on a real socket speaking that backend's wire format; the
gateway is the real app with its real adapters, served in the test's loop.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio

from privatai.core import tokens
from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta
from tests.fakes import ErrorLine, FakeBackend
from tests.fakes.endpoints import fake_vector, prompt_count
from tests.gateway import LocalGateway, local_gateway_on_fake

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ["ollama", "llamacpp", "vllm", "openai"]
COMPLETION_PATH = {"ollama": "/api/generate", "llamacpp": "/v1/completions", "vllm": "/v1/completions",
                   "openai": "/v1/completions"}
EMBED_PATH = {"ollama": "/api/embed", "llamacpp": "/v1/embeddings", "vllm": "/v1/embeddings",
              "openai": "/v1/embeddings"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Setup:
    def __init__(self, fake: FakeBackend, gateway: LocalGateway) -> None:
        self.fake, self.gateway = fake, gateway

    async def client(self) -> tuple[openai.AsyncOpenAI, str]:
        """A client with a fresh key, so that /usage shows only this test's requests."""
        key = await self.gateway.key()
        return openai.AsyncOpenAI(base_url=self.gateway.base_url, api_key=key, max_retries=0, timeout=30), key

    async def usage(self, key: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200
        return answer.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=KINDS)
async def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    kind = request.param
    async with local_gateway_on_fake(kind, tmp_path_factory.mktemp(f"gw-{kind}"), "public-model") as (fake, gateway):
        yield Setup(fake, gateway)


# --------------------------------------------------------------------------
# Embeddings


async def test_embeddings_in_order_metered_as_prompt_tokens(setup: Setup) -> None:
    client, key = await setup.client()
    texts = ["the first input", "and a second one"]
    # The SDK asks for base64 and decodes it to floats itself.
    answer = await client.embeddings.create(model="public-model", input=texts)
    assert [d.embedding for d in answer.data] == [fake_vector(t) for t in texts]
    assert [d.index for d in answer.data] == [0, 1] and answer.model == "public-model"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (prompt_count(texts),) * 2
    upstream = setup.fake.bodies(EMBED_PATH[setup.fake.kind])[-1]
    assert upstream["model"] == "fake-model" and upstream["input"] == texts

    floats = await client.embeddings.create(model="public-model", input="one", encoding_format="float")
    assert floats.data[0].embedding == fake_vector("one")
    # Token arrays (what tiktoken-based clients send) reach the backend as text.
    ids = tokens.encoding().encode_ordinary("Hello world")
    await client.embeddings.create(model="public-model", input=[ids])
    assert setup.fake.bodies(EMBED_PATH[setup.fake.kind])[-1]["input"] == ["Hello world"]

    usage = await setup.usage(key)
    total = prompt_count(texts) + prompt_count(["one"]) + prompt_count(["Hello world"])
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (3, total, 0)


async def test_embedding_dimensions_or_a_400_naming_them(setup: Setup) -> None:
    client, _ = await setup.client()
    if setup.fake.kind == "llamacpp":
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="public-model", input="x", dimensions=4)
        assert info.value.body["param"] == "dimensions" and "llamacpp" in info.value.body["message"]
        return
    answer = await client.embeddings.create(model="public-model", input="x", dimensions=4)
    assert answer.data[0].embedding == fake_vector("x", 4)
    # More than the model has: the backend's refusal, as a 400.
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="public-model", input="x", dimensions=5000)
    assert "at most 1024" in info.value.body["message"]


async def test_bad_embedding_requests(setup: Setup) -> None:
    client, _ = await setup.client()
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="public-model", input=["fine", ""])
    assert info.value.body["param"] == "input[1]"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="no-such-model", input="x")
    assert missing.value.body["code"] == "model_not_found"


# --------------------------------------------------------------------------
# Legacy completions


async def test_completion_whole_and_streamed(setup: Setup) -> None:
    client, key = await setup.client()
    setup.fake.reply(TextDelta(" upon"), TextDelta(" a time"), finish="length", usage=(3, 2))
    whole = await client.completions.create(model="public-model", prompt="Once", max_tokens=2, temperature=0.2)
    assert whole.choices[0].text == " upon a time" and whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, 2)
    assert whole.object == "text_completion" and whole.model == "public-model"
    upstream = setup.fake.bodies(COMPLETION_PATH[setup.fake.kind])[-1]
    assert upstream["prompt"] == "Once" and upstream["model"] == "fake-model"

    setup.fake.reply(TextDelta(" upon"), TextDelta(" a time"), usage=(3, 2))
    stream = await client.completions.create(model="public-model", prompt=["Once"], stream=True,
                                             stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " upon a time"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")

    usage = await setup.usage(key)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 6, 4)


async def test_completion_failure_after_the_first_token_is_in_band(setup: Setup) -> None:
    client, _ = await setup.client()
    setup.fake.reply(TextDelta("Once"), ErrorLine("model crashed", code=500))
    stream = await client.completions.create(model="public-model", prompt="x", stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk.choices[0].text)
    assert received == ["Once"]


async def test_completion_refusals(setup: Setup) -> None:
    client, _ = await setup.client()
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="public-model", prompt=["a", "b"])
    assert info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="public-model", prompt="a", echo=True)
    assert info.value.body["param"] == "echo"


# --------------------------------------------------------------------------
# Responses


async def test_response_text_whole_and_streamed(setup: Setup) -> None:
    client, key = await setup.client()
    setup.fake.reply(TextDelta("Hello"), TextDelta(" there"), usage=(9, 2))
    response = await client.responses.create(model="public-model", input="Hi", instructions="Be brief.")
    assert response.output_text == "Hello there" and response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 2)
    assert response.model == "public-model" and response.id.startswith("resp_")
    sent = setup.fake.last_body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1]["content"] == "Hi"

    setup.fake.reply(TextDelta("Hello"), TextDelta(" there"), usage=(9, 2))
    async with client.responses.stream(model="public-model", input="Hi") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 2 and kinds[-1] == "response.completed"
    assert final.output_text == "Hello there" and final.usage.total_tokens == 11

    usage = await setup.usage(key)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 18, 4)


async def test_response_function_call_round_trip(setup: Setup) -> None:
    client, _ = await setup.client()
    setup.fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"city": "Berlin"}'))
    async with client.responses.stream(model="public-model", input="Weather in Berlin?", tools=[WEATHER]) as stream:
        kinds = [event.type async for event in stream]
        first = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    call = first.output[-1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Berlin"})
    assert setup.fake.last_body["tools"][0]["function"]["name"] == "get_weather"

    setup.fake.reply(TextDelta("Sunny."))
    second = await client.responses.create(model="public-model", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Berlin?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"}])
    assert second.output_text == "Sunny."
    sent = setup.fake.last_body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert "22 C, sunny" in json.dumps(sent[2])


async def test_response_reasoning_as_a_reasoning_item(setup: Setup) -> None:
    client, _ = await setup.client()
    setup.fake.reply(ThinkingDelta("Two and two."), TextDelta("4"))
    response = await client.responses.create(model="public-model", input="2+2?")
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Two and two." and response.output_text == "4"


async def test_nothing_is_stored(setup: Setup) -> None:
    client, _ = await setup.client()
    # Chat requests only: health probes reach the fake meanwhile.
    asked = len(setup.fake.chat_bodies)
    for extra in ({"store": True}, {"previous_response_id": "resp_123"}):
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="public-model", input="Hi", **extra)
        assert info.value.body["param"] == next(iter(extra))
        assert "stores no prompts" in info.value.body["message"]
    assert len(setup.fake.chat_bodies) == asked
