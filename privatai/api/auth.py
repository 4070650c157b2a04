"""Bearer API keys on every route that :func:`privatai.api.routes.needs_api_key` names.

The key is looked up by its SHA-256 (cached briefly in the store), so known
and unknown keys take the same path. The key itself is never logged: the
access log carries only the principal's display prefix.
"""
from __future__ import annotations

from privatai.api.context import GatewayRequest
from privatai.api.routes import needs_api_key
from privatai.state import AppState
from privatai.store.keys import key_from_authorization


async def authenticate(request: GatewayRequest) -> None:
    # A CORS preflight carries no key by design (privatai.api.cors answers it).
    if request.method == "OPTIONS" or not needs_api_key(request.path):
        return
    state: AppState = request.app.ctx.state
    header = request.headers.get("authorization")
    request.ctx.principal = await state.store.authenticate(key_from_authorization(header))
