"""The gateway's own API as an OpenAPI 3.1 document (served at ``/openapi.json``
under each API prefix, without a key: it holds nothing but what the code
and the README already say, as OpenAI's own specification is public).

Request bodies are described by the very msgspec types that validate them
(``msgspec.json.schema_components``), and the new endpoints' responses by the
types that encode them, so the document cannot drift from the code. The
chat, models, usage and health bodies are built by hand-tuned encoders; the
structs below describe them, and the schemathesis test holds every live
response to this document.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Literal

import msgspec
from sanic import Request
from sanic.response import HTTPResponse, raw

from privatai.core.completions import CompletionRequest, CompletionUsage, TextCompletion
from privatai.core.embeddings import EmbeddingsRequest, EmbeddingsResponse
from privatai.core.protocol import ChatRequest
from privatai.core.responses.types import Response, ResponsesRequest

API_PREFIX = "/api/v1"
REF = "#/components/schemas/{name}"

# --------------------------------------------------------------------------
# Bodies that are encoded without a struct: described here.


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(msgspec.Struct):
    """Every error: an HTTP status with this body (OpenAI's shape)."""

    error: ErrorDetail


class ChatFunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ChatToolCall(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: ChatFunctionCall


class ChatCompletionMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ChatToolCall] | None = None
    # Reasoning text, under the field(s) ``server.thinking_field`` names.
    thinking: str | None = None
    reasoning_content: str | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletion(msgspec.Struct):
    """A whole chat completion; with ``stream: true`` the answer is SSE
    ``chat.completion.chunk`` events instead, ending in ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class Model(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[Model]


class UsageCounts(msgspec.Struct):
    tokens_used: int
    prompt_tokens: int
    completion_tokens: int
    requests: int


class UsageReport(msgspec.Struct, kw_only=True):
    """This key's (or with ``scope=account`` the account's) usage."""

    tokens_used: int
    prompt_tokens: int
    completion_tokens: int
    requests: int
    last_used: str | None
    models: dict[str, UsageCounts] | None = None


class OpenAPIDocument(msgspec.Struct):
    """This document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class Liveness(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct, omit_defaults=True):
    status: Literal["starting", "ready", "degraded", "unavailable"]
    backends: dict[str, Literal["unknown", "up", "failing", "down"]]
    # Only when degraded: what is missing ("store", "shared_state") and why.
    degraded: dict[str, str] = {}


# --------------------------------------------------------------------------
# Operations


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    response: type
    request: type | None = None
    # What each event of the text/event-stream answer to ``stream: true``
    # carries as its data (empty: the operation does not stream).
    stream_data: str = ""
    api: bool = True  # under the API prefixes
    key: bool = True  # needs an API key (only API operations do)
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    statuses: tuple[int, ...] = (200,)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/chat/completions", "Chat completion, whole or streamed", ChatCompletion,
              ChatRequest, stream_data="A chat.completion.chunk as JSON, an in-band {\"error\": ...} "
                                       "after a failure, and last [DONE]."),
    Operation("post", "/responses", "Responses API (stateless: nothing is stored)", Response,
              ResponsesRequest, stream_data="A Responses stream event as JSON, its type also in the "
                                            "event field; response.completed (or .incomplete, .failed) last."),
    Operation("post", "/completions", "Legacy text completion, whole or streamed", TextCompletion,
              CompletionRequest, stream_data="A text_completion chunk as JSON, an in-band {\"error\": ...} "
                                             "after a failure, and last [DONE]."),
    Operation("post", "/embeddings", "Embeddings of one or more inputs", EmbeddingsResponse, EmbeddingsRequest),
    Operation("get", "/models", "Models this gateway serves", ModelList),
    Operation("get", "/models/{model_id}", "One model", Model, parameters=(
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},)),
    Operation("get", "/usage", "Token usage of the calling key", UsageReport, parameters=(
        _query("since", {"type": "string", "format": "date"}, "First UTC day, inclusive."),
        _query("until", {"type": "string", "format": "date"}, "Last UTC day, inclusive."),
        _query("by_model", {"type": "boolean"}, "Add a per-model breakdown."),
        _query("scope", {"enum": ["key", "account"]}, "'account' sums every key of the account."))),
    Operation("get", "/openapi.json", "This OpenAPI document (no key needed)", OpenAPIDocument, key=False),
    Operation("get", "/healthz", "Liveness", Liveness, api=False, key=False),
    Operation("get", "/readyz", "Readiness: a healthy backend serves the default model", Readiness,
              api=False, key=False, statuses=(200, 503)),
)

# What an API operation can answer besides success (OpenAI's error JSON each).
API_ERRORS = {
    "400": "Invalid request; `param` names the field",
    "401": "Missing or unknown API key",
    "403": "The account or its plan refuses the request; `code` says why (docs/plans.md)",
    "404": "Unknown model or route",
    "413": "Body larger than the server accepts",
    "429": "At capacity or over the key's rate (with Retry-After; x-ratelimit-* where the plan sets rates)",
    "502": "The backend failed",
    "503": "No backend available",
}


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    name = op.response.__name__
    success: dict[str, Any] = {"application/json": {"schema": schemas[name]}}
    if op.stream_data:
        # In OpenAPI 3.1 the schema of an event stream describes each event.
        success["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"event": {"type": "string"}, "id": {"type": "string"},
                           "data": {"type": "string", "description": op.stream_data}}}}
    doc = (op.response.__doc__ or "").strip()
    responses: dict[str, Any] = {
        str(status): {"description": doc.splitlines()[0] if doc else "OK", "content": success}
        for status in op.statuses}
    if op.key:
        error = {"application/json": {"schema": schemas["Error"]}}
        responses.update({status: {"description": text, "content": error} for status, text in API_ERRORS.items()})
    out: dict[str, Any] = {
        "operationId": (op.method + op.path).replace("/", "_").replace("{", "").replace("}", ""),
        "summary": op.summary,
        "responses": responses,
        "security": [{"bearerAuth": []}] if op.key else [],
    }
    if op.parameters:
        out["parameters"] = list(op.parameters)
    if op.request is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": schemas[op.request.__name__]}}}
    return out


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole document (built once; it depends only on the code)."""
    types: list[Any] = [Error]
    for op in OPERATIONS:
        types += [op.response] + ([op.request] if op.request is not None else [])
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    schemas = {t.__name__: ref for t, ref in zip(types, refs)}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = API_PREFIX + op.path if op.api else op.path
        paths.setdefault(path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PrivatAI",
            "version": metadata.version("privatai"),
            "description": "A privacy-first, OpenAI-compatible LLM API: prompts and answers are never "
                           "stored or logged. Every path under /api/v1 is also served under /v1.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API key, privat_..."}},
        },
    }


@lru_cache(maxsize=1)
def _encoded() -> bytes:
    return msgspec.json.encode(openapi_document())


async def openapi_json(request: Request) -> HTTPResponse:
    """``GET /openapi.json``: the document, the same for every caller."""
    return raw(_encoded(), content_type="application/json")
