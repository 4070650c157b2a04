"""A key's plan around one API request that reaches a backend.

Every such endpoint (chat, completions, responses, embeddings) takes the same
admission: the model must be in the key's plan, the request must fit the
key's rates and the account's quota (403/429 before any backend is asked),
and what it really used replaces the reservation when it ends, however it
ends. The web chat has no key and its own limits: it passes through.
"""
from __future__ import annotations

import contextlib
from typing import AsyncIterator

from privatai.api.context import GatewayRequest
from privatai.core.protocol import ChatRequest
from privatai.core.routing import Tenant
from privatai.plans.gate import tenant
from privatai.state import AppState


@contextlib.asynccontextmanager
async def plan_admission(request: GatewayRequest, state: AppState, model: str,
                         chat: ChatRequest | None = None) -> AsyncIterator[Tenant | None]:
    """Yield whom routing serves (the key's plan and account, for reserved
    backends). ``chat`` lets a quota or token rate reserve the prompt and the
    output limit up front; without it the reservation is what is known: nothing."""
    principal = request.ctx.principal
    if principal is None:
        yield None
        return
    assert state.plans is not None
    admission = await state.plans.admit(principal, model, state.router, chat)
    request.ctx.rate_headers = admission.headers
    try:
        yield tenant(principal)
    finally:
        await state.plans.settle(admission, request.ctx.usage)
