"""Every route of the gateway and its protection, declared once.

The OpenAI API lives under each of :data:`API_PREFIXES` and needs an API key
there; :func:`needs_api_key` is what the auth middleware asks, so a route
added to :data:`API_ROUTES` is protected by construction. The OpenAPI
document under each prefix (:data:`PUBLIC_API_ROUTES`), health, metrics
(their own token rule) and the web chat (fair-use limited) are public.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from sanic import Sanic

from privatai import portal
from privatai.api import webchat
from privatai.billing import routes as billing_routes
from privatai.api.chat import chat_completions
from privatai.api.completions import completions
from privatai.api.embeddings import embeddings
from privatai.api.health import healthz, readyz
from privatai.api.metrics import metrics_endpoint
from privatai.api.models import get_model, list_models
from privatai.api.openapi import openapi_json
from privatai.api.responses import responses
from privatai.api.usage import usage
from privatai.config import Config

# /v1 as well, for clients that hard-code OpenAI's path.
API_PREFIXES = ("/api/v1", "/v1")
_PROTECTED = tuple(prefix + "/" for prefix in API_PREFIXES)


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    handler: Callable[..., Awaitable[Any]]
    method: str
    name: str


API_ROUTES = (
    Route("/chat/completions", chat_completions, "POST", "chat"),
    Route("/completions", completions, "POST", "completions"),
    Route("/embeddings", embeddings, "POST", "embeddings"),
    Route("/responses", responses, "POST", "responses"),
    Route("/models", list_models, "GET", "models"),
    Route("/models/<model_id:path>", get_model, "GET", "model"),
    Route("/usage", usage, "GET", "usage"),
)

# Under the API prefixes, but public: the document describes what the README
# describes, and tools (SDK generators, schemathesis) fetch it without a key.
PUBLIC_API_ROUTES = (
    Route("/openapi.json", openapi_json, "GET", "openapi"),
)
_PUBLIC_PATHS = frozenset(prefix + route.path for prefix in API_PREFIXES for route in PUBLIC_API_ROUTES)


def needs_api_key(path: str) -> bool:
    """Anything under an API prefix but the public document, also an unknown
    route there: without a key, a client learns nothing about which routes exist."""
    return path.startswith(_PROTECTED) and path not in _PUBLIC_PATHS


def register(app: Sanic, config: Config) -> None:
    for prefix in API_PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        for route in API_ROUTES + PUBLIC_API_ROUTES:
            app.add_route(route.handler, prefix + route.path, methods=[route.method], name=f"{tag}_{route.name}")
    app.add_route(healthz, "/healthz", methods=["GET"], name="healthz")
    app.add_route(readyz, "/readyz", methods=["GET"], name="readyz")
    if config.metrics.enabled:
        app.add_route(metrics_endpoint(config.metrics), "/metrics", methods=["GET"], name="metrics")
    if config.web_chat.enabled:
        webchat.register(app)
    if config.billing.mode == "stripe":
        billing_routes.register(app, config.billing)
    # The public website; its registration decides whether it takes "/".
    portal.register(app)
