"""llama.cpp's ``llama-server`` through its OpenAI-compatible ``/v1`` API.

``url`` is the server root (``http://127.0.0.1:8080``); the adapter adds
``/v1``. Health is ``GET /health`` (503 while the model loads). Errors carry an
integer ``code`` and a ``type`` such as ``exceed_context_size_error``, which
becomes our 400 with code ``context_length_exceeded``; an in-band error line
without ``[DONE]`` becomes an in-band error for the client. Text completions
go to ``/v1/completions`` (no chat template); embeddings to ``/v1/embeddings``,
which llama-server offers when started with ``--embeddings``.
"""
from __future__ import annotations

from privatai.adapters.openai_compatible import SelfHostedOpenAIAdapter


class LlamaCppAdapter(SelfHostedOpenAIAdapter):
    kind = "llamacpp"
    # llama-server's /v1/embeddings (with --embeddings) returns the model's own size.
    embedding_dimensions = False
    # llama-server's name for it; it ignores ``repetition_penalty``.
    repetition_key = "repeat_penalty"
