"""Request validation: clear 400s that name the field."""
from __future__ import annotations

import json

import pytest

from privatai.errors import InvalidRequest
from privatai.core.protocol import AssistantMessage, ToolMessage, message_to_openai, parse_chat_request, text_of


def parse(body: object):
    return parse_chat_request(json.dumps(body).encode())


def error_of(body: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body)
    return info.value


def test_minimal_request_defaults() -> None:
    chat = parse({"messages": [{"role": "user", "content": "hi"}]})
    assert chat.stream is False and chat.model is None and chat.include_usage is False


def test_all_options_accepted() -> None:
    chat = parse({
        "model": "m", "stream": True, "temperature": 0.5, "top_p": 1, "max_tokens": 10,
        "max_completion_tokens": 20, "stop": "END", "seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "stream_options": {"include_usage": True},
        "response_format": {"type": "json_object"}, "user": "ignored-unknown-field",
        "messages": [{"role": "system", "content": "s"},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "42"}],
    })
    assert chat.max_output_tokens == 20
    assert chat.stop_list == ["END"]
    assert chat.include_usage is True
    assert text_of(chat.messages[1].content) == "ab"
    assert isinstance(chat.messages[2], AssistantMessage) and isinstance(chat.messages[3], ToolMessage)
    assert message_to_openai(chat.messages[2])["tool_calls"][0]["function"]["name"] == "f"
    assert message_to_openai(chat.messages[2])["content"] is None


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": -2.1}, "frequency_penalty"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 129}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"50256": -101}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}],
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "functions"),
    ({"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "low"},
      "reasoning_effort": "high"}, "reasoning.effort"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_fields_are_named(body: object, param: str) -> None:
    error = error_of(json.dumps(body).encode())
    assert error.status == 400
    assert error.param == param
    assert error.to_dict()["error"]["type"] == "invalid_request_error"


def test_malformed_json_and_empty_body() -> None:
    assert error_of(b'{"messages": [').status == 400
    assert "JSON" in error_of(b"{nope").message
    assert "empty" in error_of(b"").message


def test_legacy_functions_become_tools_and_tool_choice() -> None:
    chat = parse({"messages": [{"role": "user", "content": "x"}],
                  "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": {"name": "f"}})
    assert [t.function.name for t in chat.tools or []] == ["f"]
    assert chat.tool_choice == {"type": "function", "function": {"name": "f"}}
    chat = parse({"messages": [{"role": "user", "content": "x"}],
                  "functions": [{"name": "f"}], "function_call": "none"})
    assert chat.tool_choice == "none"


def test_reasoning_object_sets_the_effort() -> None:
    chat = parse({"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "high"}})
    assert chat.reasoning_effort == "high"
    same = parse({"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "low"},
                  "reasoning_effort": "low"})
    assert same.reasoning_effort == "low"


def test_names_and_image_parts_go_upstream_as_openai_sends_them() -> None:
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]
    chat = parse({"messages": [{"role": "user", "content": parts, "name": "alice"},
                               {"role": "assistant", "content": "A dot.", "name": "bot"}]})
    assert message_to_openai(chat.messages[0]) == {"role": "user", "content": parts, "name": "alice"}
    assert message_to_openai(chat.messages[1]) == {"role": "assistant", "content": "A dot.", "name": "bot"}
    assert text_of(chat.messages[0].content) == "What is this?"


def test_an_assistant_refusal_part_in_a_history_goes_upstream_as_its_text() -> None:
    # The SDK's ChatCompletionAssistantMessageParam allows text and refusal parts.
    chat = parse({"messages": [
        {"role": "user", "content": "Help me with something bad."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}],
         "refusal": "I can't help with that."},
        {"role": "user", "content": "Then tell me a joke."}]})
    assert message_to_openai(chat.messages[1]) == {"role": "assistant", "content": "I can't help with that."}
    # Refusals are the assistant's alone, and a part still needs its type there.
    assert error_of(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "refusal", "refusal": "no"}]}]}).encode()).param.startswith("messages[0].content")
    assert error_of(json.dumps({"messages": [{"role": "assistant", "content": [
        {"text": "untyped"}]}]}).encode()).param.startswith("messages[0].content")


def test_an_absent_stream_field_takes_the_negotiated_default() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x"}],
                       "stream_options": {"include_usage": True}}).encode()
    assert parse_chat_request(body, stream_default=True).stream is True
    assert error_of(body).param == "stream_options"
    explicit = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": False}).encode()
    assert parse_chat_request(explicit, stream_default=True).stream is False
    assert parse({"messages": [{"role": "user", "content": "x"}]}).stream is False


# -- bounds: integers and nesting (issue 12: these were 500s) -----------------

MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


def tool_with(parameters: str) -> str:
    return '"tools": [{"type": "function", "function": {"name": "f", "parameters": %s}}]' % parameters


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("fields, param", [
    ('"max_tokens": %d' % 2**64, "max_tokens"),
    ('"max_completion_tokens": %d' % 2**63, "max_completion_tokens"),
    ('"seed": %d' % 2**64, "seed"),
    ('"seed": -%d' % (2**63 + 1), "seed"),
    (tool_with('{"type": "integer", "maximum": %d}' % 2**64), "tools[0].function.parameters"),
    (tool_with('{"enum": [-%d]}' % (2**63 + 1)), "tools[0].function.parameters"),
    (tool_with('{"a": %s}' % nested(250)), "tools[0].function.parameters"),
    ('"response_format": {"type": "json_schema", "json_schema": {"schema": %s}}' % nested(250),
     "response_format.json_schema"),
    ('"response_format": {"type": "json_schema", "json_schema": {"big": %d}}' % 2**70,
     "response_format.json_schema"),
    ('"tool_choice": {"type": "function", "function": {"name": %s}}' % nested(250), "tool_choice"),
    ('"tool_choice": {"type": "function", "x": %d}' % 2**64, "tool_choice"),
])
def test_out_of_bounds_values_are_a_400_naming_the_field(fields: str, param: str) -> None:
    error = error_of(("{%s, %s}" % (MESSAGES, fields)).encode())
    assert error.status == 400 and error.param == param, error.message


# The path to the first value that opens level 65 of the body (the body itself is level 1).
@pytest.mark.parametrize("where, param", [
    ('"ignored": %s', "ignored" + "[0]" * 63),
    ('"metadata": {"a": %s}', "metadata.a" + "[0]" * 62),
    ('"messages": [{"role": "user", "content": "hi", "extra": %s}]', "messages[0].extra" + "[0]" * 61),
    (tool_with('{"a": %s}'), "tools[0].function.parameters.a" + "[0]" * 59),
])
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_nesting_deeper_than_the_decoder_follows_is_a_400_naming_where(where: str, param: str, depth: int) -> None:
    body = "{%s, %s}" % (MESSAGES, where % nested(depth)) if not where.startswith('"messages"') \
        else "{%s}" % (where % nested(depth))
    error = error_of(body.encode())
    assert error.status == 400 and error.param == param, error.message
    assert "nests deeper than 64 levels" in error.message


def test_values_within_bounds_are_kept_as_sent() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 2**64 - 1,
                                                    "minimum": -(2**63)}}, "deep": json.loads(nested(60))}
    chat = parse({"messages": [{"role": "user", "content": "hi"}], "seed": 2**63 - 1, "max_tokens": 2**63 - 1,
                  "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
                  "ignored": json.loads(nested(300))})
    assert chat.seed == 2**63 - 1 and chat.max_tokens == 2**63 - 1
    assert chat.tools is not None and chat.tools[0].function.parameters == schema
