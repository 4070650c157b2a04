"""The fakes' embeddings and raw-completion endpoints, in each kind's format.

- OpenAI style (llama-server, vLLM, OpenAI): ``POST /v1/embeddings`` answers
  ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
  "model", "usage": {"prompt_tokens", "total_tokens"}}`` (vLLM adds ``id`` and
  ``created``); ``POST /v1/completions`` streams ``text_completion`` chunks
  (``choices[0].text``, ``finish_reason`` on the last, a ``choices: []`` usage
  chunk with ``stream_options.include_usage``, then ``data: [DONE]``) or
  answers one ``text_completion`` object.
- Ollama: ``POST /api/embed`` answers ``{"model", "embeddings": [[...]],
  "total_duration", "load_duration", "prompt_eval_count"}``; ``POST
  /api/generate`` streams NDJSON ``{"model", "created_at", "response",
  "done": false}`` lines and a last ``done: true`` line with ``done_reason``,
  ``prompt_eval_count`` and ``eval_count`` (one such object when not streamed).

Vectors are a function of the text (:func:`fake_vector`), so a test can tell
which input each returned vector belongs to. A completion request consumes
the next scripted :class:`Reply` like a chat request (its text steps).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from aiohttp import web

from privatai.core.events import TextDelta
from tests.fakes.server import ErrorLine, Reply

DIMENSIONS = 8
# The model's own vector size: asked for more, servers answer 400.
MAX_DIMENSIONS = 1024


def too_many_dimensions(body: Any, error: Any) -> web.Response | None:
    """The 400 (with the kind's error body) for ``dimensions`` above the model's size."""
    dimensions = body.get("dimensions") if isinstance(body, dict) else None
    if isinstance(dimensions, int) and dimensions > MAX_DIMENSIONS:
        return web.json_response(error(400, f"dimensions must be at most {MAX_DIMENSIONS}",
                                       "invalid_request_error"), status=400)
    return None


def fake_vector(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic vector for ``text`` (values exact in float32)."""
    size = dimensions or DIMENSIONS
    # SHAKE: as many bytes as the size asks for (a model may have thousands).
    digest = hashlib.shake_256(text.encode()).digest(size)
    return [(digest[i] - 128) / 64 for i in range(size)]


def prompt_count(texts: list[str]) -> int:
    """What the fakes report as prompt tokens: one per word."""
    return sum(len(t.split()) for t in texts)


def _inputs(body: Any) -> list[str]:
    value = body.get("input") if isinstance(body, dict) else None
    return [value] if isinstance(value, str) else list(value or [])


def openai_embeddings(body: Any, *, extras: bool = False) -> dict[str, Any]:
    texts = _inputs(body)
    answer: dict[str, Any] = {
        "object": "list", "model": body.get("model", "fake-model"),
        "data": [{"object": "embedding", "index": i, "embedding": fake_vector(t, body.get("dimensions"))}
                 for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": prompt_count(texts), "total_tokens": prompt_count(texts)}}
    if extras:  # vLLM
        answer.update(id="embd-" + secrets.token_hex(8), created=int(time.time()))
    return answer


def ollama_embed(body: Any) -> dict[str, Any]:
    texts = _inputs(body)
    return {"model": body.get("model", "fake-model"),
            "embeddings": [fake_vector(t, body.get("dimensions")) for t in texts],
            "total_duration": 1000, "load_duration": 10, "prompt_eval_count": prompt_count(texts)}


def _texts(reply: Reply) -> list[str]:
    return [step.text for step in reply.steps if isinstance(step, TextDelta)]


def _usage(reply: Reply, prompt: str) -> tuple[int, int]:
    return reply.usage if reply.usage is not None else (prompt_count([prompt]) or 1, len(_texts(reply)))


async def openai_completion(request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
    """``/v1/completions``: the reply's text steps as a raw continuation."""
    completion_id = "cmpl-" + secrets.token_hex(8)
    created = int(time.time())
    model = body.get("model", "fake-model")
    prompt, completion = _usage(reply, str(body.get("prompt", "")))
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    finish = reply.finish or "stop"

    def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

    if body.get("stream") is not True:
        return web.json_response({**chunk("".join(_texts(reply)), finish), "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for step in reply.steps:
        if isinstance(step, TextDelta):
            await response.write(b"data: " + json.dumps(chunk(step.text, None)).encode() + b"\n\n")
        elif isinstance(step, ErrorLine):
            error = {"error": {"message": step.message, "type": step.type, "param": None, "code": step.code}}
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await response.write_eof()
            return response
    await response.write(b"data: " + json.dumps(chunk("", finish)).encode() + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        last = {**chunk("", None), "choices": [], "usage": usage}
        await response.write(b"data: " + json.dumps(last).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def ollama_generate(request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
    """``/api/generate``: the reply's text steps as NDJSON ``response`` pieces."""
    model = body.get("model", "fake-model")
    prompt, completion = _usage(reply, str(body.get("prompt", "")))
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    last = {"model": model, "created_at": created, "response": "", "done": True,
            "done_reason": reply.finish or "stop", "prompt_eval_count": prompt, "eval_count": completion,
            "total_duration": 1000, "load_duration": 10, "eval_duration": 500}
    if body.get("stream") is False:
        return web.json_response({**last, "response": "".join(_texts(reply))})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for step in reply.steps:
        if isinstance(step, TextDelta):
            line = {"model": model, "created_at": created, "response": step.text, "done": False}
            await response.write(json.dumps(line).encode() + b"\n")
        elif isinstance(step, ErrorLine):
            await response.write(json.dumps({"error": step.message}).encode() + b"\n")
            await response.write_eof()
            return response
    await response.write(json.dumps(last).encode() + b"\n")
    await response.write_eof()
    return response

