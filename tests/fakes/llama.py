"""A stand-in for ``llama_cpp.Llama``, the embedded adapter's in-process peer.

The real model cannot be told what to say, so tests that need a particular
answer (think tags, an odd finish reason, tool calls) script it here.
``create_chat_completion(stream=True, ...)`` yields what llama-cpp-python's
chat formatters yield: ``chat.completion.chunk`` dicts, a first delta
``{"role": "assistant"}``, one ``{"content": ...}`` delta per piece of text,
tool calls as ``delta.tool_calls`` fragments (``index``, ``id``, ``type``,
``function.name``, then argument pieces), and a last chunk with an empty
delta and ``finish_reason``.

Use it by replacing the class the adapter loads::

    fake = FakeLlama()
    monkeypatch.setattr(llama_cpp, "Llama", fake.load)
    fake.reply(TextDelta("<think>hm</think>Hi"), finish="stop")
"""
from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any, Iterator

from privatai.core.events import TextDelta, ToolCallDelta


class FakeLlama:
    def __init__(self) -> None:
        self.replies: deque[list[dict[str, Any]]] = deque()
        self.calls: list[dict[str, Any]] = []
        self.resets = 0

    def load(self, **_settings: Any) -> "FakeLlama":
        """What ``Llama(model_path=..., n_ctx=..., ...)`` returns: this fake."""
        return self

    def reply(self, *steps: TextDelta | ToolCallDelta, finish: str = "stop",
              extra: dict[str, Any] | None = None) -> None:
        """Queue one answer. ``extra`` is merged into the last chunk (fields
        a future llama-cpp-python might add there, such as ``usage``)."""
        chunk_id = "chatcmpl-" + secrets.token_hex(8)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": chunk_id, "model": "fake.gguf", "created": int(time.time()),
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        chunks = [chunk({"role": "assistant"})]
        for step in steps:
            if isinstance(step, TextDelta):
                chunks.append(chunk({"content": step.text}))
            elif step.name is not None:
                chunks.append(chunk({"tool_calls": [{"index": step.index, "id": step.id or f"call__{step.index}",
                                                     "type": "function",
                                                     "function": {"name": step.name, "arguments": ""}}]}))
                chunks.append(chunk({"tool_calls": [{"index": step.index,
                                                     "function": {"arguments": step.arguments}}]}))
        last = chunk({}, finish)
        last.update(extra or {})
        chunks.append(last)
        self.replies.append(chunks)

    def reset(self) -> None:
        self.resets += 1

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        assert kwargs.get("stream") is True, "the embedded adapter always streams"
        self.calls.append(kwargs)
        return iter(self.replies.popleft())

    def close(self) -> None:
        pass
