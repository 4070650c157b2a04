"""create_app(config) -> Sanic: routes, middleware, listeners."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from privatai import portal
from privatai.api import cors, webchat
from privatai.api.chat import chat_completions
from privatai.api.health import first_probe, healthz, readyz
from privatai.api.metrics import metrics_endpoint
from privatai.api.models import get_model, list_models
from privatai.api.usage import usage
from privatai.api.auth import authenticate
from privatai.config import Config
from privatai.errors import InvalidRequest, NotFound, PayloadTooLarge, PrivatAIError
from privatai.ops.logs import describe_error, loop_exception_handler
from privatai.ops.startup import close_parts, open_parts
from privatai.core.routing import Router
from privatai.state import AppState

log = logging.getLogger("privatai.app")

API_PREFIXES = ("/api/v1", "/v1")


def to_api_error(exception: BaseException) -> PrivatAIError:
    """Any exception as one of ours, without echoing its text unless it is ours."""
    if isinstance(exception, PrivatAIError):
        return exception
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
        error = to_api_error(exception)
        if error.status >= 500:
            log.error("request failed: %s", describe_error(exception))
        return json(error.to_dict(), status=error.status, headers=error.headers)

    @staticmethod
    def log(request: Request, exception: Exception) -> None:
        # Sanic's own exception logging prints tracebacks, which can quote
        # request content; default() above logs what is safe.
        return None


def create_app(config: Config, *, name: str = "privatai") -> Sanic:
    app = Sanic(name, configure_logging=False, error_handler=OpenAIErrorHandler())
    app.config.REQUEST_MAX_SIZE = config.server.max_body_bytes
    app.config.RESPONSE_TIMEOUT = config.server.response_timeout
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = config.server.grace_period
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.AUTO_EXTEND = False
    app.ctx.state = AppState(config=config, router=Router(config))

    api_paths: list[tuple[str, str]] = []
    for prefix in API_PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        app.add_route(chat_completions, f"{prefix}/chat/completions", methods=["POST"], name=f"{tag}_chat")
        app.add_route(list_models, f"{prefix}/models", methods=["GET"], name=f"{tag}_models")
        app.add_route(get_model, f"{prefix}/models/<model_id:path>", methods=["GET"], name=f"{tag}_model")
        app.add_route(usage, f"{prefix}/usage", methods=["GET"], name=f"{tag}_usage")
        api_paths += [(f"{prefix}/chat/completions", f"{tag}_chat"), (f"{prefix}/models", f"{tag}_models"),
                      (f"{prefix}/models/<model_id:path>", f"{tag}_model"), (f"{prefix}/usage", f"{tag}_usage")]
    cors.register(app, config.server.cors_origins, api_paths)
    app.add_route(healthz, "/healthz", methods=["GET"], name="healthz")
    app.add_route(readyz, "/readyz", methods=["GET"], name="readyz")
    if config.metrics.enabled:
        app.add_route(metrics_endpoint(config.metrics), "/metrics", methods=["GET"], name="metrics")
    if config.web_chat.enabled:
        webchat.register(app)
    portal.register(app)

    @app.on_request(priority=1000)
    async def start_clock(request: Request) -> None:
        # First in the chain: nothing before it sees the request.
        request.ctx.started = time.perf_counter()

    app.on_request(authenticate, priority=900)

    @app.on_response
    async def access(request: Request, response: HTTPResponse) -> None:
        if getattr(request.ctx, "streaming", False):
            return
        state: AppState = request.app.ctx.state
        body = getattr(response, "body", None)
        state.log_access(request, response.status, len(body) if body is not None else None)

    @app.before_server_start
    async def open_resources(app: Sanic) -> None:
        if app.state.is_debug:
            # Debug mode puts tracebacks (with request values) into responses and logs.
            raise RuntimeError("Sanic debug mode is not allowed: it can expose request content")
        # asyncio's default handler logs reprs that can quote a prompt.
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        state: AppState = app.ctx.state
        await open_parts(state)
        # SIGHUP re-reads backends.yaml; open streams keep running.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: state.spawn(state.reload()))
        app.add_task(first_probe(state), name="privatai-first-probe")

    @app.before_server_stop
    async def draining(app: Sanic) -> None:
        # Sanic has removed its SIGTERM handler by now, and a repeated SIGTERM
        # (a supervisor, an impatient operator) would stop the loop in the
        # middle of the drain, skipping the usage flush below: ignore it. A
        # second Ctrl-C still quits at once.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, log.warning,
                                "shutdown in progress: letting open streams finish")
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    @app.after_server_stop
    async def close_resources(app: Sanic) -> None:
        # Sanic has let open streams finish (GRACEFUL_SHUTDOWN_TIMEOUT) by now,
        # so their usage is recorded: flush it and close the database last.
        await close_parts(app.ctx.state)

    return app
