"""The Responses API's request and response types (msgspec).

The request types validate ``POST /responses`` bodies; the response types are
what the encoder writes. Both feed the OpenAPI document, so what is documented
is what is checked and sent. Field names follow the official ``openai`` SDK's
``types/responses`` models.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from privatai.core.json_bounds import INT64_MAX, Int64

# The same efforts the chat endpoint takes, so both endpoints route alike.
Effort = Literal["none", "minimal", "low", "medium", "high"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# --------------------------------------------------------------------------
# Request


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class OutputTextInput(msgspec.Struct, tag_field="type", tag="output_text"):
    """An earlier answer's text, replayed by the client as context."""

    text: str
    annotations: list[Any] = []


class RefusalInput(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = Union[InputText, OutputTextInput, RefusalInput]


class MessageInput(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    """A message; ``type`` may be left out, as the SDKs' easy input does."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[ContentPart]]
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallInput(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    """A tool call the model made earlier, replayed with its output."""

    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputInput(msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True):
    call_id: str
    output: Union[str, list[InputText]]
    id: str | None = None
    status: ItemStatus | None = None


class SummaryText(msgspec.Struct, tag_field="type", tag="summary_text"):
    text: str


class ReasoningText(msgspec.Struct, tag_field="type", tag="reasoning_text"):
    text: str


class ReasoningInput(msgspec.Struct, tag_field="type", tag="reasoning", kw_only=True):
    """Earlier reasoning, replayed: its text goes back to the model with the
    next assistant turn, as the chat endpoint's ``thinking`` does."""

    summary: list[SummaryText] = []
    id: str | None = None
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


InputItem = Union[MessageInput, FunctionCallInput, FunctionCallOutputInput, ReasoningInput]


class FunctionTool(msgspec.Struct, tag_field="type", tag="function", kw_only=True):
    name: str
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ToolChoiceFunction(msgspec.Struct, tag_field="type", tag="function"):
    name: str


ToolChoice = Union[Literal["auto", "none", "required"], ToolChoiceFunction]


class Reasoning(msgspec.Struct, kw_only=True):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class FormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class FormatJSONObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class FormatJSONSchema(msgspec.Struct, tag_field="type", tag="json_schema", kw_only=True):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


TextFormat = Union[FormatText, FormatJSONObject, FormatJSONSchema]


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=FormatText)
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """A validated ``POST /responses`` body (unknown fields are ignored, as on
    the chat endpoint). Stateless: nothing of a request outlives it."""

    input: Union[str, Annotated[list[InputItem], msgspec.Meta(min_length=1)]]
    model: str | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = False
    metadata: dict[str, str] | None = None
    # Refused when set (see translate.py): each needs state or a feature the
    # gateway does not have, and dropping it silently would mislead.
    previous_response_id: str | None = None
    conversation: Union[str, dict[str, Any], None] = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: Int64 | None = None
    max_tool_calls: Int64 | None = None
    # An end-user id for abuse monitoring at OpenAI; nothing here keeps it.
    user: str | None = None
    safety_identifier: str | None = None


# --------------------------------------------------------------------------
# Response


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    id: str
    status: ItemStatus
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class ReasoningItem(msgspec.Struct, tag_field="type", tag="reasoning", kw_only=True):
    """The backend's reasoning text, as the summary (all of it: nothing is
    condensed), so that clients that show summaries show it."""

    id: str
    summary: list[SummaryText]
    status: ItemStatus


class FunctionCallItem(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Union[OutputMessage, ReasoningItem, FunctionCallItem]


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class ResponseError(msgspec.Struct):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(msgspec.Struct, kw_only=True):
    """The ``response`` object, whole or as a streamed snapshot."""

    id: str
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    output: list[OutputItem]
    tools: list[FunctionTool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    text: TextConfig
    reasoning: Reasoning
    object: Literal["response"] = "response"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    previous_response_id: None = None
    background: Literal[False] = False
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str] = {}
    usage: ResponseUsage | None = None

