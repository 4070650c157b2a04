"""Bounds on client JSON at decode, and a fuzz of the request parser.

Every body either parses into a request that the rest of the request path can
use (re-encode with orjson as the adapters do, count with tiktoken, map to
OpenAI messages), or is a 400 that names a field: never an exception of
another kind, which the server would answer with a 500.
"""
from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from privatai.core import tokens
from privatai.core.completions import parse_completion_request
from privatai.core.embeddings import parse_embeddings_request
from privatai.core.json_bounds import MAX_DEPTH, ORJSON_MAX_DEPTH, too_deep_at
from privatai.core.protocol import ChatRequest, message_to_openai, parse_chat_request, tools_to_openai
from privatai.core.responses.translate import parse_responses_request
from privatai.errors import InvalidRequest


def nest(depth: int, inner: Any = 1) -> Any:
    value = inner
    for _ in range(depth):
        value = [value]
    return value


def test_orjson_depth_limit_is_the_one_the_bounds_rely_on() -> None:
    orjson.dumps(nest(ORJSON_MAX_DEPTH))
    with pytest.raises(TypeError):
        orjson.dumps(nest(ORJSON_MAX_DEPTH + 1))


@pytest.mark.parametrize("depth, ok", [(MAX_DEPTH - 1, True), (MAX_DEPTH, False)])
def test_free_form_values_nest_at_most_max_depth_levels(depth: int, ok: bool) -> None:
    # The parameters object is one level, the lists inside it the others.
    body = {"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": nest(depth)}}}]}
    if ok:
        assert parse_chat_request(orjson.dumps(body)).tools is not None
    else:
        with pytest.raises(InvalidRequest) as info:
            parse_chat_request(orjson.dumps(body))
        assert info.value.param == "tools[0].function.parameters"


def test_locator_names_keys_and_indices_and_ignores_brackets_in_strings() -> None:
    body = b'{"a": [1, "[[[", {"b\\"c": [[[[2]]]]}], "z": 0}'
    assert too_deep_at(body, limit=4) == 'a[2].b"c[0]'
    assert too_deep_at(body, limit=7) is None


# -- fuzz -------------------------------------------------------------------

def big_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**70),
                     st.integers(min_value=-(2**70), max_value=-(2**62)))


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), big_ints(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=max_leaves)


def deep(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Sometimes a value at the bottom of 60 to 1,200 levels of lists or objects."""
    return st.one_of(values, st.builds(lambda v, d, as_list: nest(d, v) if as_list else _deep_object(d, v),
                                       values, st.integers(60, 1200), st.booleans()))


def _deep_object(depth: int, inner: Any) -> Any:
    value = inner
    for _ in range(depth):
        value = {"k": value}
    return value


FIELDS = list(ChatRequest.__struct_fields__) + ["user", "n", "metadata", "logit_bias"]
ROLES = ["system", "developer", "user", "assistant", "tool", "wizard"]

messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES)},
    optional={"content": st.one_of(st.text(max_size=20), deep(json_values(5)),
                                   st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                   "text": st.text(max_size=10)}), max_size=2)),
              "name": st.text(max_size=5), "tool_call_id": st.text(max_size=5),
              "tool_calls": st.lists(st.fixed_dictionaries({"id": st.text(max_size=4), "function": st.fixed_dictionaries(
                  {"name": st.text(max_size=4), "arguments": st.text(max_size=10)})}), max_size=2),
              "extra": deep(json_values(3))}), min_size=1, max_size=3)

tools = st.lists(st.fixed_dictionaries(
    {"type": st.just("function"),
     "function": st.fixed_dictionaries({"name": st.text(max_size=5)},
                                       optional={"parameters": deep(json_values()), "strict": st.booleans()})}),
    max_size=2)

bodies = st.fixed_dictionaries(
    {"messages": messages},
    optional={"tools": tools,
              "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "x"]), deep(json_values())),
              "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_schema"])},
                                                       optional={"json_schema": deep(json_values())}),
              "max_tokens": big_ints(), "max_completion_tokens": big_ints(), "seed": big_ints(),
              "temperature": st.one_of(st.floats(allow_nan=False, allow_infinity=False), big_ints()), "stop": deep(json_values(4)),
              "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
              "metadata": deep(json_values()), "user": st.text(max_size=5)})


def encode(body: dict[str, Any]) -> bytes:
    # The stdlib encoder, since orjson itself refuses what the test sends.
    return json.dumps(body, allow_nan=False).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies)
def test_any_body_is_a_usable_request_or_a_400(body: dict[str, Any]) -> None:
    try:
        chat = parse_chat_request(encode(body))
    except InvalidRequest as exc:
        assert exc.status == 400
        assert exc.param is None or isinstance(exc.param, str)
        return
    # What the adapters and the meter do with a request must not raise.
    orjson.dumps(msgspec.to_builtins(chat))
    orjson.dumps([message_to_openai(m) for m in chat.messages])
    orjson.dumps(tools_to_openai(chat.tools))
    assert tokens.count_prompt(chat) > 0


@pytest.mark.parametrize(("parse", "field"), [
    (parse_embeddings_request, '"input": "x", "dimensions": '),
    (parse_completion_request, '"prompt": "x", "max_tokens": '),
    (parse_completion_request, '"prompt": "x", "seed": '),
    (parse_responses_request, '"input": "x", "max_output_tokens": '),
    (parse_responses_request, '"input": "x", "top_logprobs": '),
    (parse_responses_request, '"input": "x", "max_tool_calls": '),
])
def test_integers_past_64_bits_are_a_400_on_every_endpoint(parse: Any, field: str) -> None:
    """Found by the OpenAPI fuzz run: `dimensions: 10986500806547561512960`
    passed validation and became a 500 when the body was encoded for the
    upstream (orjson writes 64-bit integers only)."""
    body = ('{"model": "m", ' + field + str(2**70) + "}").encode()
    with pytest.raises(InvalidRequest, match="9223372036854775807"):
        parse(body)
