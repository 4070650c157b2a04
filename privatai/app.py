"""create_app(config) -> Sanic: routes, middleware, listeners."""
from __future__ import annotations

import asyncio
import signal
import sys
import time

from sanic import Sanic
from sanic.response import HTTPResponse

from privatai.api import access, cors, routes
from privatai.api.auth import authenticate
from privatai.api.context import GatewayRequest
from privatai.api.errors import OpenAIErrorHandler
from privatai.api.health import first_probe
from privatai.config import Config
from privatai.limits.instances import redis_link
from privatai.limits.sqlite_state import SqliteLimitState
from privatai.ops.metrics import Metrics
from privatai.ops.runtime import RuntimeDir
from privatai.ops.startup import StartupFailed, close_parts, open_parts
from privatai.ops.stopping import GatewayApp
from privatai.core.routing import Router
from privatai.ops.logs import loop_exception_handler
from privatai.state import AppState
from privatai.store.changes import ChangeWatcher

GAUGE_REFRESH = 0.5  # seconds between a worker's updates of the shared gauges


def create_app(config: Config, *, name: str = "privatai", runtime: RuntimeDir | None = None) -> Sanic:
    """The app; ``runtime`` is the directory its workers share when there are several."""
    app = GatewayApp(name, configure_logging=False, error_handler=OpenAIErrorHandler(), request_class=GatewayRequest)
    app.config.REQUEST_MAX_SIZE = config.server.max_body_bytes
    app.config.RESPONSE_TIMEOUT = config.server.response_timeout
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = config.server.grace_period
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.AUTO_EXTEND = False
    app.ctx.state = AppState(config=config, router=Router(config), runtime=runtime, redis=redis_link(config))

    routes.register(app, config)
    browsers = cors.register(app, config.server.cors_origins,
                             [(prefix + route.path, prefix.strip("/").replace("/", "_") + "_" + route.name)
                              for prefix in routes.API_PREFIXES for route in routes.API_ROUTES])

    # One request and one response middleware: Sanic pays a call, an await
    # and its bookkeeping per middleware and response.
    @app.on_request(priority=1000)
    async def begin(request: GatewayRequest) -> None:
        # First in the chain: nothing before it sees the request.
        request.ctx.started = time.perf_counter()
        await authenticate(request)

    @app.on_response(priority=1000)
    def finish(request: GatewayRequest, response: HTTPResponse) -> None:
        ctx = request.ctx
        headers = response.headers
        headers.setdefault(cors.REQUEST_ID, ctx.request_id)
        if ctx.rate_headers:
            # The key's plan limits, on answers and refusals alike (as OpenAI sends them).
            headers.update(ctx.rate_headers)
        if browsers is not None:
            browsers.decorate(request, response)
        access.log_response(request, response)

    @app.before_server_start
    async def open_resources(app: GatewayApp) -> None:
        if app.state.is_debug:
            # Debug mode puts tracebacks (with request values) into responses and logs.
            raise RuntimeError("Sanic debug mode is not allowed: it can expose request content")
        # asyncio's default handler logs reprs that can quote a prompt.
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        state: AppState = app.ctx.state
        # A reload asked for while the parts open is not for a half-started
        # server (and a worker must not run the main process's handler).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await open_parts(state)
        except StartupFailed as exc:
            if state.runtime is not None:
                # A worker: `privatai serve` in the main process never sees the exception.
                print(f"privatai: start-up failed: {exc}", file=sys.stderr, flush=True)
            raise
        # SIGHUP re-reads backends.yaml; open streams keep running.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: state.spawn(state.reload()))
        app.add_task(first_probe(state), name="privatai-first-probe")
        assert state.store is not None
        # Keys revoked and accounts suspended by another process (the CLI,
        # another worker or instance) are refused here within a second.
        watcher = ChangeWatcher(state.store.database, state.store.forget_authentications)
        # Our own tasks rather than Sanic's, which warns when it cancels one.
        loops = [asyncio.create_task(watcher.run(), name="privatai-auth-changes")]
        if state.metrics is not None and state.metrics.shared_gauges is not None:
            loops.append(asyncio.create_task(refresh_gauges(state.metrics), name="privatai-metrics-gauges"))
        app.ctx.background = loops
        # The server can answer from here on: a stop must drain (usage flush).
        app.take_stop_signals(asyncio.get_running_loop())

    @app.before_server_stop
    async def draining(app: Sanic) -> None:
        # A repeated SIGTERM (a supervisor, an impatient operator) is only
        # logged (GatewayApp.stop): the drain and the usage flush below go on.
        # A second Ctrl-C still quits at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    @app.after_server_stop
    async def close_resources(app: Sanic) -> None:
        # Sanic has let open streams finish (GRACEFUL_SHUTDOWN_TIMEOUT) by now,
        # so their usage is recorded: flush it and close the database last.
        state: AppState = app.ctx.state
        for task in getattr(app.ctx, "background", ()):
            task.cancel()
            await asyncio.wait([task])
        await close_parts(state)
        limits = getattr(app.ctx, "webchat_limiter", None)
        if limits is not None and isinstance(limits.state, SqliteLimitState):
            limits.state.close()
        if state.metrics is not None:
            state.metrics.worker_stopped()

    return app


async def refresh_gauges(metrics: Metrics) -> None:
    """Keep this worker's share of the multiprocess gauges current."""
    while True:
        metrics.refresh()
        await asyncio.sleep(GAUGE_REFRESH)
