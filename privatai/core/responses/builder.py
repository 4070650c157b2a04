"""Normalized events into the Responses API's stream events and ``response`` object.

One :class:`ResponseBuilder` serves both modes: streamed, each call returns the
events to send (``response.created`` ... ``response.completed``, numbered by
``sequence_number``); whole, the same calls build the object that
:meth:`ResponseBuilder.response` returns. Output items follow the order the
backend produced them in: reasoning (its text as the summary), the message,
function calls; a change of kind closes the open item with its ``.done`` events.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from privatai.core import tokens
from privatai.core.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.responses.types import (FunctionCallItem, IncompleteDetails, OutputItem, OutputMessage,
                                           OutputText, Reasoning, ReasoningItem, Response, ResponseError,
                                           ResponsesRequest, ResponseUsage, SummaryText, TextConfig,
                                           OutputTokensDetails)

StreamEvent = dict[str, Any]
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True)
class _TextKind:
    """How one kind of text item streams: the answer's message, or reasoning
    as its summary. Both hold one part whose text grows by deltas."""

    item: type[OutputMessage] | type[ReasoningItem]
    prefix: str  # of the item id
    parts: str  # the attribute holding the part
    index: str  # the events' index field for the part
    part: type[OutputText] | type[SummaryText]
    text_events: str
    part_events: str
    extra: dict[str, Any]  # fields only the message's text events carry


_MESSAGE = _TextKind(OutputMessage, "msg", "content", "content_index", OutputText,
                     "response.output_text", "response.content_part", {"logprobs": []})
_REASONING = _TextKind(ReasoningItem, "rs", "summary", "summary_index", SummaryText,
                       "response.reasoning_summary_text", "response.reasoning_summary_part", {})
_TEXT_KINDS = {OutputMessage: _MESSAGE, ReasoningItem: _REASONING}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def frame(event: StreamEvent) -> bytes:
    """One stream event as SSE, with OpenAI's ``event:`` line naming its type."""
    return b"event: " + event["type"].encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


class ResponseBuilder:
    def __init__(self, request: ResponsesRequest, model: str, *, response_id: str | None = None,
                 created_at: int | None = None) -> None:
        self._response = Response(
            id=response_id or _id("resp"),
            created_at=created_at if created_at is not None else int(time.time()),
            model=model, status="in_progress", output=[],
            tools=list(request.tools or ()), tool_choice=request.tool_choice or "auto",
            parallel_tool_calls=True, text=request.text or TextConfig(),
            reasoning=request.reasoning or Reasoning(),
            instructions=request.instructions, max_output_tokens=request.max_output_tokens,
            temperature=request.temperature, top_p=request.top_p, metadata=request.metadata or {})
        self._sequence = 0
        self._open: OutputItem | None = None
        self._calls: dict[int, FunctionCallItem] = {}  # tool-call index -> its item
        self._thinking: list[str] = []

    # -- helpers ---------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _snapshot(self) -> Response:
        return msgspec.structs.replace(self._response, output=list(self._response.output))

    def _index(self, item: OutputItem) -> int:
        return next(i for i, it in enumerate(self._response.output) if it is item)

    def _add_item(self, item: OutputItem) -> list[StreamEvent]:
        events = self._close()
        self._response.output.append(item)
        self._open = item
        # The added event carries the item as it was then (empty), not a reference.
        added = msgspec.structs.replace(item)
        kind = _TEXT_KINDS.get(type(item))
        if kind is not None:
            setattr(added, kind.parts, [])
        events.append(self._event("response.output_item.added", output_index=self._index(item), item=added))
        return events

    def _close(self, status: str = "completed") -> list[StreamEvent]:
        """The ``.done`` events of the open item, if any."""
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status  # type: ignore[assignment]
        index = self._index(item)
        events: list[StreamEvent] = []
        kind = _TEXT_KINDS.get(type(item))
        if kind is not None:
            part = getattr(item, kind.parts)[0]
            common = {"item_id": item.id, "output_index": index, kind.index: 0}
            events.append(self._event(f"{kind.text_events}.done", **common, text=part.text, **kind.extra))
            events.append(self._event(f"{kind.part_events}.done", **common, part=part))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                      output_index=index, arguments=item.arguments))  # type: ignore[union-attr]
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    # -- the stream --------------------------------------------------------

    def start(self) -> list[StreamEvent]:
        return [self._event("response.created", response=self._snapshot()),
                self._event("response.in_progress", response=self._snapshot())]

    def add(self, event: Event) -> list[StreamEvent]:
        """The stream events for one content event (text, thinking, tool call)."""
        kind = type(event)
        if kind is TextDelta:
            return self._append_text(_MESSAGE, event.text)  # type: ignore[union-attr]
        if kind is ThinkingDelta:
            self._thinking.append(event.text)  # type: ignore[union-attr]
            return self._append_text(_REASONING, event.text)  # type: ignore[union-attr]
        if kind is ToolCallDelta:
            return self._tool_call(event)  # type: ignore[arg-type]
        raise TypeError(f"not a content event: {kind.__name__}")

    def _append_text(self, kind: _TextKind, text: str) -> list[StreamEvent]:
        """Text onto the open item of ``kind``, opening one (and its part) first if needed."""
        events: list[StreamEvent] = []
        item = self._open
        if type(item) is not kind.item:
            item = kind.item(id=_id(kind.prefix), status="in_progress", **{kind.parts: [kind.part(text="")]})
            events = self._add_item(item)
            events.append(self._event(f"{kind.part_events}.added", item_id=item.id,
                                      output_index=self._index(item), **{kind.index: 0}, part=kind.part(text="")))
        getattr(item, kind.parts)[0].text += text
        events.append(self._event(f"{kind.text_events}.delta", item_id=item.id, output_index=self._index(item),
                                  **{kind.index: 0}, delta=text, **kind.extra))
        return events

    def _tool_call(self, event: ToolCallDelta) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._calls.get(event.index)
        if item is None:
            item = FunctionCallItem(id=_id("fc"), call_id=event.id or _id("call"), name=event.name or "",
                                    arguments="", status="in_progress")
            self._calls[event.index] = item
            events = self._add_item(item)
        elif event.name and not item.name:
            item.name = event.name
        if event.arguments:
            item.arguments += event.arguments
            events.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                      output_index=self._index(item), delta=event.arguments))
        return events

    def finish(self, reason: str | None, usage: Usage) -> list[StreamEvent]:
        """Close the open item and the response: ``response.completed``, or
        ``response.incomplete`` when the output limit or a filter cut it short."""
        incomplete = _INCOMPLETE.get(reason or "")
        events = self._close("incomplete" if incomplete else "completed")
        response = self._response
        response.usage = self._usage(usage)
        if incomplete:
            response.status = "incomplete"
            response.incomplete_details = IncompleteDetails(reason=incomplete)  # type: ignore[arg-type]
            events.append(self._event("response.incomplete", response=self._snapshot()))
        else:
            response.status = "completed"
            events.append(self._event("response.completed", response=self._snapshot()))
        return events

    def fail(self, message: str) -> list[StreamEvent]:
        """After streaming began: the ``error`` event, then ``response.failed``."""
        events = self._close("incomplete")
        self._response.status = "failed"
        self._response.error = ResponseError(code="server_error", message=message)
        events.append(self._event("error", code="server_error", message=message, param=None))
        events.append(self._event("response.failed", response=self._snapshot()))
        return events

    def _usage(self, usage: Usage) -> ResponseUsage:
        # Backends report no reasoning share, so it is counted from the
        # reasoning text (as metering counts it) and never exceeds the output.
        reasoning = min(usage.completion_tokens, tokens.count_text("".join(self._thinking)))
        return ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                             total_tokens=usage.total_tokens,
                             output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning))

    def response(self) -> Response:
        """The whole ``response`` object (after :meth:`finish`)."""
        return self._response

    def body(self) -> bytes:
        """The whole ``response`` object as the non-streamed JSON body."""
        return msgspec.json.encode(self._response)
