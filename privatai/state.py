"""What one server process holds: config, router, store; shared by handlers."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from privatai.config import Config
from privatai.core.events import Usage
from privatai.core.routing import Router
from privatai.ops.logs import describe_error
from privatai.ops.metrics import Metrics

if TYPE_CHECKING:
    from privatai.limits.redis_link import RedisLink
    from privatai.ops.runtime import RuntimeDir
    from privatai.plans.gate import PlanGate
    from privatai.billing.service import Billing
    from privatai.store.database import Principal, Store
    from privatai.store.recorder import UsageRecorder

log = logging.getLogger("privatai.state")


@dataclass
class AppState:
    config: Config
    router: Router
    store: Store | None = None            # once opened, in before_server_start
    recorder: UsageRecorder | None = None  # likewise
    plans: PlanGate | None = None          # likewise (its quotas start from the store)
    redis: RedisLink | None = None  # with state.redis_url: shared limits and auth notices
    billing: Billing | None = None         # likewise, with billing.mode stripe
    started_wall: float = field(default_factory=time.time)
    metrics: Metrics | None = None  # made in __post_init__ unless metrics are disabled
    # Set once every backend has been probed after start: until then /readyz says "starting".
    backends_checked: bool = False
    # Called with the new config after a reload (the web-chat limits use it).
    on_reload: Callable[[Config], None] | None = None
    # The directory the workers share when server.workers > 1 (privatai.ops.runtime).
    runtime: RuntimeDir | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.metrics is None and self.config.metrics.enabled:
            # A getter, not the router: a reload may replace state.router.
            multiprocess = str(self.runtime.metrics_dir) if self.runtime is not None else None
            self.metrics = Metrics(lambda: self.router, multiprocess_dir=multiprocess)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a background task, holding a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read the configuration file (SIGHUP, `privatai reload`).

        An invalid file keeps the running configuration and says why. Backends,
        routing, plans, web-chat limits and the thinking field take effect at
        once; what needs a restart keeps its running value and is named in
        the log (:mod:`privatai.ops.reload_scope`).
        """
        from privatai.config import check_config, load_config
        from privatai.errors import ConfigError
        from privatai.ops.reload_scope import keep_start_only
        try:
            config = load_config(self.config.source)
            waiting = keep_start_only(self.config, config)
            try:
                # The file passed on its own (load_config); with values kept it
                # may not: e.g. billing.plans naming a plan the new plans: drop.
                if waiting:
                    check_config(config)
            except ConfigError as exc:
                log.error("reload refused, keeping the running configuration: %s, with the running values of "
                          "what applies only at the next restart (%s)", exc, ", ".join(waiting))
                return False
            await self.router.reload(config)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a backend that cannot start
            log.error("reload refused, keeping the running configuration: %s", describe_error(exc))
            return False
        self.config = config
        if self.plans is not None and self.store is not None:
            self.plans.reconfigure(config)
            self.store.dashboard = self.plans.dashboard
        if self.on_reload is not None:
            self.on_reload(config)
        log.info("configuration reloaded from %s: %d backend(s)", config.source, len(config.backends))
        if waiting:
            log.warning("changed in %s but applied only at the next restart: %s", config.source,
                        ", ".join(waiting))
        return True

    def record_usage(self, principal: Principal, model: str, usage: Usage) -> None:
        if self.recorder is not None:
            self.recorder.record(principal.key_id, model, usage.prompt_tokens, usage.completion_tokens)
