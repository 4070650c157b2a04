"""Model -> backend choice, health, failover and capacity.

The router hands a handler one async iterator of events (chat, text
completions), or one awaited result (embeddings: :meth:`Router.call`). Before the
first event it may try several backends (failover); after it, never: an error
then goes to the client in-band. Capacity is a slot count per backend
(``max_concurrency``); when every candidate is full, requests wait in one
bounded FIFO queue, and past ``queue_timeout`` get a 429 with Retry-After.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Literal, TypeVar

from privatai.adapters import create_adapter
from privatai.adapters.base import Adapter
from privatai.config import Config, RoutingConfig, default_model
from privatai.errors import (BackendError, BackendRateLimited, BackendUnavailable, CapacityExceeded, ModelNotFound,
                             NotOffered, PrivatAIError)
from privatai.plans.settings import ReservedFor
from privatai.core.events import Event
from privatai.core.protocol import ChatRequest

log = logging.getLogger("privatai.router")
T = TypeVar("T")

# up: the last request or probe succeeded; failing: it failed, but fewer than
# failure_threshold times in a row, so it is still routed to; down: its
# circuit is open (or half-open) until a request or probe succeeds.
Health = Literal["up", "failing", "down"]
# Who is asking, as far as reserved backends care: (plan, account name).
Tenant = tuple[str, str]


@dataclass(eq=False)
class Backend:
    """One configured backend and what the router knows of it right now."""

    adapter: Adapter
    in_flight: int = 0
    failures: int = 0
    open_until: float = 0.0
    # public model name -> upstream model name, configured plus discovered
    models: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def max_concurrency(self) -> int:
        return self.adapter.config.max_concurrency

    @property
    def reserved(self) -> ReservedFor | None:
        return self.adapter.config.reserved_for

    def available(self, now: float) -> bool:
        """Closed circuit, or open long enough for a half-open trial."""
        return now >= self.open_until


class BackendStartFailed(Exception):
    """A backend's adapter could not start (an embedded model that does not
    load); the cause is chained, the backend is named."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"backend {backend!r} could not start")
        self.backend = backend


@dataclass(slots=True)
class RouteInfo:
    """What the handler learns about where a request went (for logs, metrics
    and billing)."""

    backend: str | None = None
    attempts: int = 0
    # True from the moment a backend took the request (its slot is held and
    # the request is on its way) until the router queues it again for another
    # backend; it stays True after the answer ended. False while queued.
    admitted: bool = False


class Router:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._routing: RoutingConfig = config.routing
        self.backends: dict[str, Backend] = {}
        for backend_config in config.backends:
            backend = Backend(create_adapter(backend_config))
            backend.models.update(backend_config.model_map())
            self.backends[backend.name] = backend
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._health_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        for backend in self.backends.values():
            try:
                await backend.adapter.start()
            except Exception as exc:
                raise BackendStartFailed(backend.name) from exc
        await self._discover()
        self._health_task = asyncio.create_task(self._health_loop(), name="privatai-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for backend in self.backends.values():
            await backend.adapter.close()

    async def reload(self, config: Config) -> None:
        """Take a new configuration without dropping open streams.

        Backends whose settings did not change are kept as they are (with their
        in-flight count and discovered models); new or changed ones are started
        before anything is switched, so a backend that fails to start leaves
        the running configuration untouched. Retired adapters are closed once
        their last stream has ended.
        """
        fresh: dict[str, Backend] = {}
        started: list[Backend] = []
        try:
            for backend_config in config.backends:
                current = self.backends.get(backend_config.name)
                if current is not None and current.adapter.config == backend_config:
                    fresh[backend_config.name] = current
                    continue
                backend = Backend(create_adapter(backend_config))
                backend.models.update(backend_config.model_map())
                await backend.adapter.start()
                started.append(backend)
                fresh[backend.name] = backend
        except BaseException:
            for backend in started:
                await backend.adapter.close()
            raise
        retired = [b for name, b in self.backends.items() if fresh.get(name) is not b]
        self.backends = fresh
        self._config = config
        self._routing = config.routing
        for backend in retired:
            self._retiring.add(asyncio.create_task(self._retire(backend)))
        await self._discover()
        # Waiters may now fit on a new backend.
        for _, future in self._waiters:
            if not future.done():
                future.set_result(None)

    async def _retire(self, backend: Backend) -> None:
        while backend.in_flight > 0:
            await asyncio.sleep(0.05)
        await backend.adapter.close()

    # -- models --------------------------------------------------------------

    @property
    def default_model(self) -> str | None:
        return default_model(self._config) or next(iter(self.models()), None)

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for backend in self.backends.values():
            for name in backend.models:
                seen.setdefault(name)
        return list(seen)

    def resolve(self, model: str | None) -> str:
        """The model name a request is for (the server default if absent); whether
        the caller may use it is the plan's question (privatai.plans.gate)."""
        name = model or self.default_model
        if name is None or not any(name in b.models for b in self.backends.values()):
            raise ModelNotFound(f"The model '{name}' does not exist or is not served here.",
                                param="model")
        return name

    def candidates(self, model: str, tenant: Tenant | None = None) -> list[Backend]:
        """The backends that may serve ``model`` to ``tenant``: those reserved for
        its plan or account if any serve the model (and the shared ones after
        them when every one of those allows spill-over), else the shared ones.
        A backend reserved for others is never a candidate."""
        serving = [b for b in self.backends.values() if model in b.models]
        shared = [b for b in serving if b.reserved is None]
        if tenant is None or len(shared) == len(serving):
            return shared
        own = [b for b in serving if b.reserved is not None and b.reserved.admits(*tenant)]
        if not own:
            return shared
        return own + shared if all(b.reserved.spill_over for b in own if b.reserved) else own

    def health(self, backend: Backend) -> Health:
        """The one verdict on a backend that /readyz, metrics and readiness share."""
        if backend.failures == 0:
            return "up"
        return "failing" if backend.failures < self._routing.failure_threshold else "down"

    def ready(self) -> bool:
        """True when a backend that is up serves the default model."""
        model = self.default_model
        return model is not None and any(self.health(b) == "up" for b in self.candidates(model))

    # -- choosing and capacity ----------------------------------------------

    def _pick(self, candidates: list[Backend]) -> Backend | None:
        now = time.monotonic()
        free = [b for b in candidates if b.available(now) and b.in_flight < b.max_concurrency]
        if not free:
            return None
        # Candidates hold reserved backends only for their own tenant: those
        # first, the shared ones (spill-over) only when none of them is free.
        own = [b for b in free if b.reserved is not None]
        if own:
            free = own
        least = min(b.in_flight / b.max_concurrency for b in free)
        best = [b for b in free if b.in_flight / b.max_concurrency == least]
        if len(best) == 1:
            return best[0]
        return random.choices(best, weights=[b.adapter.config.weight for b in best])[0]

    async def _acquire(self, candidates: list[Backend], deadline: float) -> Backend:
        names = frozenset(b.name for b in candidates)
        queue_deadline = min(deadline, time.monotonic() + self._routing.queue_timeout)
        while True:
            backend = self._pick(candidates)
            if backend is not None:
                backend.in_flight += 1
                return backend
            now = time.monotonic()
            if not any(b.available(now) for b in candidates):
                raise BackendUnavailable("No healthy backend is available for this model right now.")
            remaining = queue_deadline - now
            if remaining <= 0 or len(self._waiters) >= self._routing.max_queue:
                raise CapacityExceeded("The server is at capacity; please retry shortly.",
                                       retry_after=self._routing.queue_timeout)
            waiter = (names, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter[1], timeout=remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        # Wake the longest-waiting request that this backend can serve.
        for names, future in self._waiters:
            if backend.name in names and not future.done():
                future.set_result(None)
                return

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    # -- health --------------------------------------------------------------

    def _success(self, backend: Backend) -> None:
        backend.failures = 0
        backend.open_until = 0.0

    def _failure(self, backend: Backend) -> None:
        backend.failures += 1
        if backend.failures >= self._routing.failure_threshold:
            # Open the circuit; after recovery_time one request (or probe) may try again.
            backend.open_until = time.monotonic() + self._routing.recovery_time

    async def probe(self, backend: Backend) -> bool:
        try:
            await asyncio.wait_for(backend.adapter.probe(), timeout=backend.adapter.config.connect_timeout)
        except (BackendError, OSError, TimeoutError):
            self._failure(backend)
            return False
        self._success(backend)
        return True

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._routing.health_interval)
            await asyncio.gather(*(self.probe(b) for b in self.backends.values()))
            await self._discover()

    async def _discover(self) -> None:
        for backend in self.backends.values():
            if not backend.adapter.config.discover_models:
                continue
            try:
                names = await asyncio.wait_for(backend.adapter.list_models(),
                                               timeout=backend.adapter.config.connect_timeout)
            except (BackendError, OSError, TimeoutError) as exc:
                log.warning("model discovery failed for backend %s: %s", backend.name,
                            type(exc).__name__)
                continue
            for name in names:
                backend.models.setdefault(name, name)

    # -- the request path ----------------------------------------------------

    def stream(self, request: ChatRequest, model: str, info: RouteInfo,
               tenant: Tenant | None = None) -> AsyncIterator[Event]:
        """Events for one chat request, failing over between backends before the first event."""
        return self.events(model, info, lambda adapter, upstream: adapter.stream(request, upstream), tenant)

    async def call(self, model: str, info: RouteInfo, run: Callable[[Adapter, str], Awaitable[T]],
                   tenant: Tenant | None = None) -> T:
        """One whole answer that is not a stream of events (embeddings): ``run``
        gets a backend's adapter and upstream model name, with the same choice,
        capacity, failover and circuit as a chat request."""
        async def once(adapter: Adapter, upstream: str) -> AsyncIterator[T]:
            yield await run(adapter, upstream)

        async with contextlib.aclosing(self.events(model, info, once, tenant)) as results:
            async for result in results:
                return result
        raise BackendUnavailable("No backend could serve this request.")

    async def events(self, model: str, info: RouteInfo,
                     open_events: Callable[[Adapter, str], AsyncIterator[T]],
                     tenant: Tenant | None = None) -> AsyncIterator[T]:
        """What ``open_events`` yields for the backend chosen for ``model``,
        failing over between backends before the first item.

        A backend that does not offer the endpoint (:class:`NotOffered`) is
        not at fault: the next one that serves the model is asked, and its
        refusal reaches the client only when none offers it.
        """
        candidates = self.candidates(model, tenant)
        deadline = time.monotonic() + self._routing.total_deadline
        last_error: PrivatAIError | None = None
        while info.attempts < self._routing.max_attempts and candidates:
            info.admitted = False
            try:
                backend = await self._acquire(candidates, deadline)
            except BackendUnavailable:
                if last_error is not None:
                    raise last_error from None
                raise
            candidates = [b for b in candidates if b is not backend]
            info.attempts += 1
            info.backend = backend.name
            info.admitted = True
            started = False
            try:
                events = open_events(backend.adapter, backend.models[model])
                async with contextlib.aclosing(events):  # type: ignore[type-var]
                    async for event in events:
                        if not started:
                            started = True
                            self._success(backend)
                        yield event
                if not started:
                    self._success(backend)
                return
            except NotOffered as exc:
                if not candidates:
                    raise
                last_error = exc
            except BackendError as exc:
                # A 429 comes from a backend that is up and answering: it must
                # not open the circuit, or clients would get 503 "no healthy
                # backend" instead of its 429 and Retry-After.
                unhealthy = not started and not isinstance(exc, BackendRateLimited)
                if unhealthy:
                    self._failure(backend)
                if started or not exc.retryable:
                    raise
                last_error = exc
                log.warning("backend %s failed before the first token (%s, status %s); %s",
                            backend.name, type(exc).__name__, exc.status,
                            "trying another" if candidates else "no other backend")
            finally:
                self._release(backend)
            if time.monotonic() >= deadline:
                break
        if last_error is not None:
            raise last_error
        raise BackendUnavailable("No backend could serve this request.")
