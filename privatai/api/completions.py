"""POST /completions (legacy text completions): the chat endpoint's routing,
streaming and metering, with the backend's own prompt-based endpoint."""
from __future__ import annotations

import time

from sanic.response import HTTPResponse, raw

from privatai.api.admission import plan_admission
from privatai.api.chat import collect, keep_reading, stream_events
from privatai.api.context import GatewayRequest
from privatai.core.completions import (CompletionChunkEncoder, CompletionRequest, completion_body, new_completion_id,
                                       parse_completion_request)
from privatai.core.events import Event, TextDelta, Usage
from privatai.core.metering import Meter
from privatai.core.routing import Tenant
from privatai.state import AppState


class _TextFrames:
    """A raw continuation shows only text; other events (a fingerprint) add nothing."""

    def __init__(self, encoder: CompletionChunkEncoder) -> None:
        self._encoder = encoder

    def encode(self, event: Event) -> bytes:
        return self._encoder.encode(event) if type(event) is TextDelta else b""

    def finish(self, reason: str | None, usage: Usage) -> bytes:
        return self._encoder.finish(reason, usage)


async def completions(request: GatewayRequest) -> HTTPResponse | None:
    state: AppState = request.app.ctx.state
    body = parse_completion_request(request.body)
    prompt = body.text()
    keep_reading(request)
    model = state.router.resolve(body.model)
    request.ctx.model = model
    async with plan_admission(request, state, model) as who:
        return await _answer(request, state, body, prompt, model, who)


async def _answer(request: GatewayRequest, state: AppState, body: CompletionRequest, prompt: str, model: str,
                  who: Tenant | None) -> HTTPResponse | None:
    meter = Meter(prompt)
    events = state.router.events(model, request.ctx.route,
                                 lambda adapter, upstream: adapter.complete_text(body, prompt, upstream), who)
    completion_id, created = new_completion_id(), int(time.time())
    if body.stream:
        encoder = CompletionChunkEncoder(completion_id, created, model, include_usage=body.include_usage)
        await stream_events(request, state, events, meter, _TextFrames(encoder))
        return None
    text: list[str] = []
    usage = await collect(request, state, events, meter,
                          lambda event: text.append(event.text) if type(event) is TextDelta else None)
    return raw(completion_body(completion_id, created, model, "".join(text), meter.finish_reason, usage),
               content_type="application/json")
