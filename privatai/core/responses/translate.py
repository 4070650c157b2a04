"""``POST /responses`` bodies: validation, refusals, and the chat request they mean.

The Responses API is served statelessly on top of the chat path: a request
becomes one :class:`ChatRequest` (instructions as the system message, input
items as messages, function tools as tools), so routing, failover, capacity
and metering are the chat endpoint's. Whatever would need the server to keep
a prompt or a response (``store``, ``previous_response_id``, conversations,
background runs, stored prompts) is refused with a 400 that says why: this
gateway keeps no prompts.
"""
from __future__ import annotations

from typing import Any

from privatai.core.protocol import (AssistantMessage, ChatRequest, DeveloperMessage, FunctionCall,
                                    FunctionDef, Message, ResponseFormat, SystemMessage, Tool, ToolCall,
                                    ToolMessage, UserMessage)
from privatai.core.responses.types import (FormatJSONObject, FormatJSONSchema, FunctionCallInput,
                                           FunctionCallOutputInput, InputText, MessageInput,
                                           OutputTextInput, ReasoningInput, ResponsesRequest,
                                           ToolChoiceFunction)
from privatai.core.validation import convert, decode_json, refuse
from privatai.errors import InvalidRequest

NOTHING_STORED = ("this gateway stores no prompts and no responses (privacy), so there is nothing "
                  "to refer back to; send the whole conversation in 'input' (earlier output items "
                  "can be passed back as input items).")


def _stateful(param: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is not supported: {NOTHING_STORED}", param=param,
                          code="unsupported_parameter")


def _precheck(body: Any) -> None:
    """Clear refusals for item, part and tool kinds that OpenAI offers and the
    gateway does not, before type validation would only call them invalid.
    Also gives messages without ``type`` (the SDKs' easy input) their tag."""
    if not isinstance(body, dict):
        return
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        kind = item.setdefault("type", "message") if "role" in item else item.get("type")
        if kind == "item_reference":
            raise _stateful(f"input[{i}]")
        content = item.get("content")
        for j, part in enumerate(content if kind == "message" and isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") in ("input_image", "input_file", "input_audio"):
                raise refuse(f"input[{i}].content[{j}]", f"'{part['type']}' parts are not accepted; send text.")
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict) and tool.get("type") != "function":
            raise refuse(f"tools[{i}]", f"only function tools run here; '{tool.get('type')}' is a tool "
                                        "that OpenAI hosts.")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise refuse("tool_choice", "only 'auto', 'none', 'required' or a function by name.")


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Decode and validate a body; a 400 naming the field for anything refused."""
    raw = decode_json(body, "'input'")
    _precheck(raw)
    request = convert(raw, ResponsesRequest)
    if request.previous_response_id is not None:
        raise _stateful("previous_response_id")
    if request.store:
        raise _stateful("store")
    if request.conversation is not None:
        raise _stateful("conversation")
    if request.prompt is not None:
        raise _stateful("prompt")
    if request.background:
        raise refuse("background", "a response runs while its request is open; nothing is kept to fetch later.")
    if request.include:
        raise refuse("include", "reasoning comes back as summary text in every response, and there is no "
                                "encrypted content or other optional output.")
    if request.truncation == "auto":
        raise refuse("truncation", "an input longer than the model's context is refused, never cut.")
    if request.top_logprobs is not None:
        raise refuse("top_logprobs", "token log probabilities are not returned by this endpoint.")
    if request.max_tool_calls is not None:
        raise refuse("max_tool_calls", "tool calls are returned to the client, which decides how many to run.")
    if request.parallel_tool_calls is False:
        raise refuse("parallel_tool_calls", "the backends decide whether to call several tools at once.")
    if request.text is not None and request.text.verbosity is not None:
        raise refuse("text.verbosity", "the backends' models have no verbosity setting.")
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction) and choice.name not in {t.name for t in request.tools or ()}:
        raise InvalidRequest(f"tool_choice names the function '{choice.name}', which is not in 'tools'.",
                             param="tool_choice")
    return request


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.refusal if not isinstance(part, (InputText, OutputTextInput)) else part.text
                   for part in content)


def _messages(request: ResponsesRequest) -> list[Message]:
    messages: list[Message] = []
    if request.instructions:
        messages.append(SystemMessage(content=request.instructions))
    if isinstance(request.input, str):
        messages.append(UserMessage(content=request.input))
        return messages
    # Replayed reasoning belongs to the assistant turn that follows it.
    thinking: str | None = None
    for item in request.input:
        if isinstance(item, MessageInput):
            text = _text(item.content)
            if item.role == "assistant":
                messages.append(AssistantMessage(content=text, thinking=thinking))
                thinking = None
            elif item.role == "user":
                messages.append(UserMessage(content=text))
            elif item.role == "developer":
                messages.append(DeveloperMessage(content=text))
            else:
                messages.append(SystemMessage(content=text))
        elif isinstance(item, FunctionCallInput):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage) and thinking is None:
                # Parallel calls, or a call after the turn's text: one assistant turn, as in chat.
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                messages.append(AssistantMessage(content=None, tool_calls=[call], thinking=thinking))
                thinking = None
        elif isinstance(item, FunctionCallOutputInput):
            messages.append(ToolMessage(content=_text(item.output), tool_call_id=item.call_id))
        elif isinstance(item, ReasoningInput):
            parts = [part.text for part in item.summary] or [part.text for part in item.content or ()]
            thinking = (thinking or "") + "".join(parts)
    return messages


def to_chat_request(request: ResponsesRequest) -> ChatRequest:
    """The chat request a Responses request means (see the module doc)."""
    messages = _messages(request)
    if not any(not isinstance(m, SystemMessage) for m in messages):
        raise InvalidRequest("'input' holds no message for the model.", param="input")
    choice = request.tool_choice
    tools = [Tool(function=FunctionDef(name=t.name, description=t.description, parameters=t.parameters,
                                       strict=t.strict)) for t in request.tools] if request.tools else None
    response_format: ResponseFormat | None = None
    text_format = request.text.format if request.text is not None else None
    if isinstance(text_format, FormatJSONObject):
        response_format = ResponseFormat(type="json_object")
    elif isinstance(text_format, FormatJSONSchema):
        schema: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema}
        if text_format.strict is not None:
            schema["strict"] = text_format.strict
        response_format = ResponseFormat(type="json_schema", json_schema=schema)
    return ChatRequest(
        messages=messages,
        model=request.model,
        stream=request.stream,
        temperature=request.temperature,
        top_p=request.top_p,
        max_completion_tokens=request.max_output_tokens,
        tools=tools,
        tool_choice=({"type": "function", "function": {"name": choice.name}}
                     if isinstance(choice, ToolChoiceFunction) else choice),
        response_format=response_format,
        reasoning_effort=request.reasoning.effort if request.reasoning is not None else None,
    )
