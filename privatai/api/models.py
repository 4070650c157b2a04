"""GET /models and /models/{id} in OpenAI's list shape."""
from __future__ import annotations

from urllib.parse import unquote

from sanic import Request
from sanic.response import HTTPResponse, json

from privatai.errors import ModelNotFound
from privatai.state import AppState


def model_object(model_id: str, created: int) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "privatai"}


async def list_models(request: Request) -> HTTPResponse:
    state: AppState = request.app.ctx.state
    created = int(state.started_wall)
    return json({"object": "list", "data": [model_object(m, created) for m in state.router.models()]})


async def get_model(request: Request, model_id: str) -> HTTPResponse:
    state: AppState = request.app.ctx.state
    model_id = unquote(model_id)
    if model_id not in state.router.models():
        raise ModelNotFound(f"The model '{model_id}' does not exist or is not served here.", param="model")
    return json(model_object(model_id, int(state.started_wall)))
