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
        if isinstance(added, OutputMessage):
            added.content = []
        elif isinstance(added, ReasoningItem):
            added.summary = []
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
        if isinstance(item, OutputMessage):
            part = item.content[0]
            common = {"item_id": item.id, "output_index": index, "content_index": 0}
            events.append(self._event("response.output_text.done", **common, text=part.text, logprobs=[]))
            events.append(self._event("response.content_part.done", **common, part=part))
        elif isinstance(item, ReasoningItem):
            part = item.summary[0]
            common = {"item_id": item.id, "output_index": index, "summary_index": 0}
            events.append(self._event("response.reasoning_summary_text.done", **common, text=part.text))
            events.append(self._event("response.reasoning_summary_part.done", **common, part=part))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                      output_index=index, arguments=item.arguments))
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
            return self._text(event.text)  # type: ignore[union-attr]
        if kind is ThinkingDelta:
            return self._reasoning(event.text)  # type: ignore[union-attr]
        if kind is ToolCallDelta:
            return self._tool_call(event)  # type: ignore[arg-type]
        raise TypeError(f"not a content event: {kind.__name__}")

    def _text(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        item = self._open
        if not isinstance(item, OutputMessage):
            item = OutputMessage(id=_id("msg"), status="in_progress", content=[OutputText(text="")])
            events = self._add_item(item)
            events.append(self._event("response.content_part.added", item_id=item.id,
                                      output_index=self._index(item), content_index=0,
                                      part=OutputText(text="")))
        item.content[0].text += text
        events.append(self._event("response.output_text.delta", item_id=item.id, output_index=self._index(item),
                                  content_index=0, delta=text, logprobs=[]))
        return events

    def _reasoning(self, text: str) -> list[StreamEvent]:
        self._thinking.append(text)
        events: list[StreamEvent] = []
        item = self._open
        if not isinstance(item, ReasoningItem):
            item = ReasoningItem(id=_id("rs"), status="in_progress", summary=[SummaryText(text="")])
            events = self._add_item(item)
            events.append(self._event("response.reasoning_summary_part.added", item_id=item.id,
                                      output_index=self._index(item), summary_index=0,
                                      part=SummaryText(text="")))
        item.summary[0].text += text
        events.append(self._event("response.reasoning_summary_text.delta", item_id=item.id,
                                  output_index=self._index(item), summary_index=0, delta=text))
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
