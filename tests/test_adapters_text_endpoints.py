"""Each backend kind's adapter for legacy text completions and embeddings,
against its fake on a real socket: the exact upstream body, and the events or
vectors that come back."""
from __future__ import annotations

import json
from typing import Any

import pytest

from privatai.adapters.base import Adapter
from privatai.core.completions import CompletionRequest, parse_completion_request
from privatai.core.embeddings import parse_embeddings_request
from privatai.core.events import Finish, TextDelta, Usage
from privatai.errors import InvalidRequest, UpstreamRejected
from tests.adapter_helpers import collect, finish_of, text_of, usage_of
from tests.fakes import FakeBackend
from tests.fakes.endpoints import fake_vector

COMPLETION_PATH = {"ollama": "/api/generate", "llamacpp": "/v1/completions", "vllm": "/v1/completions",
                   "openai": "/v1/completions"}
EMBED_PATH = {"ollama": "/api/embed", "llamacpp": "/v1/embeddings", "vllm": "/v1/embeddings",
              "openai": "/v1/embeddings"}


def completion(**fields: Any) -> CompletionRequest:
    return parse_completion_request(json.dumps({"model": "m", "prompt": "Once upon", **fields}).encode())


@pytest.mark.parametrize("stream", [True, False])
async def test_completion_continues_the_raw_prompt(pair: tuple[FakeBackend, Adapter], stream: bool) -> None:
    fake, adapter = pair
    fake.reply(TextDelta(" a"), TextDelta(" time"), finish="length", usage=(3, 2))
    request = completion(stream=stream, max_tokens=2, temperature=0.3, stop=["\n"], seed=5,
                         presence_penalty=0.5)
    events = await collect(adapter.complete_text(request, "Once upon", "upstream-m"))
    assert text_of(events) == " a time"
    assert finish_of(events) == "length"
    assert usage_of(events) == Usage(3, 2)
    if stream:
        # Passed on as it arrived, not gathered.
        assert [e.text for e in events if isinstance(e, TextDelta)] == [" a", " time"]
    body = fake.bodies(COMPLETION_PATH[fake.kind])[-1]
    assert body["model"] == "upstream-m" and body["prompt"] == "Once upon" and body["stream"] is stream
    assert "messages" not in body
    if fake.kind == "ollama":
        # raw: no chat template around the prompt.
        assert body["raw"] is True
        assert body["options"] == {"num_predict": 2, "temperature": 0.3, "stop": ["\n"], "seed": 5,
                                   "presence_penalty": 0.5}
    else:
        assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"],
                body["presence_penalty"]) == (2, 0.3, ["\n"], 5, 0.5)
        assert body.get("stream_options") == ({"include_usage": True} if stream else None)
    assert fake.chat_bodies == []


async def test_completion_upstream_refusal_is_a_400(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(400, "prompt too long", error_type="invalid_request_error")
    with pytest.raises(UpstreamRejected):
        await collect(adapter.complete_text(completion(stream=True), "x", "m"))


async def test_embeddings_in_input_order(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    request = parse_embeddings_request(b'{"model": "m", "input": ["first text", "second"]}')
    result = await adapter.embed(request, request.texts(), "upstream-m")
    assert result.vectors == [fake_vector("first text"), fake_vector("second")]
    assert result.prompt_tokens == 3
    body = fake.bodies(EMBED_PATH[fake.kind])[-1]
    assert body["model"] == "upstream-m" and body["input"] == ["first text", "second"]
    if fake.kind == "ollama":
        assert body["truncate"] is False  # an over-long input is an error, not silently cut
    else:
        assert body["encoding_format"] == "float"


async def test_embedding_dimensions_where_the_backend_takes_them(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    request = parse_embeddings_request(b'{"model": "m", "input": "x", "dimensions": 4}')
    if fake.kind == "llamacpp":
        with pytest.raises(InvalidRequest) as info:
            await adapter.embed(request, request.texts(), "m")
        assert info.value.param == "dimensions" and "llamacpp" in info.value.message
        assert fake.bodies(EMBED_PATH[fake.kind]) == []
        return
    result = await adapter.embed(request, request.texts(), "m")
    assert result.vectors == [fake_vector("x", 4)]
    assert fake.bodies(EMBED_PATH[fake.kind])[-1]["dimensions"] == 4


async def test_events_end_with_one_finish(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    events = await collect(adapter.complete_text(completion(stream=True), "x", "m"))
    assert sum(isinstance(e, Finish) for e in events) == 1 and text_of(events) == fake.default_text
