"""llama.cpp's ``llama-server`` through its OpenAI-compatible ``/v1`` API.

``url`` is the server root (``http://127.0.0.1:8080``); the adapter adds
``/v1``. Health is ``GET /health`` (503 while the model loads). Errors carry an
integer ``code`` and a ``type`` such as ``exceed_context_size_error``, which
becomes our 400 with code ``context_length_exceeded``; an in-band error line
without ``[DONE]`` becomes an in-band error for the client.
"""
from __future__ import annotations

from privatai.adapters.openai_compatible import SelfHostedOpenAIAdapter


class LlamaCppAdapter(SelfHostedOpenAIAdapter):
    kind = "llamacpp"
    # llama-server's name for it; it ignores ``repetition_penalty``.
    repetition_key = "repeat_penalty"
