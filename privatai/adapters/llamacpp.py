"""llama.cpp's ``llama-server`` through its OpenAI-compatible ``/v1`` API.

``url`` is the server root (``http://127.0.0.1:8080``); the adapter adds
``/v1``. Health is ``GET /health`` (503 while the model loads). Errors carry an
integer ``code`` and a ``type`` such as ``exceed_context_size_error``, which
becomes our 400 with code ``context_length_exceeded``; an in-band error line
without ``[DONE]`` becomes an in-band error for the client.
"""
from __future__ import annotations

from typing import Any

from ..protocol import ChatRequest
from .openai_stream import OpenAIStreamAdapter, add_reasoning_switches, build_body


class LlamaCppAdapter(OpenAIStreamAdapter):
    kind = "llamacpp"
    health_path = "/health"

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = build_body(request, model)
        add_reasoning_switches(body, request)
        return body
