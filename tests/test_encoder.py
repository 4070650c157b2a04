"""The SSE encoder and the aggregator are pure functions of the events."""
from __future__ import annotations

import json

from privatai.core.events import Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.encoders import DONE, ChunkEncoder, aggregate


def frames(data: bytes) -> list[str]:
    text = data.decode()
    assert text.endswith("\n\n")
    return [f for f in text.split("\n\n") if f]


def payloads(data: bytes) -> list[object]:
    out = []
    for frame in frames(data):
        assert frame.startswith("data: ")
        body = frame[len("data: "):]
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def encode_all(encoder: ChunkEncoder, events, reason="stop", usage=Usage(5, 3)) -> list[object]:
    data = b"".join(encoder.encode(e) for e in events) + encoder.finish(reason, usage)
    return payloads(data)


def test_chunks_share_id_created_model_and_first_delta_has_role() -> None:
    enc = ChunkEncoder("chatcmpl-abc", 1700000000, "m1")
    chunks = encode_all(enc, [TextDelta("Hel"), TextDelta("lo")])
    assert chunks[-1] == "[DONE]"
    objs = chunks[:-1]
    assert {c["id"] for c in objs} == {"chatcmpl-abc"}
    assert {c["created"] for c in objs} == {1700000000}
    assert {c["model"] for c in objs} == {"m1"}
    assert {c["object"] for c in objs} == {"chat.completion.chunk"}
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert objs[1]["choices"][0]["delta"] == {"content": "lo"}
    assert [c["choices"][0]["finish_reason"] for c in objs] == [None, None, "stop"]


def test_usage_on_finish_chunk_by_default_and_nowhere_else() -> None:
    enc = ChunkEncoder("chatcmpl-1", 1, "m")
    chunks = encode_all(enc, [TextDelta("a")], usage=Usage(12, 8))[:-1]
    assert "usage" not in chunks[0]
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_include_usage_gives_one_separate_empty_choices_chunk() -> None:
    enc = ChunkEncoder("chatcmpl-1", 1, "m", include_usage=True)
    chunks = encode_all(enc, [TextDelta("a")], usage=Usage(2, 1))
    assert chunks[-1] == "[DONE]"
    usage_chunk, finish_chunk = chunks[-2], chunks[-3]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert "usage" not in finish_chunk
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in chunks[:-1] if "usage" in c) == 1


def test_thinking_field_setting() -> None:
    for fields, expected in [(("thinking",), {"thinking": "hm"}),
                             (("reasoning_content",), {"reasoning_content": "hm"}),
                             (("thinking", "reasoning_content"), {"thinking": "hm", "reasoning_content": "hm"})]:
        enc = ChunkEncoder("chatcmpl-1", 1, "m", thinking_fields=fields)
        first = encode_all(enc, [ThinkingDelta("hm")])[0]
        assert first["choices"][0]["delta"] == {"role": "assistant", **expected}


def test_tool_call_fragments_keep_id_and_name_on_first_only() -> None:
    enc = ChunkEncoder("chatcmpl-1", 1, "m")
    chunks = encode_all(enc, [ToolCallDelta(0, "call_1", "get_weather", '{"ci'),
                              ToolCallDelta(0, arguments='ty":"Berlin"}')], reason="tool_calls")
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first == {"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"ci'}}
    later = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert later == {"index": 0, "function": {"arguments": 'ty":"Berlin"}'}}
    assert chunks[2]["choices"][0]["finish_reason"] == "tool_calls"


def test_finish_without_content_still_carries_role() -> None:
    enc = ChunkEncoder("chatcmpl-1", 1, "m")
    chunks = encode_all(enc, [], reason="length")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[0]["choices"][0]["finish_reason"] == "length"


def test_done_marker() -> None:
    assert DONE == b"data: [DONE]\n\n"


def test_aggregate_text_thinking_usage() -> None:
    result = aggregate([ThinkingDelta("Let me "), ThinkingDelta("think"), TextDelta("Paris"),
                        TextDelta("."), Finish("stop"), Usage(10, 4)], "chatcmpl-x", "m", created=5)
    assert result["object"] == "chat.completion"
    assert result["id"] == "chatcmpl-x" and result["created"] == 5 and result["model"] == "m"
    choice = result["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Paris.", "thinking": "Let me think"}
    assert choice["finish_reason"] == "stop"
    assert result["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def test_aggregate_tool_calls_in_index_order_with_null_content() -> None:
    result = aggregate([ToolCallDelta(1, "call_b", "b", "{}"), ToolCallDelta(0, "call_a", "a", '{"x"'),
                        ToolCallDelta(0, arguments=":1}"), Finish("tool_calls"), Usage(1, 1)],
                       "chatcmpl-y", "m", created=1, thinking_fields=("reasoning_content",))
    message = result["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
