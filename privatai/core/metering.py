"""Metering: what one request used, taken from the backend or counted.

The handler passes each delivered content event to :meth:`Meter.delivered`
and backend usage to :meth:`Meter.backend_reported`. At the end, :meth:`usage`
gives the numbers the client sees and the store records: the backend's own
usage when the response completed and the backend reported one, otherwise
tiktoken counts of the prompt and of what was actually delivered (a stream cut
off by the client or by a failing backend is billed for what it got).
"""
from __future__ import annotations

from privatai.core.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest
from privatai.core import tokens


class Meter:
    __slots__ = ("_request", "_text", "_thinking", "_arguments", "_backend_usage", "tool_calls")

    def __init__(self, request: ChatRequest) -> None:
        self._request = request
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._arguments: list[str] = []
        self._backend_usage: Usage | None = None
        self.tool_calls = False

    def delivered(self, event: Event) -> None:
        kind = type(event)
        if kind is TextDelta:
            self._text.append(event.text)
        elif kind is ThinkingDelta:
            self._thinking.append(event.text)
        elif kind is ToolCallDelta:
            self.tool_calls = True
            if event.name:
                self._arguments.append(event.name)
            self._arguments.append(event.arguments)

    def backend_reported(self, usage: Usage) -> None:
        self._backend_usage = usage

    @property
    def anything_delivered(self) -> bool:
        return bool(self._text or self._thinking or self._arguments)

    def usage(self, *, complete: bool) -> Usage:
        if complete and self._backend_usage is not None:
            return self._backend_usage
        prompt = (self._backend_usage.prompt_tokens if self._backend_usage is not None
                  else tokens.count_prompt(self._request))
        completion = tokens.count_completion("".join(self._text), "".join(self._thinking),
                                             "".join(self._arguments))
        return Usage(prompt, completion)
