"""What one server process holds: config, router, store; shared by handlers."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

from sanic import Request

from privatai.config import Config
from privatai.core.events import Usage
from privatai.ops.logs import access_log, describe_error, hash_client
from privatai.ops.metrics import Metrics
from privatai.core.routing import Router

log = logging.getLogger("privatai.state")


@dataclass
class AppState:
    config: Config
    router: Router
    store: Any = None      # privatai.store.database.Store once opened
    recorder: Any = None   # privatai.store.recorder.UsageRecorder, writing to the store
    started_wall: float = field(default_factory=time.time)
    metrics: Metrics | None = None  # made in __post_init__ unless metrics are disabled
    # Set once every backend has been probed after start: until then /readyz says "starting".
    backends_checked: bool = False
    # Called with the new config after a reload (the web-chat limits use it).
    on_reload: Callable[[Config], None] | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.metrics is None and self.config.metrics.enabled:
            # A getter, not the router: a reload may replace state.router.
            self.metrics = Metrics(lambda: self.router)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a background task, holding a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read the configuration file (SIGHUP, `privatai reload`).

        An invalid file keeps the running configuration and says why. Backends,
        routing, web-chat limits and the thinking field take effect at once;
        the listening address and the database path need a restart.
        """
        from privatai.config import load_config
        from privatai.errors import ConfigError
        try:
            config = load_config(self.config.source)
            await self.router.reload(config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a backend that cannot start
            log.error("reload refused, keeping the running configuration: %s", describe_error(exc))
            return False
        config.server.host, config.server.port = self.config.server.host, self.config.server.port
        config.store.path = self.config.store.path
        self.config = config
        if self.on_reload is not None:
            self.on_reload(config)
        log.info("configuration reloaded from %s: %d backend(s)", config.source, len(config.backends))
        return True

    def record_usage(self, principal: Any, model: str, usage: Usage) -> None:
        if self.recorder is not None:
            self.recorder.record(principal.key_id, model, usage.prompt_tokens, usage.completion_tokens)

    def log_access(self, request: Request, status: int, nbytes: int | None = None) -> None:
        """One content-free line per request: never a body, header, query or
        address (a keyed hash of the address when ``hashed_client_ip`` is on)."""
        if getattr(request.ctx, "logged", False):
            return
        request.ctx.logged = True
        route = request.route.path if request.route is not None else "(unmatched)"
        started = getattr(request.ctx, "started", None)
        principal = getattr(request.ctx, "principal", None)
        info = getattr(request.ctx, "route", None)
        usage = getattr(request.ctx, "usage", None)
        duration = time.perf_counter() - started if started else None
        fields: dict[str, Any] = {
            "method": request.method,
            "route": "/" + route.lstrip("/"),
            "status": status,
            "ms": round(duration * 1000, 1) if duration is not None else None,
        }
        if nbytes is not None:
            fields["bytes"] = nbytes
        model = getattr(request.ctx, "model", None)
        if model is not None:
            fields["model"] = model
        if info is not None and info.backend is not None:
            fields["backend"] = info.backend
        if principal is not None:
            fields["key"] = principal.key_prefix
        if self.config.logging.hashed_client_ip:
            # The socket peer, never a header a client can set.
            fields["client"] = hash_client(request.ip)
        if usage is not None:
            fields["tokens_in"] = usage.prompt_tokens
            fields["tokens_out"] = usage.completion_tokens
        error = getattr(request.ctx, "error", None)
        if error is not None:
            fields["error"] = error
        access_log.info("request", extra={"fields": fields})
        if self.metrics is not None:
            self.metrics.observe(fields["route"], status, model, info.backend if info is not None else None,
                                 duration, usage, getattr(request.ctx, "ttft", None))
