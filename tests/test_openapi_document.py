"""The OpenAPI document: built from the types that validate and encode, and
what the encoders send conforms to it (checked with a JSON Schema validator)."""
from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest

from privatai.api.openapi import OPERATIONS, openapi_document
from privatai.core.completions import completion_body
from privatai.core.embeddings import embeddings_response
from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.encoders import aggregate
from privatai.core.responses.builder import ResponseBuilder
from privatai.core.responses.translate import parse_responses_request
from privatai.errors import InvalidRequest


def validator(name: str) -> Any:
    doc = openapi_document()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_document_shape() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/api/v1/chat/completions", "/api/v1/responses", "/api/v1/completions",
                                 "/api/v1/embeddings", "/api/v1/models", "/api/v1/models/{model_id}",
                                 "/api/v1/usage", "/api/v1/openapi.json", "/healthz", "/readyz"}
    chat = doc["paths"]["/api/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearerAuth": []}]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key, privat_..."}
    # Every $ref points at a component that exists.
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in doc["components"]["schemas"], name


def test_request_schemas_are_the_validating_types() -> None:
    """The request schema says what the parser does: the same fields, the same limits."""
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["ChatRequest"]["required"] == ["messages"]
    assert schemas["ChatRequest"]["properties"]["temperature"]["anyOf"][0] == {
        "type": "number", "minimum": 0, "maximum": 2}
    assert schemas["EmbeddingsRequest"]["properties"]["encoding_format"]["enum"] == ["base64", "float"]
    assert {op.request.__name__ for op in OPERATIONS if op.request} == {
        "ChatRequest", "ResponsesRequest", "CompletionRequest", "EmbeddingsRequest"}
    valid = validator("ResponsesRequest")
    assert valid.is_valid({"input": "hi", "tools": [{"type": "function", "name": "f"}]})
    assert not valid.is_valid({"input": "hi", "temperature": 5})


def test_what_the_encoders_send_matches_the_document() -> None:
    events = [ThinkingDelta("t"), TextDelta("Hi"), ToolCallDelta(0, "c", "f", "{}")]
    chat = aggregate(events + [Usage(3, 4)], "chatcmpl-1", "m", thinking_fields=("thinking", "reasoning_content"))
    validator("ChatCompletion").validate(chat)
    builder = ResponseBuilder(parse_responses_request(b'{"input": "x"}'), "m")
    for event in events:
        builder.add(event)
    builder.finish("tool_calls", Usage(3, 4))
    validator("Response").validate(json.loads(builder.body()))
    validator("TextCompletion").validate(json.loads(completion_body("cmpl-1", 1, "m", "a", "stop", Usage(1, 1))))
    for encoding in ("float", "base64"):
        validator("EmbeddingsResponse").validate(json.loads(embeddings_response([[0.5]], "m", 1, encoding)))
    validator("Error").validate(InvalidRequest("bad", param="x").to_dict())
    with pytest.raises(jsonschema_rs.ValidationError):
        validator("ChatCompletion").validate({**chat, "choices": [{"index": 0}]})
