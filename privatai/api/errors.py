"""Every error as OpenAI's error JSON, whatever raised it.

Our own :class:`~privatai.errors.PrivatAIError` carries its status, type and
code; Sanic's exceptions (unknown route, wrong method, body too large) are
mapped to ours without echoing their text; anything else is a plain 500.
Errors are logged by class and status only.
"""
from __future__ import annotations

import asyncio
import logging

import sqlalchemy.exc

from sanic import Request
from sanic.exceptions import NotFound as RouteNotFound
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from privatai.api.routes import needs_api_key
from privatai.errors import InvalidRequest, NotFound, PayloadTooLarge, PrivatAIError, ServiceUnavailable
from privatai.ops.logs import describe_error

log = logging.getLogger("privatai.app")


def to_api_error(exception: BaseException, request: Request | None = None) -> PrivatAIError:
    """Any exception as one of ours, without echoing its text unless it is ours.

    An unknown route under an API prefix (the caller has a key by then, see
    :func:`needs_api_key`) is named in the answer, so that a client calling
    an endpoint OpenAI has and this gateway does not learns which one.
    """
    if isinstance(exception, PrivatAIError):
        return exception
    if isinstance(exception, RouteNotFound) and request is not None and needs_api_key(request.path):
        return NotFound(f"This gateway does not offer {request.method} {request.path}; "
                        "its endpoints are listed in /api/v1/openapi.json.", code="unknown_route")
    if isinstance(exception, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, ConnectionError)):
        # The database is away (docs/SCALING.md): a 503 to retry, not a 500.
        return ServiceUnavailable("The database is unreachable right now; please try again shortly.",
                                  code="store_unavailable")
    if isinstance(exception, SanicException):
        status = exception.status_code
        if status == 413:
            return PayloadTooLarge("Request body is larger than this server accepts.")
        if status == 404:
            return NotFound("Unknown route.")
        if status == 405:
            return InvalidRequest("Method not allowed on this route.", status=405, code="method_not_allowed")
        if 400 <= status < 500:
            return InvalidRequest("The request could not be processed.", status=status)
    return PrivatAIError("Internal server error.")


class OpenAIErrorHandler(ErrorHandler):
    """Every error as OpenAI's error JSON; logged by class and status only."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, asyncio.CancelledError):
            # The client went away (Sanic's RequestCancelled): not a server
            # error. Nobody reads this response; 499 is nginx's name for it.
            request.ctx.error = "client_disconnected"
            return json(PrivatAIError("Client closed the request.").to_dict(), status=499)
        error = to_api_error(exception, request)
        if error.status >= 500:
            log.error("request failed: %s", describe_error(exception))
        return json(error.to_dict(), status=error.status, headers=error.headers)

    @staticmethod
    def log(request: Request, exception: Exception) -> None:
        # Sanic's own exception logging prints tracebacks, which can quote
        # request content; default() above logs what is safe.
        return None
