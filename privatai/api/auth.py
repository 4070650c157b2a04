"""Bearer API keys on every /api/v1 and /v1 route.

The key is looked up by its SHA-256 (cached briefly in the store), so known
and unknown keys take the same path. The key itself is never logged: the
access log carries only the principal's display prefix.
"""
from __future__ import annotations

from sanic import Request

from privatai.store.keys import key_from_authorization
from privatai.state import AppState

PROTECTED_PREFIXES = ("/api/v1/", "/v1/")


async def authenticate(request: Request) -> None:
    # A CORS preflight carries no key by design (privatai.api.cors answers it).
    if request.method == "OPTIONS" or not request.path.startswith(PROTECTED_PREFIXES):
        return
    state: AppState = request.app.ctx.state
    header = request.headers.get("authorization")
    request.ctx.principal = await state.store.authenticate(key_from_authorization(header))
