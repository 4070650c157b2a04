"""The typed context of one request (``request.ctx``).

Everything a request learns on its way through (who is calling, which model
and backend served it, what it used, how it failed) is a field here, written
by the step that learns it and read by the access line
(:mod:`privatai.api.access`). Sanic builds it through
:meth:`GatewayRequest.make_context`; the app uses that request class.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic

from privatai.api.cors import new_request_id
from privatai.core.events import Usage
from privatai.core.routing import RouteInfo

if TYPE_CHECKING:
    from privatai.store.database import Principal


@dataclass(slots=True)
class RequestContext:
    # perf_counter() when the first middleware saw the request.
    started: float = field(default_factory=time.perf_counter)
    # The x-request-id the response carries and the access line names, so an
    # operator can find the line a client quotes (random: it identifies nothing).
    request_id: str = field(default_factory=new_request_id)
    # The API key's owner (routes under the API prefixes only).
    principal: Principal | None = None
    # The public model name the request was routed for.
    model: str | None = None
    # Where the router sent it.
    route: RouteInfo = field(default_factory=RouteInfo)
    # What it used, set once when its response ended however it ended
    # (the access line, metrics and the web chat's budget read it).
    usage: Usage | None = None
    # Seconds from the start to the first content event on a stream.
    ttft: float | None = None
    # A content-free description of how it failed (an exception class).
    error: str | None = None
    # x-ratelimit-* of the key's plan limits, for every response once admitted.
    rate_headers: dict[str, str] | None = None


class GatewayRequest(Request["Sanic[Any, Any]", RequestContext]):
    """Sanic's request with a :class:`RequestContext` as ``ctx``."""

    __slots__ = ()

    @staticmethod
    def make_context() -> RequestContext:
        return RequestContext()
