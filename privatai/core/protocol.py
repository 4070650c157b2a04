"""OpenAI chat protocol: the request types and their validation.

Requests are decoded straight into typed msgspec structs, so a wrong type is a
400 that names the field (``messages[0].content``) without hand-written checks;
:mod:`privatai.core.json_bounds` bounds nesting and integer size at the same
step. The response side is :mod:`privatai.core.encoders`.
"""
from __future__ import annotations

from typing import Annotated, Any, Iterator, Literal, Union

import msgspec

from privatai.core.json_bounds import INT64_MAX, MAX_DEPTH, BoundsError, Int64, check_free_form, too_deep_at
from privatai.errors import InvalidRequest
from privatai.core.validation import invalid_body

# --------------------------------------------------------------------------
# Request types


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    """An assistant turn's refusal, as the SDK sends one back in a history."""

    refusal: str


Content = Union[str, list[TextPart]]
# Only user turns may carry images, and only assistant turns refusals, as in OpenAI's API.
UserContent = Union[str, list[Union[TextPart, ImagePart]]]
AssistantContent = Union[str, list[Union[TextPart, RefusalPart]]]


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(msgspec.Struct, tag_field="role", tag="system"):
    content: Content
    name: str | None = None


class DeveloperMessage(msgspec.Struct, tag_field="role", tag="developer"):
    """Newer OpenAI SDKs send ``developer`` where older ones sent ``system``."""

    content: Content
    name: str | None = None


class UserMessage(msgspec.Struct, tag_field="role", tag="user"):
    content: UserContent
    name: str | None = None


class AssistantMessage(msgspec.Struct, tag_field="role", tag="assistant"):
    content: AssistantContent | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    # Clients that replay reasoning send one of these back; we keep it for
    # backends that accept it (Ollama's ``thinking``).
    thinking: str | None = None
    reasoning_content: str | None = None


class ToolMessage(msgspec.Struct, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: str


Message = Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage]


class FunctionDef(msgspec.Struct, omit_defaults=True):
    # omit_defaults: unset fields are left out upstream, not sent as null
    # (strict servers reject "strict": null).
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class LegacyFunctionCall(msgspec.Struct):
    """A named ``function_call`` of the legacy functions API."""

    name: str


class Reasoning(msgspec.Struct):
    """The Responses-style ``reasoning: {effort}`` that xAI-style clients send."""

    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None


Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """A validated ``POST /chat/completions`` body (unknown fields ignored,
    as OpenAI clients send many we do not need)."""

    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: str | None = None
    # None only while decoding: parse_chat_request settles an absent field
    # (format negotiation), so every request seen after it has a bool.
    stream: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: Int64 | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    reasoning: Reasoning | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, msgspec.Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    parallel_tool_calls: bool | None = None
    # The legacy functions API; parse_chat_request turns it into tools.
    functions: list[FunctionDef] | None = None
    function_call: Literal["none", "auto"] | LegacyFunctionCall | None = None
    # Sampling extras of self-hosted servers (vLLM, llama.cpp, Ollama).
    top_k: Annotated[int, msgspec.Meta(ge=-1)] | None = None
    min_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_options(self, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
        """The sampling options the client set, under OpenAI's names (the
        output limit under ``max_tokens_key``). Unset ones are left out, so
        the model's own defaults apply rather than ours."""
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.max_output_tokens is not None:
            options[max_tokens_key] = self.max_output_tokens
        if self.stop is not None:
            options["stop"] = self.stop_list
        if self.seed is not None:
            options["seed"] = self.seed
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def free_form(self) -> Iterator[tuple[str, object]]:
        """The values whose shape is the client's (JSON schemas, a tool choice),
        by path: the only ones the types above cannot bound."""
        for i, tool in enumerate(self.tools or ()):
            if tool.function.parameters is not None:
                yield f"tools[{i}].function.parameters", tool.function.parameters
        if self.response_format is not None and self.response_format.json_schema is not None:
            yield "response_format.json_schema", self.response_format.json_schema
        if isinstance(self.tool_choice, dict):
            yield "tool_choice", self.tool_choice
        if self.chat_template_kwargs is not None:
            yield "chat_template_kwargs", self.chat_template_kwargs


_decoder = msgspec.json.Decoder(ChatRequest)


def parse_chat_request(body: bytes, *, stream_default: bool = False) -> ChatRequest:
    """Decode and validate a request body; a clear 400 naming the field on error.

    ``stream_default`` is the answer format for a body without ``stream``
    (negotiated from the request's ``Accept``; OpenAI's default is false).
    """
    if not body:
        raise InvalidRequest("Request body is empty; expected a JSON object with 'messages'.")
    try:
        chat = _decoder.decode(body)
        check_free_form(chat.free_form())
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    except msgspec.DecodeError:
        raise InvalidRequest("Request body is not valid JSON.") from None
    except BoundsError as exc:
        raise InvalidRequest(f"Invalid request body: '{exc.path}' {exc.reason}.", param=exc.path) from None
    except RecursionError:
        # Deeper than the decoder follows, even in a field we would ignore.
        path = too_deep_at(body)
        where = f" at '{path}'" if path else ""
        raise InvalidRequest(f"Invalid request body: the body nests deeper than {MAX_DEPTH} levels{where}.",
                             param=path) from None
    chat = _normalized(chat, stream_default)
    if chat.tool_choice is not None and isinstance(chat.tool_choice, str) and chat.tool_choice not in (
        "auto", "none", "required"
    ):
        raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or an object.",
                             param="tool_choice")
    if isinstance(chat.tool_choice, dict):
        name = (chat.tool_choice.get("function") or {}).get("name")
        if name not in {tool.function.name for tool in chat.tools or ()}:
            raise InvalidRequest("tool_choice names a function that is not in 'tools'.", param="tool_choice")
    return chat


def _normalized(chat: ChatRequest, stream_default: bool) -> ChatRequest:
    """Cross-field rules OpenAI enforces, and the aliases folded into one field
    each: legacy ``functions``/``function_call`` become ``tools``/``tool_choice``,
    ``reasoning.effort`` becomes ``reasoning_effort``; an absent ``stream`` is
    ``stream_default``."""
    changes: dict[str, Any] = {}
    stream = chat.stream
    if stream is None:
        stream = changes["stream"] = stream_default
    if chat.stream_options is not None and not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
    if chat.top_logprobs is not None and not chat.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    if chat.functions is not None:
        if chat.tools is not None:
            raise InvalidRequest("Send either 'tools' or the legacy 'functions', not both.", param="functions")
        changes["tools"] = [Tool(function=f) for f in chat.functions]
    if chat.function_call is not None:
        if chat.tool_choice is not None:
            raise InvalidRequest("Send either 'tool_choice' or the legacy 'function_call', not both.",
                                 param="function_call")
        call = chat.function_call
        changes["tool_choice"] = call if isinstance(call, str) else {"type": "function",
                                                                    "function": {"name": call.name}}
    if chat.reasoning is not None and chat.reasoning.effort is not None:
        if chat.reasoning_effort not in (None, chat.reasoning.effort):
            raise InvalidRequest("reasoning.effort and reasoning_effort disagree.", param="reasoning.effort")
        changes["reasoning_effort"] = chat.reasoning.effort
    return msgspec.structs.replace(chat, **changes) if changes else chat


def text_of(content: Content | AssistantContent | None) -> str:
    """The text of a message's content, text parts joined; a refusal is what
    the assistant said, so backends (which know no refusal parts) get it as text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text if type(part) is TextPart else part.refusal
                   for part in content if type(part) is TextPart or type(part) is RefusalPart)


def image_urls(message: Message) -> list[str]:
    """The image URLs of a user turn (data URLs or remote ones)."""
    if not isinstance(message, UserMessage) or isinstance(message.content, str):
        return []
    return [part.image_url.url for part in message.content if type(part) is ImagePart]


def message_to_openai(message: Message) -> dict[str, Any]:
    """A message as plain OpenAI JSON with string content (for OpenAI-style upstreams)."""
    if isinstance(message, AssistantMessage):
        out: dict[str, Any] = {"role": "assistant", "content": text_of(message.content)}
        if message.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in message.tool_calls
            ]
            if message.content is None:
                out["content"] = None
        if message.name is not None:
            out["name"] = message.name
        return out
    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": text_of(message.content), "tool_call_id": message.tool_call_id}
    role = "system" if isinstance(message, DeveloperMessage) else message.__struct_config__.tag
    if image_urls(message):
        # Images go as OpenAI content parts, which these servers take as they are.
        out = {"role": role, "content": msgspec.to_builtins(message.content)}
    else:
        out = {"role": role, "content": text_of(message.content)}
    if message.name is not None:
        out["name"] = message.name
    return out


def tools_to_openai(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    return msgspec.to_builtins(tools) if tools else None
