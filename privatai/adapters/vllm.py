"""vLLM's OpenAI-compatible server.

``url`` is the server root (``http://127.0.0.1:8000``); the adapter adds
``/v1``. Health is ``GET /health`` (200 with an empty body, 503 when the
engine is dead). Reasoning arrives as ``reasoning`` or ``reasoning_content``
(both, or explicit nulls, depending on the version); errors as
``{"error": {...}}`` or, in older versions, flat ``{"object": "error", ...}``;
the shared :class:`~privatai.adapters.openai_stream.ChunkMapper` accepts all.
"""
from __future__ import annotations

from typing import Any

from ..protocol import ChatRequest
from .openai_stream import OpenAIStreamAdapter, add_reasoning_switches, build_body


class VLLMAdapter(OpenAIStreamAdapter):
    kind = "vllm"
    health_path = "/health"

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = build_body(request, model)
        add_reasoning_switches(body, request)
        return body
