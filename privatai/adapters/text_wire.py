"""OpenAI's ``/completions`` and ``/embeddings`` wire formats, as upstreams speak them.

A ``text_completion`` chunk is a chat chunk with ``choices[0].text`` where
chat has ``choices[0].delta.content``, so :func:`as_chat_chunk` reshapes it
and the shared :class:`~privatai.adapters.openai_wire.ChunkMapper` does the
rest (finish reasons, usage checks, in-band errors) for llama-server, vLLM,
OpenAI and the embedded llama.cpp alike.
"""
from __future__ import annotations

from typing import Any

import orjson

from privatai.adapters.reported_usage import reported_usage
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult


def completion_body(request: CompletionRequest, prompt: str, model: str) -> dict[str, Any]:
    """The upstream ``/completions`` body for one prompt (usage asked for when streamed)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": request.stream,
                            **request.sampling_options()}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def as_chat_chunk(chunk: Any) -> Any:
    """A ``text_completion`` chunk (or whole answer) in the chat chunk's shape;
    anything else (an error object) unchanged."""
    if not isinstance(chunk, dict) or "choices" not in chunk:
        return chunk
    choices = [{"delta": {"content": choice.get("text")}, "finish_reason": choice.get("finish_reason")}
               for choice in chunk["choices"] or () if isinstance(choice, dict)]
    return {"choices": choices, "usage": chunk.get("usage")}


def embeddings_body(request: Any, texts: list[str], model: str, *, dimensions: bool = True) -> bytes:
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    if dimensions and request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return orjson.dumps(body)


def parse_embeddings(answer: Any, count: int) -> EmbeddingResult:
    """An OpenAI ``list`` of ``embedding`` objects; TypeError/ValueError/KeyError
    when it is not one, or not one vector per input."""
    data = sorted(answer["data"], key=lambda item: item["index"])
    vectors = [[float(x) for x in item["embedding"]] for item in data]
    if len(vectors) != count:
        raise ValueError("one vector per input expected")
    usage = answer.get("usage") or {}
    reported = reported_usage(usage.get("prompt_tokens"), 0)
    return EmbeddingResult(vectors, reported.prompt_tokens if reported is not None else None)
