"""Which optional Chat Completions parameters each backend kind honours.

A parameter a backend cannot honour is refused with a 400 that names it and
the backend kind, before anything is sent upstream: a client must never get a
200 for a request whose parameter was silently dropped. Each adapter lists
what it supports and maps the names in its own body builder.
"""
from __future__ import annotations

from typing import Any

from privatai.errors import InvalidRequest
from privatai.core.protocol import ChatRequest, image_urls

# Parameters whose presence alone asks for something (checked when not None).
_VALUED = ("presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
           "repetition_penalty", "chat_template_kwargs")

# What every OpenAI-wire server accepts under OpenAI's own names.
OPENAI_PARAMS = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                           "parallel_tool_calls", "image_url", "name"})
# Sampling extras the self-hosted servers (vLLM, llama-server) know as well.
SELF_HOSTED_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "chat_template_kwargs"})


def requested(request: ChatRequest) -> list[str]:
    """The optional features this request asks for, by parameter name.

    ``n`` counts only above 1 and ``parallel_tool_calls`` only when false:
    their other values are what every backend does anyway.
    """
    names = [name for name in _VALUED if getattr(request, name) is not None]
    if request.n is not None and request.n > 1:
        names.append("n")
    if request.logprobs:
        names.append("logprobs")
    if request.parallel_tool_calls is False:
        names.append("parallel_tool_calls")
    if any(image_urls(m) for m in request.messages):
        names.append("image_url")
    if any(getattr(m, "name", None) is not None for m in request.messages):
        names.append("name")
    return names


def refuse_unsupported(request: ChatRequest, kind: str, supported: frozenset[str]) -> None:
    """Raise a 400 naming the first requested feature the kind cannot honour."""
    for name in requested(request):
        if name not in supported:
            raise InvalidRequest(
                f"The parameter '{name}' is not supported by the {kind} backend serving this model.",
                param=name)


def sampling_extras(request: ChatRequest, repetition_key: str) -> dict[str, Any]:
    """Penalties and extra samplers the client set, with the repetition
    penalty under the backend's own name (``repeat_penalty`` for llama.cpp
    and Ollama, ``repetition_penalty`` for vLLM)."""
    extras: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty", "top_k", "min_p"):
        value = getattr(request, name)
        if value is not None:
            extras[name] = value
    if request.repetition_penalty is not None:
        extras[repetition_key] = request.repetition_penalty
    return extras
