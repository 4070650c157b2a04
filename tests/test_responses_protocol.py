"""The Responses API without a server: validation, refusals, the chat request a
body means, and the events and object we send, parsed by the official SDK's
own types."""
from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response as SDKResponse

from privatai.core.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import AssistantMessage, SystemMessage, ToolMessage, UserMessage, text_of
from privatai.core.responses.builder import ResponseBuilder, frame
from privatai.core.responses.translate import parse_responses_request, to_chat_request
from privatai.errors import InvalidRequest
from tests.sdk_types import stream_event, strict


def parse(body: dict[str, Any]):
    return parse_responses_request(json.dumps(body).encode())


def refusal(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


def test_string_input_and_instructions() -> None:
    chat = to_chat_request(parse({"model": "m", "input": "Hi", "instructions": "Be brief.",
                                  "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                                  "reasoning": {"effort": "low", "summary": "auto"}, "stream": True}))
    assert [type(m) for m in chat.messages] == [SystemMessage, UserMessage]
    assert [text_of(m.content) for m in chat.messages] == ["Be brief.", "Hi"]
    assert chat.model == "m" and chat.stream is True
    assert chat.max_output_tokens == 50 and chat.temperature == 0.2 and chat.top_p == 0.9
    assert chat.reasoning_effort == "low"


def test_items_become_a_chat_conversation() -> None:
    """Messages without ``type`` (the SDK's easy input), text parts, replayed
    reasoning and parallel function calls with their outputs."""
    chat = to_chat_request(parse({"input": [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\":1}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "done", "annotations": []}]},
        {"role": "user", "content": "thanks"},
    ], "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
                 {"type": "function", "name": "g", "description": "gee"}],
        "tool_choice": {"type": "function", "name": "g"}}))
    roles = [m.__struct_config__.tag for m in chat.messages]
    assert roles == ["developer", "user", "assistant", "tool", "tool", "assistant", "user"]
    assert text_of(chat.messages[1].content) == "ab"
    calls = chat.messages[2]
    assert isinstance(calls, AssistantMessage) and calls.content is None and calls.thinking == "think"
    assert [(c.id, c.function.name, c.function.arguments) for c in calls.tool_calls] == [
        ("c1", "f", "{\"x\":1}"), ("c2", "g", "{}")]
    assert [(m.tool_call_id, text_of(m.content)) for m in chat.messages[3:5]
            if isinstance(m, ToolMessage)] == [("c1", "one"), ("c2", "two")]
    assert text_of(chat.messages[5].content) == "done"
    assert [(t.function.name, t.function.strict, t.function.description) for t in chat.tools] == [
        ("f", True, None), ("g", None, "gee")]
    assert chat.tool_choice == {"type": "function", "function": {"name": "g"}}


def test_text_formats_become_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = to_chat_request(parse({"input": "x", "text": {"format": {
        "type": "json_schema", "name": "thing", "schema": schema, "strict": True}}}))
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema == {"name": "thing", "schema": schema, "strict": True}
    assert to_chat_request(parse({"input": "x", "text": {"format": {"type": "json_object"}}})
                           ).response_format.type == "json_object"
    assert to_chat_request(parse({"input": "x", "text": {"format": {"type": "text"}}})).response_format is None


def test_nothing_stored_refusals_explain_why() -> None:
    for body in ({"input": "x", "previous_response_id": "resp_1"}, {"input": "x", "store": True},
                 {"input": "x", "conversation": "conv_1"},
                 {"input": [{"type": "item_reference", "id": "msg_1"}]}):
        error = refusal(body)
        assert "stores no prompts" in error.message and error.code == "unsupported_parameter"
    assert refusal({"input": "x", "previous_response_id": "resp_1"}).param == "previous_response_id"
    assert refusal({"input": [{"type": "item_reference", "id": "m"}]}).param == "input[0]"
    # store: false (what privacy-minded clients send) is fine.
    assert parse({"input": "x", "store": False}).store is False


@pytest.mark.parametrize("extra, param", [
    ({"background": True}, "background"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"max_tool_calls": 3}, "max_tool_calls"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
])
def test_unoffered_options_are_refused_by_name(extra: dict[str, Any], param: str) -> None:
    assert refusal({"input": "x", **extra}).param == param


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
     "input[0].content[0]"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
])
def test_bad_fields_are_named(body: dict[str, Any], param: str) -> None:
    assert refusal(body).param == param


def test_input_without_a_message_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(parse({"input": [{"type": "reasoning", "summary": []}], "instructions": "x"}))
    assert info.value.param == "input"


# --------------------------------------------------------------------------
# Events and the response object


def run(events: list[Event], reason: str | None = "stop", usage: Usage = Usage(12, 7),
        request: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], ResponseBuilder]:
    """Stream ``events`` through a builder; the frames as the client reads them."""
    builder = ResponseBuilder(parse(request or {"input": "x"}), "m")
    frames = [frame(e) for e in builder.start()]
    for event in events:
        frames += [frame(e) for e in builder.add(event)]
    frames += [frame(e) for e in builder.finish(reason, usage)]
    parsed = []
    for raw in frames:
        head, data = raw.decode().rstrip("\n").split("\n")
        body = json.loads(data.removeprefix("data: "))
        assert head == f"event: {body['type']}"
        parsed.append(body)
    return parsed, builder


def test_text_stream_has_the_documented_sequence() -> None:
    events, builder = run([TextDelta("Hel"), TextDelta("lo")])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    parsed = [stream_event(e) for e in events]
    assert [p.delta for p in parsed if p.type == "response.output_text.delta"] == ["Hel", "lo"]
    final = parsed[-1].response
    assert final.status == "completed" and final.output_text == "Hello"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (12, 7, 19)
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {final.output[0].id}
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    # The whole object (non-streamed mode) is the completed snapshot.
    whole = strict(SDKResponse, json.loads(builder.body()))
    assert whole.output_text == "Hello" and whole.id == final.id


def test_reasoning_then_text_then_tool_calls() -> None:
    events, _ = run([ThinkingDelta("Let me "), ThinkingDelta("see."), TextDelta("Checking."),
                     ToolCallDelta(0, "call_1", "get_weather", '{"city":'), ToolCallDelta(0, arguments='"Oslo"}'),
                     ToolCallDelta(1, "call_2", "get_time", "{}")], reason="tool_calls")
    for event in events:
        stream_event(event)
    final = stream_event(events[-1]).response
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    reasoning, message, first, second = final.output
    assert [s.text for s in reasoning.summary] == ["Let me see."]
    assert message.content[0].text == "Checking."
    assert (first.call_id, first.name, first.arguments, first.status) == (
        "call_1", "get_weather", '{"city":"Oslo"}', "completed")
    assert (second.call_id, second.name, second.arguments) == ("call_2", "get_time", "{}")
    assert final.usage.output_tokens_details.reasoning_tokens > 0
    kinds = [e["type"] for e in events]
    assert kinds.count("response.reasoning_summary_text.delta") == 2
    assert kinds.count("response.function_call_arguments.delta") == 3
    done_args = [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done_args == ['{"city":"Oslo"}', "{}"]
    # Each item is announced before its deltas and closed before the next one opens.
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert added == done == [0, 1, 2, 3]


def test_output_limit_makes_the_response_incomplete() -> None:
    events, builder = run([TextDelta("cut")], reason="length")
    final = stream_event(events[-1])
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output[0].status == "incomplete"


def test_failure_after_streaming_began() -> None:
    builder = ResponseBuilder(parse({"input": "x"}), "m")
    events = builder.start() + builder.add(TextDelta("par")) + builder.fail("The backend failed.")
    parsed = [stream_event(json.loads(frame(e).split(b"data: ", 1)[1])) for e in events]
    assert [p.type for p in parsed[-2:]] == ["error", "response.failed"]
    assert parsed[-2].message == "The backend failed." and parsed[-2].code == "server_error"
    assert parsed[-1].response.status == "failed"
    assert parsed[-1].response.error.message == "The backend failed."


def test_request_settings_are_echoed() -> None:
    events, _ = run([TextDelta("{}")], request={
        "input": "x", "instructions": "be terse", "max_output_tokens": 9, "temperature": 0.5,
        "metadata": {"k": "v"}, "tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
        "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "high"}})
    final = stream_event(events[-1]).response
    assert (final.instructions, final.max_output_tokens, final.temperature) == ("be terse", 9, 0.5)
    assert final.metadata == {"k": "v"} and final.tool_choice == "required"
    assert [t.name for t in final.tools] == ["f"] and final.text.format.type == "json_object"
    assert final.reasoning.effort == "high" and final.previous_response_id is None
