"""vLLM's OpenAI-compatible server.

``url`` is the server root (``http://127.0.0.1:8000``); the adapter adds
``/v1``. Health is ``GET /health`` (200 with an empty body, 503 when the
engine is dead). Reasoning arrives as ``reasoning`` or ``reasoning_content``
(both, or explicit nulls, depending on the version); errors as
``{"error": {...}}`` or, in older versions, flat ``{"object": "error", ...}``;
the shared :class:`~privatai.adapters.openai_wire.ChunkMapper` accepts all.
"""
from __future__ import annotations

from privatai.adapters.openai_compatible import SelfHostedOpenAIAdapter


class VLLMAdapter(SelfHostedOpenAIAdapter):
    kind = "vllm"
