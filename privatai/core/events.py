"""Normalized events: the one vocabulary every adapter speaks.

Adapters turn a backend's protocol into these, and nothing else; the encoder,
the aggregator and metering consume them. They are frozen msgspec structs:
one is made per streamed token, and a struct is built in C, several times
faster than a frozen dataclass (which sets each field through
``object.__setattr__``). None holds a reference back to anything, so they
stay out of the cycle collector (``gc=False``).
"""
from __future__ import annotations

from typing import Any

import msgspec


class TextDelta(msgspec.Struct, frozen=True, gc=False):
    text: str


class ThinkingDelta(msgspec.Struct, frozen=True, gc=False):
    text: str


class ToolCallDelta(msgspec.Struct, frozen=True, gc=False):
    """A fragment of a tool call. The first fragment of call ``index`` carries
    ``id`` and ``name``; later ones only argument pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Logprobs(msgspec.Struct, frozen=True, gc=False):
    """Token log probabilities the upstream sent for the text just before it,
    as OpenAI's ``logprobs.content`` entries (passed through as they came)."""

    content: list[Any]


class Fingerprint(msgspec.Struct, frozen=True, gc=False):
    """The upstream's ``system_fingerprint`` (its build or configuration), sent
    once, just before the first content event, so it rides on every chunk after."""

    value: str


class Finish(msgspec.Struct, frozen=True, gc=False):
    reason: str  # stop | length | tool_calls | content_filter


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Token counts. The details are what the backend reported (None when it
    did not): they break the totals down and never change them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


Event = TextDelta | ThinkingDelta | ToolCallDelta | Logprobs | Fingerprint | Finish | Usage
