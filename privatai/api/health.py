"""Liveness and readiness, outside the API key check."""
from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse, json

from ..state import AppState


async def healthz(request: Request) -> HTTPResponse:
    """Liveness only: the process answers."""
    return json({"status": "ok"})


async def readyz(request: Request) -> HTTPResponse:
    """Ready when a healthy backend serves the default model."""
    state: AppState = request.app.ctx.state
    ready = state.router.ready()
    backends = {name: ("up" if b.failures == 0 else "down") for name, b in state.router.backends.items()}
    return json({"status": "ready" if ready else "unavailable", "backends": backends},
                status=200 if ready else 503)
