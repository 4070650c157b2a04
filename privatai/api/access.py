"""The access line: one content-free line per request, and the metrics with it.

This module owns both. :func:`write` is the only writer, and every request
reaches it exactly once, when its response has ended:

* a response Sanic sends whole (any status, errors included) in the response
  middleware :func:`log_response`, which runs just before it is sent;
* an event stream (:data:`EVENT_STREAM`) only its writer sees end, so
  :mod:`privatai.api.chat` calls :func:`write` when the stream is over, and
  the middleware, which runs when the stream's headers go out, leaves it alone.

The line never carries a body, header, query or address (a keyed hash of the
address when ``logging.hashed_client_ip`` is on); it names the response's
random ``x-request-id``, which a client can quote.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from sanic.response import HTTPResponse

from privatai.api.context import GatewayRequest
from privatai.ops.logs import access_log, hash_client
from privatai.state import AppState

EVENT_STREAM = "text/event-stream"


def log_response(request: GatewayRequest, response: HTTPResponse) -> None:
    """From the app's response middleware: the line for every response except an event stream."""
    if response.content_type == EVENT_STREAM:
        return
    body = response.body
    write(request, response.status, len(body) if body is not None else None)


@functools.lru_cache(maxsize=256)
def _route_name(path: str) -> str:
    # Sanic's route paths have no leading slash; one per route, so cached.
    return "/" + path.lstrip("/")


def write(request: GatewayRequest, status: int, nbytes: int | None) -> None:
    """Write the access line of ``request`` (only built when the logger is on) and feed the metrics."""
    state: AppState = request.app.ctx.state
    ctx = request.ctx
    route = _route_name(request.route.path) if request.route is not None else "/(unmatched)"
    duration = time.perf_counter() - ctx.started
    backend = ctx.route.backend
    if access_log.isEnabledFor(logging.INFO):
        _line(request, state, route, status, nbytes, duration)
    if state.metrics is not None:
        state.metrics.observe(route, status, ctx.model, backend, duration, ctx.usage, ctx.ttft)


def _line(request: GatewayRequest, state: AppState, route: str, status: int, nbytes: int | None,
          duration: float) -> None:
    ctx = request.ctx
    fields: dict[str, Any] = {
        "method": request.method,
        "route": route,
        "status": status,
        "ms": round(duration * 1000, 1),
        "request_id": ctx.request_id,
    }
    if nbytes is not None:
        fields["bytes"] = nbytes
    if ctx.model is not None:
        fields["model"] = ctx.model
    if ctx.route.backend is not None:
        fields["backend"] = ctx.route.backend
    if ctx.principal is not None:
        fields["key"] = ctx.principal.key_prefix
    if state.config.logging.hashed_client_ip:
        # The socket peer, never a header a client can set.
        fields["client"] = hash_client(request.ip)
    if ctx.usage is not None:
        fields["tokens_in"] = ctx.usage.prompt_tokens
        fields["tokens_out"] = ctx.usage.completion_tokens
    if ctx.error is not None:
        fields["error"] = ctx.error
    if state.runtime is not None:
        fields["worker"] = os.getpid()  # which of several workers answered
    access_log.info("request", extra={"fields": fields})
