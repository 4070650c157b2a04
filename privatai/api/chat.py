"""POST /chat/completions: parse, route, stream or aggregate, meter."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import orjson
from sanic import Request
from sanic.response import HTTPResponse, raw

from privatai.errors import PrivatAIError
from privatai.core.events import Event, Finish, Usage
from privatai.ops.logs import describe_error
from privatai.core.metering import Meter
from privatai.core.protocol import (DONE, KEEPALIVE, THINKING_FIELDS, ChatRequest, ChunkEncoder,
                        CompletionAggregator, error_event, new_completion_id, parse_chat_request)
from privatai.core.routing import RouteInfo
from privatai.api.negotiation import stream_default
from privatai.state import AppState

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told otherwise; SSE must not wait.
    "X-Accel-Buffering": "no",
}


async def chat_completions(request: Request) -> HTTPResponse | None:
    state: AppState = request.app.ctx.state
    chat = parse_chat_request(request.body, stream_default=stream_default(
        request.headers.get("accept"), state.config.server.stream_by_default))
    return await run_chat(request, state, chat)


async def run_chat(request: Request, state: AppState, chat: ChatRequest,
                   on_done: Any = None) -> HTTPResponse | None:
    """Shared by the API route and the web chat: route, respond, meter.

    ``on_done(usage)`` runs once when the response ended (web chat limiter).
    """
    model = state.router.resolve(chat.model)
    request.ctx.model = model
    info = RouteInfo()
    request.ctx.route = info
    meter = Meter(chat)
    events = state.router.stream(chat, model, info)
    completion_id = new_completion_id()
    created = int(time.time())
    thinking_fields = THINKING_FIELDS[state.config.server.thinking_field]
    if chat.stream:
        encoder = ChunkEncoder(completion_id, created, model, include_usage=chat.include_usage,
                               thinking_fields=thinking_fields)
        return await _stream(request, state, events, meter, encoder, model, on_done)
    return await _complete(request, state, events, meter, completion_id, created, model,
                           thinking_fields, on_done)


def _finish_reason(reason: str | None, meter: Meter) -> str:
    # Backends such as Ollama say "stop" after a tool call; OpenAI clients
    # expect "tool_calls" then.
    if meter.tool_calls and reason in (None, "stop"):
        return "tool_calls"
    return reason or "stop"


def _record(request: Request, state: AppState, model: str, usage: Usage, on_done: Any) -> None:
    request.ctx.usage = usage
    principal = getattr(request.ctx, "principal", None)
    if principal is not None:
        state.record_usage(principal, model, usage)
    if on_done is not None:
        on_done(usage)


async def _complete(request: Request, state: AppState, events: AsyncIterator[Event], meter: Meter,
                    completion_id: str, created: int, model: str,
                    thinking_fields: tuple[str, ...], on_done: Any) -> HTTPResponse:
    aggregator = CompletionAggregator(thinking_fields)
    reason: str | None = None
    recorded = False
    try:
        async for event in events:
            kind = type(event)
            if kind is Finish:
                reason = event.reason
            elif kind is Usage:
                meter.backend_reported(event)
            else:
                aggregator.add(event)
                meter.delivered(event)
        usage = meter.usage(complete=True)
        aggregator.add(Finish(_finish_reason(reason, meter)))
        aggregator.add(usage)
        body = orjson.dumps(aggregator.result(completion_id, created, model))
        _record(request, state, model, usage, on_done)
        recorded = True
        return raw(body, content_type="application/json")
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        if not recorded and on_done is not None:
            on_done(None)


async def _stream(request: Request, state: AppState, events: AsyncIterator[Event], meter: Meter,
                  encoder: ChunkEncoder, model: str, on_done: Any) -> HTTPResponse | None:
    interval = state.config.server.keepalive_interval
    response = None
    complete = False
    sent = 0
    # The access line is written when the stream ends, not when headers go out.
    request.ctx.streaming = True
    first = asyncio.ensure_future(events.__anext__())
    try:
        # Wait for the first event before committing to a 200, so that early
        # failures (capacity, backend down, upstream rejects the request) are
        # real HTTP errors; while a slow first token is pending, keep the
        # connection alive with SSE comments.
        while True:
            done, _ = await asyncio.wait((first,), timeout=interval)
            if done:
                break
            if response is None:
                response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
            await response.send(KEEPALIVE)
        try:
            event: Event | None = first.result()
        except StopAsyncIteration:
            event = None
        if response is None:
            response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
        reason: str | None = None
        while event is not None:
            kind = type(event)
            if kind is Finish:
                reason = event.reason
            elif kind is Usage:
                meter.backend_reported(event)
            else:
                frame = encoder.encode(event)
                await response.send(frame)
                if not sent:  # the first content event is out: time to first token, for metrics
                    request.ctx.ttft = time.perf_counter() - request.ctx.started
                sent += len(frame)
                meter.delivered(event)
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                event = None
        usage = meter.usage(complete=True)
        complete = True
        _record(request, state, model, usage, on_done)
        await response.send(encoder.finish(_finish_reason(reason, meter), usage))
        await response.eof()
        return None
    except Exception as exc:
        if response is None:
            raise  # nothing sent yet: the error handler answers with a status
        # Once streaming began, errors go in-band; the SDK raises on them.
        error = exc if isinstance(exc, PrivatAIError) else PrivatAIError("Internal server error.")
        request.ctx.error = describe_error(exc)
        await response.send(error_event(error) + DONE)
        await response.eof()
        return None
    finally:
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
        if not complete:
            # Cut off by the client, the backend or an error: bill what was
            # delivered, and nothing when nothing was.
            if meter.anything_delivered:
                _record(request, state, model, meter.usage(complete=False), on_done)
            elif on_done is not None:
                on_done(None)
        if response is not None:
            state.log_access(request, 200, sent)
        else:
            # Nothing was sent: the error handler's response (or a client
            # disconnect) is logged by the access middleware as for any request.
            request.ctx.streaming = False
