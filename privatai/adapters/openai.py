"""Any other OpenAI-compatible API, with its own key.

``url`` is the API base including its version prefix, exactly as the OpenAI
SDK's ``base_url`` (``https://api.openai.com/v1``). The key is read from the
environment variable named by ``api_key_env`` and sent as a Bearer token; it
is never logged. Health is a ``GET {url}/models``.
"""
from __future__ import annotations

from typing import Any

from privatai.core.protocol import ChatRequest
from privatai.adapters.openai_compatible import OpenAICompatibleAdapter
from privatai.adapters.openai_wire import reasoning_effort_of


class OpenAIAdapter(OpenAICompatibleAdapter):
    kind = "openai"

    @classmethod
    def api_base(cls, url: str) -> str:
        return url.rstrip("/")

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = super().build_body(request, model)
        # OpenAI's reasoning models refuse ``max_tokens``: keep the client's own field.
        if request.max_completion_tokens is not None:
            body.pop("max_tokens", None)
            body["max_completion_tokens"] = request.max_completion_tokens
        effort = reasoning_effort_of(request)
        if effort is not None:
            body["reasoning_effort"] = effort
        return body
