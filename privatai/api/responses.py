"""POST /responses (the Responses API), stateless, on the chat path.

The request becomes a chat request (:mod:`privatai.core.responses.translate`),
so routing, failover, capacity and metering are the chat endpoint's; a
:class:`ResponseBuilder` turns the events into the ``response`` object or its
documented stream events. Nothing of a request or its answer is kept.
"""
from __future__ import annotations

from sanic.response import HTTPResponse, raw

from privatai.api.admission import plan_admission
from privatai.api.chat import collect, keep_reading, stream_events
from privatai.api.context import GatewayRequest
from privatai.core.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.metering import Meter
from privatai.core.protocol import ChatRequest
from privatai.core.routing import Tenant
from privatai.core.responses.builder import ResponseBuilder, StreamEvent, frame
from privatai.core.responses.translate import parse_responses_request, to_chat_request
from privatai.core.responses.types import ResponsesRequest
from privatai.errors import PrivatAIError
from privatai.state import AppState

# What a response shows; log probabilities and fingerprints have no place in it.
CONTENT = (TextDelta, ThinkingDelta, ToolCallDelta)


def _frames(events: list[StreamEvent]) -> bytes:
    return b"".join(frame(event) for event in events)


class _ResponseFrames:
    """The builder's stream events as SSE frames (the Responses API sends no ``[DONE]``)."""

    def __init__(self, builder: ResponseBuilder) -> None:
        self._builder = builder

    def encode(self, event: Event) -> bytes:
        return _frames(self._builder.add(event)) if isinstance(event, CONTENT) else b""

    def finish(self, reason: str | None, usage: Usage) -> bytes:
        return _frames(self._builder.finish(reason, usage))

    def fail(self, error: PrivatAIError) -> bytes:
        return _frames(self._builder.fail(error.message))


async def responses(request: GatewayRequest) -> HTTPResponse | None:
    state: AppState = request.app.ctx.state
    body = parse_responses_request(request.body)
    chat = to_chat_request(body)
    keep_reading(request)
    model = state.router.resolve(chat.model)
    request.ctx.model = model
    async with plan_admission(request, state, model, chat) as who:
        return await _answer(request, state, body, chat, model, who)


async def _answer(request: GatewayRequest, state: AppState, body: ResponsesRequest, chat: ChatRequest, model: str,
                  who: Tenant | None) -> HTTPResponse | None:
    meter = Meter(chat)
    events = state.router.stream(chat, model, request.ctx.route, who)
    builder = ResponseBuilder(body, model)
    if body.stream:
        encoder = _ResponseFrames(builder)
        await stream_events(request, state, events, meter, encoder, opening=_frames(builder.start()),
                            failure=encoder.fail)
        return None
    usage = await collect(request, state, events, meter,
                          lambda event: builder.add(event) if isinstance(event, CONTENT) else None)
    builder.finish(meter.finish_reason, usage)
    return raw(builder.body(), content_type="application/json")
