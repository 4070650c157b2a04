"""Metering: what one request used, taken from the backend or counted.

The handler passes every event to :meth:`Meter.observe`, which keeps what
metering needs and says whether the event is content for the client. At the
end, :meth:`Meter.usage` gives the numbers the client sees and the store
records: the backend's own usage when the response completed and the backend
reported one, otherwise tiktoken counts of the prompt and of what was actually
delivered (a stream cut off by the client or by a failing backend is billed
for what it got; one cut off before its first token, once a backend had taken
it, for the prompt the backend read).
"""
from __future__ import annotations

from privatai.core import tokens
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest


class Meter:
    __slots__ = ("_request", "_text", "_thinking", "_arguments", "_backend_usage", "_reason", "tool_calls")

    def __init__(self, request: ChatRequest | str) -> None:
        # A chat request, or the raw prompt of a text completion.
        self._request = request
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._arguments: list[str] = []
        self._backend_usage: Usage | None = None
        self._reason: str | None = None
        self.tool_calls = False

    def observe(self, event: Event) -> bool:
        """Take note of one event; True when it is content to send the client."""
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
        elif kind is Finish:
            self._reason = event.reason
            return False
        elif kind is Usage:
            self._backend_usage = event
            return False
        return True

    @property
    def finish_reason(self) -> str:
        # Backends such as Ollama say "stop" after a tool call; OpenAI clients
        # expect "tool_calls" then.
        if self.tool_calls and self._reason in (None, "stop"):
            return "tool_calls"
        return self._reason or "stop"

    @property
    def anything_delivered(self) -> bool:
        return bool(self._text or self._thinking or self._arguments)

    async def usage(self, *, complete: bool, delivered: bool = True) -> Usage:
        """The usage to report and bill; counting a long prompt or answer runs
        off the event loop (see :mod:`privatai.core.tokens`). ``delivered``
        is False when the content observed never reached the client (a whole
        answer abandoned before it was sent): its completion is then 0."""
        if complete and self._backend_usage is not None:
            return self._backend_usage
        completion = ["".join(self._text), "".join(self._thinking), "".join(self._arguments)] if delivered else []
        if self._backend_usage is not None:
            counts = await tokens.count_many(completion)
            return Usage(self._backend_usage.prompt_tokens, sum(counts))
        request = self._request
        fixed, prompt = (0, [request]) if isinstance(request, str) else tokens.prompt_texts(request)
        counts = await tokens.count_many(prompt + completion)
        return Usage(fixed + sum(counts[:len(prompt)]), sum(counts[len(prompt):]))
