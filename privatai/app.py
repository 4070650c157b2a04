"""create_app(config) -> Sanic: routes, middleware, listeners."""
from __future__ import annotations

import asyncio
import logging
import signal
import time

from sanic import Sanic

from privatai.api import access, cors, routes
from privatai.api.auth import authenticate
from privatai.api.context import GatewayRequest
from privatai.api.errors import OpenAIErrorHandler
from privatai.api.health import first_probe
from privatai.config import Config
from privatai.limits.instances import redis_link
from privatai.ops.startup import close_parts, open_parts
from privatai.core.routing import Router
from privatai.ops.logs import loop_exception_handler
from privatai.state import AppState

log = logging.getLogger("privatai.app")


def create_app(config: Config, *, name: str = "privatai") -> Sanic:
    app = Sanic(name, configure_logging=False, error_handler=OpenAIErrorHandler(), request_class=GatewayRequest)
    app.config.REQUEST_MAX_SIZE = config.server.max_body_bytes
    app.config.RESPONSE_TIMEOUT = config.server.response_timeout
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = config.server.grace_period
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.AUTO_EXTEND = False
    app.ctx.state = AppState(config=config, router=Router(config), redis=redis_link(config))

    routes.register(app, config)
    cors.register(app, config.server.cors_origins,
                  [(prefix + route.path, prefix.strip("/").replace("/", "_") + "_" + route.name)
                   for prefix in routes.API_PREFIXES for route in routes.API_ROUTES])

    @app.on_request(priority=1000)
    async def start_clock(request: GatewayRequest) -> None:
        # First in the chain: nothing before it sees the request.
        request.ctx.started = time.perf_counter()

    app.on_request(authenticate, priority=900)
    app.on_response(access.log_response)

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
