"""POST /chat/completions: parse, route, stream or aggregate, meter.

The streaming writer, the gathering of a whole answer and the settling of
usage here are shared with the other endpoints that answer from events
(``/completions``, ``/responses``): each brings its own :class:`FrameEncoder`.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable, Protocol

import orjson
from sanic.response import HTTPResponse, raw

from privatai.api import access
from privatai.api.admission import plan_admission
from privatai.api.context import GatewayRequest
from privatai.core.encoders import (DONE, KEEPALIVE, THINKING_FIELDS, ChunkEncoder, CompletionAggregator,
                                    error_event, new_completion_id)
from privatai.core.events import Event, Finish, Usage
from privatai.core.metering import Meter
from privatai.core.protocol import ChatRequest, parse_chat_request
from privatai.core.routing import Tenant
from privatai.api.negotiation import stream_default
from privatai.errors import PrivatAIError
from privatai.ops.logs import describe_error
from privatai.state import AppState


class FrameEncoder(Protocol):
    """What the stream writer needs of an endpoint's SSE encoder."""

    def encode(self, event: Event) -> bytes:
        """The frames for one content event (empty when it shows nothing)."""

    def finish(self, reason: str | None, usage: Usage) -> bytes:
        """The closing frames, usage included."""


def chat_failure(error: PrivatAIError) -> bytes:
    """A chat stream's in-band error: the SDK raises on it."""
    return error_event(error) + DONE


SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told otherwise; SSE must not wait.
    "X-Accel-Buffering": "no",
}


async def chat_completions(request: GatewayRequest) -> HTTPResponse | None:
    state: AppState = request.app.ctx.state
    return await run_chat(request, parse_chat_request(request.body, stream_default=stream_default(
        request.headers.get("accept"), state.config.server.stream_by_default)))


async def run_chat(request: GatewayRequest, chat: ChatRequest) -> HTTPResponse | None:
    """Route one chat request and answer it: the whole ``chat.completion``, or
    None once it has been streamed.

    Shared by the API route and the web chat. However the response ends, its
    usage is then in ``request.ctx.usage`` (and recorded for an API key):
    also when the client left, which ends this call with a cancellation
    instead of a value.
    """
    state: AppState = request.app.ctx.state
    keep_reading(request)
    model = state.router.resolve(chat.model)
    request.ctx.model = model
    async with plan_admission(request, state, model, chat) as who:
        return await _answer(request, state, chat, model, who)


async def _answer(request: GatewayRequest, state: AppState, chat: ChatRequest, model: str,
                  who: Tenant | None) -> HTTPResponse | None:
    meter = Meter(chat)
    events = state.router.stream(chat, model, request.ctx.route, who)
    completion_id, created = new_completion_id(), int(time.time())
    thinking_fields = THINKING_FIELDS[state.config.server.thinking_field]
    if chat.stream:
        encoder = ChunkEncoder(completion_id, created, model, include_usage=chat.include_usage,
                               thinking_fields=thinking_fields)
        await stream_events(request, state, events, meter, encoder)
        return None
    aggregator = CompletionAggregator(thinking_fields)
    return await _complete(request, state, events, meter, aggregator, completion_id, created, model)


def keep_reading(request: GatewayRequest) -> None:
    """Notice a client that leaves while its answer is made.

    Sanic stops reading the socket while a large body fills its buffer and
    resumes only when it wants more; a body that arrived whole leaves it
    stopped, and then nothing notices a client that leaves (its upstream
    would generate on, unbilled). Reading again costs nothing: the buffer is
    still capped, and the end of the connection is seen at once. (Under
    ASGI the transport is a stand-in without the switch, and needs none.)
    """
    resume_reading = getattr(request.transport, "resume_reading", None)
    if resume_reading is not None:
        resume_reading()


async def _complete(request: GatewayRequest, state: AppState, events: AsyncIterator[Event], meter: Meter,
                    aggregator: CompletionAggregator, completion_id: str, created: int, model: str) -> HTTPResponse:
    usage = await collect(request, state, events, meter, aggregator.add)
    aggregator.add(Finish(meter.finish_reason))
    aggregator.add(usage)
    body = orjson.dumps(aggregator.result(completion_id, created, model))
    return raw(body, content_type="application/json")


async def collect(request: GatewayRequest, state: AppState, events: AsyncIterator[Event], meter: Meter,
                  add: Callable[[Event], object]) -> Usage:
    """Gather a whole answer: every content event to ``add``, then its usage,
    settled. A client that leaves meanwhile was sent nothing, but a backend
    may have read the prompt (see :func:`_settle_cut_off`)."""
    try:
        async for event in events:
            if meter.observe(event):
                add(event)
    except asyncio.CancelledError:
        await events.aclose()  # type: ignore[attr-defined]
        await _settle_cut_off(request, state, meter, client_left=True, delivered=False)
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return await _settle(request, state, meter, complete=True)


async def _settle(request: GatewayRequest, state: AppState, meter: Meter, *, complete: bool,
                  delivered: bool = True) -> Usage:
    """The request's usage, fixed once (and recorded for an API key) when its response ended."""
    ctx = request.ctx
    if ctx.usage is None:
        ctx.usage = await meter.usage(complete=complete, delivered=delivered)
        if ctx.principal is not None and ctx.model is not None:
            state.record_usage(ctx.principal, ctx.model, ctx.usage)
    return ctx.usage


async def _settle_cut_off(request: GatewayRequest, state: AppState, meter: Meter, *, client_left: bool,
                          delivered: bool) -> None:
    """A response that did not complete is billed for what the client was
    sent; when the client left, also for the prompt once a backend had taken
    the request (the backend read it, so that work was done). Nothing else."""
    ctx = request.ctx
    if ctx.usage is None and ((delivered and meter.anything_delivered)
                              or (client_left and ctx.route.admitted)):
        await _settle(request, state, meter, complete=False, delivered=delivered)


async def stream_events(request: GatewayRequest, state: AppState, events: AsyncIterator[Event], meter: Meter,
                        encoder: FrameEncoder, *, opening: bytes = b"",
                        failure: Callable[[PrivatAIError], bytes] = chat_failure) -> None:
    """Stream an answer as SSE: ``opening`` once the response has begun, the
    encoder's frames, and after a failure once streaming began ``failure``'s
    in-band error."""
    ctx = request.ctx
    interval = state.config.server.keepalive_interval
    response: HTTPResponse | None = None
    sent = 0
    left = False
    first = asyncio.ensure_future(events.__anext__())  # type: ignore[attr-defined]
    try:
        # Wait for the first event before committing to a 200, so that early
        # failures (capacity, backend down, upstream rejects the request) are
        # real HTTP errors. Once a backend has taken the request, a slow first
        # token gets SSE comments to keep the connection alive; while it still
        # waits in the router's queue nothing is sent, so that a queue timeout
        # is a real 429 with Retry-After.
        while True:
            done, _ = await asyncio.wait((first,), timeout=interval)
            if done:
                break
            if not ctx.route.admitted:
                continue
            if response is None:
                response = await _begin(request, opening)
            await response.send(KEEPALIVE)
        event: Event | None = _first_result(first)
        if response is None:
            response = await _begin(request, opening)
        # The per-token loop: bound methods, and __anext__ awaited directly
        # (anext() with a default wraps every step in one more awaitable).
        observe, encode, send, next_event = meter.observe, encoder.encode, response.send, events.__anext__
        while event is not None:
            if observe(event) and (frame := encode(event)):
                await send(frame)
                if not sent:  # the first content event is out: time to first token, for metrics
                    ctx.ttft = time.perf_counter() - ctx.started
                sent += len(frame)
            try:
                event = await next_event()
            except StopAsyncIteration:
                event = None
        usage = await _settle(request, state, meter, complete=True)
        # The finish chunk and the end of the body in one write.
        await response.send(encoder.finish(meter.finish_reason, usage), end_stream=True)
    except asyncio.CancelledError:
        left = True
        raise
    except Exception as exc:
        if response is None:
            raise  # nothing sent yet: the error handler answers with a status
        # Once streaming began, errors go in-band; the SDK raises on them.
        error = exc if isinstance(exc, PrivatAIError) else PrivatAIError("Internal server error.")
        ctx.error = describe_error(exc)
        await response.send(failure(error), end_stream=True)
    finally:
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
        await _settle_cut_off(request, state, meter, client_left=left, delivered=True)
        if response is not None:
            # Only this writer sees a stream end (see privatai.api.access).
            access.write(request, 200, sent)


async def _begin(request: GatewayRequest, opening: bytes) -> HTTPResponse:
    response = await request.respond(content_type=access.EVENT_STREAM, headers=SSE_HEADERS)
    if opening:
        await response.send(opening)
    return response


def _first_result(first: asyncio.Future[Event]) -> Event | None:
    try:
        return first.result()
    except StopAsyncIteration:
        return None
