"""Normalized events: the one vocabulary every adapter speaks.

Adapters turn a backend's protocol into these, and nothing else; the encoder,
the aggregator and metering consume them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class TextDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A fragment of a tool call. The first fragment of call ``index`` carries
    ``id`` and ``name``; later ones only argument pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True, frozen=True)
class Finish:
    reason: str  # stop | length | tool_calls | content_filter


@dataclass(slots=True, frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


Event = TextDelta | ThinkingDelta | ToolCallDelta | Finish | Usage
