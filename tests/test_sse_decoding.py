"""The typed decoding of chat chunks gives what the general (dict) path gives.

Chat streams read most SSE lines through a typed msgspec decoder
(``sse_chat_payload`` -> ``PlainChunk``), and every other shape through
``sse_payload`` (a dict). Each line below, in order through one mapper (so
the fingerprint, the finish reason and the tool-call numbering carry over),
must give the same events, errors and closing events both ways, with think
tags split and without.
"""
from __future__ import annotations

import pytest

from privatai.adapters.openai_wire import DONE, ChunkMapper, PlainChunk, sse_chat_payload, sse_payload

LINES = [
    # vLLM: explicit nulls everywhere, role first, CRLF line ending.
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":null,"reasoning_content":null,"tool_calls":null},'
    b'"logprobs":null,"finish_reason":null}]}\r',
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,'
    b'"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]}',
    # Both reasoning fields with the same text, and a fingerprint.
    b'data: {"id":"x","choices":[{"index":0,"delta":{"reasoning":"hm","reasoning_content":"hm"},'
    b'"finish_reason":null}],"system_fingerprint":"fp1"}',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"<think>a</think>lo \\u00e9\\ud83d\\ude00"}}]}',
    b'data: {"choices":[{"delta":{"content":5}}]}',
    b'data: {"choices":[{"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-1.0}]}}]}',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
    b'"function":{"name":"f","arguments":"{\\"a\\""}}]}}]}',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}',
    b'data: {"choices":[{"delta":{"content":"y"}}],"error":{}}',
    b'data: {"choices":null}',
    b'data: [1,2]',
    b'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":null}]}',
    b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    b": keep-alive",
    b"",
    b'data: {"broken',
    b'data: {"object":"error","message":"boom","choices":[]}',
    b'data: {"error":{"message":"boom"}}',
    b"data: [DONE]",
]


def outcomes(decode, think_tags: bool) -> list[object]:
    mapper = ChunkMapper(think_tags)
    out: list[object] = []
    for line in LINES:
        try:
            payload = decode(line)
            out.append(payload if payload is None or payload is DONE else mapper.feed(payload))
        except Exception as exc:  # noqa: BLE001 - the class is what both paths must agree on
            out.append(type(exc).__name__)
    out.append(mapper.finish())
    return out


@pytest.mark.parametrize("think_tags", [False, True])
def test_typed_chat_chunks_give_the_events_of_the_general_path(think_tags: bool) -> None:
    general = outcomes(sse_payload, think_tags)
    assert outcomes(sse_chat_payload, think_tags) == general
    # The lines cover what the mapper produces and refuses, not only empties.
    assert "UpstreamStreamError" in general and "JSONDecodeError" in general
    assert any(isinstance(item, list) and item for item in general)


def test_the_common_text_chunk_takes_the_typed_path() -> None:
    assert type(sse_chat_payload(LINES[1])) is PlainChunk
    assert type(sse_chat_payload(LINES[6])) is dict  # a tool call: the general path
