"""GET /models and /models/{id} in OpenAI's list shape."""
from __future__ import annotations

from urllib.parse import unquote

from sanic.response import HTTPResponse, json

from privatai.api.context import GatewayRequest
from privatai.errors import ModelNotFound
from privatai.state import AppState


def model_object(model_id: str, created: int) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "privatai"}


async def list_models(request: GatewayRequest) -> HTTPResponse:
    """Only the models the key's plan lets it use (privatai.plans.gate)."""
    state: AppState = request.app.ctx.state
    assert state.plans is not None and request.ctx.principal is not None
    created = int(state.started_wall)
    models = state.plans.visible_models(request.ctx.principal, state.router)
    return json({"object": "list", "data": [model_object(m, created) for m in models]})


async def get_model(request: GatewayRequest, model_id: str) -> HTTPResponse:
    """A model the key may use; 403 ``plan_model_not_allowed`` for one outside
    its plan, 404 for one not served (or reserved for others)."""
    state: AppState = request.app.ctx.state
    assert state.plans is not None and request.ctx.principal is not None
    model_id = unquote(model_id)
    if model_id not in state.router.models():
        raise ModelNotFound(f"The model '{model_id}' does not exist or is not served here.", param="model")
    state.plans.check_model(request.ctx.principal, model_id, state.router)
    return json(model_object(model_id, int(state.started_wall)))
