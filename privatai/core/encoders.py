"""The response encoders: normalized events -> OpenAI's wire shapes.

:class:`ChunkEncoder` writes ``chat.completion.chunk`` SSE frames,
:class:`CompletionAggregator` one ``chat.completion`` object. Both are pure,
with no I/O, so they are tested without a server.
"""
from __future__ import annotations

import random
import time
from typing import Any, Iterable

import orjson

from privatai.core.events import Event, Fingerprint, Finish, Logprobs, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.errors import PrivatAIError

THINKING_FIELDS: dict[str, tuple[str, ...]] = {
    "thinking": ("thinking",),
    "reasoning_content": ("reasoning_content",),
    "both": ("thinking", "reasoning_content"),
}

DONE = b"data: [DONE]\n\n"
_CONTENT_TAIL = b'},"finish_reason":null}]}\n\n'
KEEPALIVE = b": keep-alive\n\n"


def new_completion_id() -> str:
    # Unique, not secret (see privatai.api.cors.new_request_id).
    return f"chatcmpl-{random.getrandbits(96):024x}"


def error_event(error: PrivatAIError) -> bytes:
    """The in-band error after a stream has begun (the SDK raises on it)."""
    return b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"


class ChunkEncoder:
    """Turns events into ``chat.completion.chunk`` SSE frames for one response.

    The frame prefix is formatted once; each chunk costs one small orjson call.
    Usage goes on the finish chunk, or, with ``stream_options.include_usage``,
    into one separate ``choices: []`` chunk as OpenAI does; never both.
    """

    def __init__(self, completion_id: str, created: int, model: str, *,
                 include_usage: bool = False, thinking_fields: tuple[str, ...] = ("thinking",)) -> None:
        self._fields = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._set_head(self._fields)
        self._include_usage = include_usage
        self._thinking_fields = thinking_fields
        self._role_sent = False

    def _set_head(self, fields: dict[str, Any]) -> None:
        self._head = b"data: " + orjson.dumps(fields)[:-1]
        self._choice_prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._content_prefix = self._choice_prefix + b'{"content":'

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None,
               usage: Usage | None = None, logprobs: list[Any] | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        if logprobs is not None:
            # Their own chunk with an empty delta, as the tokens they describe went just before.
            return (self._choice_prefix + orjson.dumps(delta) + b',"logprobs":{"content":'
                    + orjson.dumps(logprobs) + b'},"finish_reason":null}]}\n\n')
        tail = b',"finish_reason":null}]}\n\n' if finish_reason is None else (
            b',"finish_reason":' + orjson.dumps(finish_reason) + b"}]"
            + (b',"usage":' + orjson.dumps(usage.to_dict()) if usage is not None else b"")
            + b"}\n\n")
        return self._choice_prefix + orjson.dumps(delta) + tail

    def encode(self, event: Event) -> bytes:
        """One content event (text, thinking, tool call) as an SSE frame."""
        if type(event) is TextDelta:
            if self._role_sent:
                # Most frames of a stream: only the text is encoded.
                return self._content_prefix + orjson.dumps(event.text) + _CONTENT_TAIL
            return self._delta({"content": event.text})
        if type(event) is ThinkingDelta:
            return self._delta({field: event.text for field in self._thinking_fields})
        if type(event) is ToolCallDelta:
            call: dict[str, Any] = {"index": event.index}
            if event.id is not None:
                call["id"] = event.id
                call["type"] = "function"
            function: dict[str, str] = {}
            if event.name is not None:
                function["name"] = event.name
            function["arguments"] = event.arguments
            call["function"] = function
            return self._delta({"tool_calls": [call]})
        if type(event) is Logprobs:
            return self._delta({}, logprobs=event.content)
        if type(event) is Fingerprint:
            # From here on every chunk names it, as OpenAI's do; this one opens the stream.
            self._set_head({**self._fields, "system_fingerprint": event.value})
            return self._delta({})
        raise TypeError(f"not a content event: {type(event).__name__}")

    def finish(self, reason: str, usage: Usage) -> bytes:
        """The finish chunk with its usage (placement per the rule above), then ``[DONE]``."""
        if self._include_usage:
            usage_chunk = self._head + b',"choices":[],"usage":' + orjson.dumps(usage.to_dict()) + b"}\n\n"
            return self._delta({}, reason) + usage_chunk + DONE
        return self._delta({}, reason, usage) + DONE


class CompletionAggregator:
    """Collects events into one ``chat.completion`` object."""

    def __init__(self, thinking_fields: tuple[str, ...] = ("thinking",)) -> None:
        self._thinking_fields = thinking_fields
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._logprobs: list[Any] = []
        self._fingerprint: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def add(self, event: Event) -> None:
        kind = type(event)
        if kind is TextDelta:
            self._text.append(event.text)
        elif kind is ThinkingDelta:
            self._thinking.append(event.text)
        elif kind is ToolCallDelta:
            call = self._calls.setdefault(event.index, {"id": None, "name": None, "arguments": []})
            if event.id is not None:
                call["id"] = event.id
            if event.name is not None:
                call["name"] = event.name
            call["arguments"].append(event.arguments)
        elif kind is Logprobs:
            self._logprobs.extend(event.content)
        elif kind is Fingerprint:
            self._fingerprint = event.value
        elif kind is Finish:
            self.finish_reason = event.reason
        elif kind is Usage:
            self.usage = event

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text)}
        if self._thinking:
            for field in self._thinking_fields:
                message[field] = "".join(self._thinking)
        if self._calls:
            message["tool_calls"] = [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": "".join(call["arguments"])}}
                for _, call in sorted(self._calls.items())
            ]
            if not self._text:
                message["content"] = None
        return message

    def result(self, completion_id: str, created: int, model: str) -> dict[str, Any]:
        usage = self.usage or Usage(0, 0)
        choice: dict[str, Any] = {"index": 0, "message": self.message(),
                                  "finish_reason": self.finish_reason or "stop"}
        if self._logprobs:
            choice["logprobs"] = {"content": self._logprobs}
        result = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage.to_dict(),
        }
        if self._fingerprint is not None:
            result["system_fingerprint"] = self._fingerprint
        return result


def aggregate(events: Iterable[Event], completion_id: str, model: str, *, created: int | None = None,
              thinking_fields: tuple[str, ...] = ("thinking",)) -> dict[str, Any]:
    """All events of one response as a ``chat.completion`` (pure)."""
    aggregator = CompletionAggregator(thinking_fields)
    for event in events:
        aggregator.add(event)
    return aggregator.result(completion_id, created if created is not None else int(time.time()), model)
