"""One module per backend kind, all behind :class:`privatai.adapters.base.Adapter`."""
from __future__ import annotations

from privatai.config import BackendConfig
from privatai.adapters.base import Adapter


def create_adapter(config: BackendConfig) -> Adapter:
    """The adapter for one configured backend (imports only the kind in use)."""
    if config.kind == "embedded":
        from privatai.adapters.embedded import EmbeddedAdapter
        return EmbeddedAdapter(config)
    if config.kind == "ollama":
        from privatai.adapters.ollama import OllamaAdapter
        return OllamaAdapter(config)
    if config.kind == "llamacpp":
        from privatai.adapters.llamacpp import LlamaCppAdapter
        return LlamaCppAdapter(config)
    if config.kind == "vllm":
        from privatai.adapters.vllm import VLLMAdapter
        return VLLMAdapter(config)
    if config.kind == "openai":
        from privatai.adapters.openai import OpenAIAdapter
        return OpenAIAdapter(config)
    raise ValueError(f"unknown backend kind {config.kind!r}")
