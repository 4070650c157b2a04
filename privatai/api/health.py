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
    """Ready when a healthy backend serves the default model.

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
    return json({"status": status, "backends": backends}, status=200 if status == "ready" else 503)


async def first_probe(state: AppState) -> None:
    """Probe every backend once, right after the router started; the health
    loop's first round comes only after ``routing.health_interval``."""
    router = state.router
    await asyncio.gather(*(router.probe(backend) for backend in router.backends.values()))
    state.backends_checked = True
