"""Embeddings and legacy completions without a server: validation, refusals
and the bodies we send, parsed by the official SDK's own types."""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse

from privatai.core import tokens
from privatai.core.completions import CompletionChunkEncoder, completion_body, parse_completion_request
from privatai.core.embeddings import embeddings_response, parse_embeddings_request
from privatai.core.events import TextDelta, Usage
from privatai.errors import InvalidRequest
from tests.sdk_types import strict


def error_of(parse: Any, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(json.dumps(body).encode())
    assert info.value.status == 400
    return info.value


# --------------------------------------------------------------------------
# Embeddings


def test_embedding_inputs_as_text() -> None:
    def texts(value: Any) -> list[str]:
        return parse_embeddings_request(json.dumps({"input": value}).encode()).texts()

    assert texts("one") == ["one"]
    assert texts(["a", "b"]) == ["a", "b"]
    # Token arrays are cl100k_base ids (what tiktoken-based clients send): decoded back to text.
    ids = tokens.encoding().encode_ordinary("Hello world")
    assert texts(ids) == ["Hello world"]
    assert texts([ids, tokens.encoding().encode_ordinary("again")]) == ["Hello world", "again"]


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": []}, "input"),
    ({"input": ["a", 1]}, "input"),
    ({"input": [10**7]}, "input"),
    ({"input": [[1], [-1]]}, "input[1][0]"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
])
def test_bad_embedding_requests_are_named(body: dict[str, Any], param: str) -> None:
    assert error_of(parse_embeddings_request, body).param == param


def test_embedding_response_float_and_base64() -> None:
    vectors = [[0.25, -1.5, 3.0], [1e-3, 0.0, 2.0]]
    floats = strict(CreateEmbeddingResponse, json.loads(embeddings_response(vectors, "m", 7, "float")))
    assert [d.embedding for d in floats.data] == vectors and [d.index for d in floats.data] == [0, 1]
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens, floats.model) == (7, 7, "m")
    # base64 is little-endian float32, as OpenAI sends it and numpy reads it.
    raw = json.loads(embeddings_response(vectors, "m", 7, "base64"))
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in raw["data"]]
    assert decoded == [list(np.float32(v)) for v in vectors]


# --------------------------------------------------------------------------
# Legacy completions


def test_completion_options() -> None:
    request = parse_completion_request(json.dumps({
        "prompt": "Once", "model": "m", "max_tokens": 5, "temperature": 0.1, "top_p": 0.5, "stop": ["\n"],
        "seed": 3, "presence_penalty": 1, "frequency_penalty": -1, "n": 1, "best_of": 1, "echo": False,
        "stream": True, "stream_options": {"include_usage": True}, "user": "u"}).encode())
    assert request.text() == "Once" and request.include_usage
    assert request.sampling_options() == {"max_tokens": 5, "temperature": 0.1, "top_p": 0.5, "seed": 3,
                                          "presence_penalty": 1, "frequency_penalty": -1, "stop": ["\n"]}


def test_completion_max_tokens_defaults_to_openais_16() -> None:
    assert parse_completion_request(b'{"prompt": "x"}').sampling_options() == {"max_tokens": 16}


@pytest.mark.parametrize("extra, param, code", [
    ({"n": 2}, "n", "unsupported_parameter"),
    ({"best_of": 3}, "best_of", "unsupported_parameter"),
    ({"echo": True}, "echo", "unsupported_parameter"),
    ({"suffix": "end"}, "suffix", "unsupported_parameter"),
    ({"logprobs": 1}, "logprobs", "unsupported_parameter"),
    ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_request"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_request"),
    ({"presence_penalty": 2.5}, "presence_penalty", "invalid_request"),
    ({"temperature": -1}, "temperature", "invalid_request"),
    ({"max_tokens": 0}, "max_tokens", "invalid_request"),
])
def test_completion_refusals_name_the_parameter(extra: dict[str, Any], param: str, code: str) -> None:
    error = error_of(parse_completion_request, {"prompt": "x", **extra})
    assert (error.param, error.code) == (param, code)


def test_completion_prompt_forms() -> None:
    assert error_of(parse_completion_request, {}).param == "prompt"
    assert parse_completion_request(b'{"prompt": ["only"]}').text() == "only"
    ids = tokens.encoding().encode_ordinary("Once upon a time")
    assert parse_completion_request(json.dumps({"prompt": ids}).encode()).text() == "Once upon a time"
    # A batch of prompts is refused by name rather than answered with one choice.
    batch = error_of(parse_completion_request, {"prompt": ["a", "b"]})
    assert (batch.param, batch.code) == ("prompt", "unsupported_parameter")


def test_whole_completion_body() -> None:
    body = strict(Completion, json.loads(completion_body("cmpl-1", 5, "m", "Hello", "length", Usage(3, 4))))
    assert [(c.index, c.text, c.finish_reason) for c in body.choices] == [(0, "Hello", "length")]
    assert (body.object, body.id, body.model, body.created) == ("text_completion", "cmpl-1", "m", 5)
    assert (body.usage.prompt_tokens, body.usage.completion_tokens, body.usage.total_tokens) == (3, 4, 7)
    # Only the reasons this endpoint knows: a tool-call finish cannot happen here and reads as stop.
    odd = json.loads(completion_body("cmpl-1", 5, "m", "x", "tool_calls", Usage(1, 1)))
    assert odd["choices"][0]["finish_reason"] == "stop"


def chunks(stream: bytes) -> list[dict[str, Any]]:
    frames = stream.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]


def sdk_chunk(chunk: dict[str, Any]) -> Completion:
    """A streamed chunk as the SDK's ``Completion``. Its model types
    ``finish_reason`` without null, which every chunk before a choice's last
    carries (at OpenAI too; the SDK builds stream chunks without validating),
    so that one field is checked here and the rest strictly."""
    choices = chunk["choices"]
    reasons = [c["finish_reason"] for c in choices]
    model = strict(Completion, {**chunk, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"}
                                                     for c in choices]})
    for choice, reason in zip(model.choices, reasons):
        choice.finish_reason = reason
    return model


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_completion_usage_placement(include_usage: bool) -> None:
    encoder = CompletionChunkEncoder("cmpl-2", 5, "m", include_usage=include_usage)
    stream = encoder.encode(TextDelta("He")) + encoder.encode(TextDelta("y")) + encoder.finish("length", Usage(3, 2))
    parsed = [sdk_chunk(c) for c in chunks(stream)]
    assert "".join(c.choices[0].text for c in parsed if c.choices) == "Hey"
    assert [c.choices[0].finish_reason for c in parsed if c.choices] == [None, None, "length"]
    with_usage = [c for c in parsed if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0].usage.total_tokens == 5
    # With include_usage, OpenAI's separate choices-less chunk; otherwise on the finish chunk.
    assert (with_usage[0].choices == []) is include_usage
    assert all(c.id == "cmpl-2" and c.object == "text_completion" for c in parsed)
