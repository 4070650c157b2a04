"""Response headers every API client may read: ``x-request-id`` and CORS.

Every response carries a random ``x-request-id`` a client can quote in a
support request; it identifies nothing and is never logged with content.
Browsers may call the API from the origins listed in ``server.cors_origins``
(none by default; ``"*"`` for any). A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered 204 without a key, as
browsers send none on it; the CORS headers appear only for a listed origin,
so any other origin's browser refuses the call.
"""
from __future__ import annotations

import random

from sanic import Request, Sanic
from sanic.response import HTTPResponse, empty

REQUEST_ID = "x-request-id"
# What a browser script may read besides the basics: the request id and the
# rate-limit answers.
EXPOSED = ", ".join((REQUEST_ID, "retry-after", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                     "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                     "x-ratelimit-reset-tokens"))
MAX_AGE = "600"


def new_request_id() -> str:
    # An id, not a secret: the process's Mersenne Twister (seeded from the OS,
    # and again in each forked child) spares a getrandom call per request.
    return f"req_{random.getrandbits(128):032x}"


class Cors:
    def __init__(self, origins: list[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(origins)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    async def preflight(self, request: Request, **_: object) -> HTTPResponse:
        headers: dict[str, str] = {}
        origin = request.headers.get("origin")
        if self.allowed(origin):
            headers = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": MAX_AGE}
            # The OpenAI JS SDK sends its own x-stainless-* headers: echo what is asked.
            asked = request.headers.get("access-control-request-headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked
        return empty(status=204, headers=headers)

    def decorate(self, request: Request, response: HTTPResponse) -> None:
        """The CORS headers of a response to a listed origin."""
        origin = request.headers.get("origin")
        if self.allowed(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
            response.headers.add("Vary", "Origin")


def register(app: Sanic, origins: list[str], api_paths: list[tuple[str, str]]) -> Cors | None:
    """Preflight routes for ``api_paths`` (path, route name); the :class:`Cors`
    whose :meth:`Cors.decorate` the app's response middleware calls, None
    when no origin is listed (no response then carries CORS headers)."""
    cors = Cors(origins)
    for path, name in api_paths:
        app.add_route(cors.preflight, path, methods=["OPTIONS"], name=f"{name}_preflight")
    return cors if origins else None
