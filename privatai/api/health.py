"""Liveness and readiness, outside the API key check."""
from __future__ import annotations

import asyncio

from sanic import Request
from sanic.response import HTTPResponse, json

from privatai.state import AppState


async def healthz(request: Request) -> HTTPResponse:
    """Liveness only: the process answers. Never looks at backends, so a dead
    backend does not get the gateway restarted."""
    return json({"status": "ok"})


async def readyz(request: Request) -> HTTPResponse:
    """Ready when a healthy backend serves the default model; "degraded"
    (still 200) when the database or Redis is unreachable and the instance
    serves on without it, naming what is missing.

    "starting" until the router has started (adapters opened, the embedded
    model loaded) and every backend has answered or failed one probe: a
    backend nobody has asked yet is not known to be healthy.
    """
    state: AppState = request.app.ctx.state
    router = state.router
    backends = {name: router.health(backend) if state.backends_checked else "unknown"
                for name, backend in router.backends.items()}
    if not state.backends_checked:
        status = "starting"
    else:
        status = "ready" if router.ready() else "unavailable"
    body: dict[str, object] = {"status": status, "backends": backends}
    degraded = await degradation(state)
    if degraded:
        body["degraded"] = degraded
        if status == "ready":
            # Still serving: a load balancer must not drop every instance
            # because the database or Redis they share is away.
            body["status"] = "degraded"
    return json(body, status=200 if status == "ready" else 503)


async def degradation(state: AppState) -> dict[str, str]:
    """What this instance serves without, and how: empty when nothing is missing."""
    degraded: dict[str, str] = {}
    if state.store is not None and not await state.store.reachable():
        degraded["store"] = (f"database unreachable: known keys work from the cache for up to "
                             f"{state.config.state.store_grace_seconds:g} s, usage is held in memory")
    elif state.recorder is not None and state.recorder.failing:
        degraded["store"] = "usage writes failing: usage is held in memory and retried"
    if state.redis is not None:
        problem = state.redis.problem()
        if problem is not None:
            degraded["shared_state"] = problem
    return degraded


async def first_probe(state: AppState) -> None:
    """Probe every backend once, right after the router started; the health
    loop's first round comes only after ``routing.health_interval``."""
    router = state.router
    await asyncio.gather(*(router.probe(backend) for backend in router.backends.values()))
    state.backends_checked = True
