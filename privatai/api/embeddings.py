"""POST /embeddings: parse, route like chat, meter the prompt tokens.

An embedding is one whole answer, so it goes through :meth:`Router.call`
(aliases, capacity, failover and the circuit as for chat). Usage is prompt
tokens only: the backend's count when it reports one, else tiktoken's.
"""
from __future__ import annotations

import asyncio

from sanic.response import HTTPResponse, raw

from privatai.api.admission import plan_admission
from privatai.api.chat import keep_reading
from privatai.api.context import GatewayRequest
from privatai.core import tokens
from privatai.core.embeddings import EmbeddingResult, embeddings_response, parse_embeddings_request
from privatai.core.events import Usage
from privatai.state import AppState


async def embeddings(request: GatewayRequest) -> HTTPResponse:
    state: AppState = request.app.ctx.state
    body = parse_embeddings_request(request.body)
    texts = body.texts()
    keep_reading(request)
    model = state.router.resolve(body.model)
    ctx = request.ctx
    ctx.model = model
    async with plan_admission(request, state, model) as who:
        try:
            result: EmbeddingResult = await state.router.call(
                model, ctx.route, lambda adapter, upstream: adapter.embed(body, texts, upstream), who)
        except asyncio.CancelledError:
            # The client left: once a backend had taken the request it read the
            # inputs, as a chat prompt is billed when its client leaves.
            if ctx.route.admitted:
                await _settle(request, state, texts, None)
            raise
        usage = await _settle(request, state, texts, result.prompt_tokens)
    return raw(embeddings_response(result.vectors, model, usage.prompt_tokens, body.encoding_format),
               content_type="application/json")


async def _settle(request: GatewayRequest, state: AppState, texts: list[str], reported: int | None) -> Usage:
    ctx = request.ctx
    prompt = reported if reported is not None else sum(await tokens.count_many(texts))
    ctx.usage = Usage(prompt, 0)
    if ctx.principal is not None and ctx.model is not None:
        state.record_usage(ctx.principal, ctx.model, ctx.usage)
    return ctx.usage
