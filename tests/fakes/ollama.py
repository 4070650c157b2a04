"""A fake of Ollama's native API: ``/api/chat`` NDJSON, ``/api/tags``, ``/api/version``.

``/api/chat`` streams unless the body says ``"stream": false``: one JSON
object per line, ``{"model", "created_at", "message": {"role": "assistant",
"content", "thinking"?, "tool_calls"?}, "done": false}``, and a last line with
``"done": true``, ``done_reason`` (stop or length), ``prompt_eval_count``,
``eval_count`` and durations in nanoseconds. Tool calls come whole, arguments
as a JSON object. Errors: an HTTP status with ``{"error": "..."}``, or once
the stream began a line ``{"error": "..."}`` while the status stays 200.
Non-streamed, the answer is one such object with ``done: true``."""
from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta

from tests.fakes.endpoints import ollama_embed, ollama_generate, too_many_dimensions
from tests.fakes.server import ErrorLine, FakeBackend, Raw, Reply, StreamRecord, WholeAnswer

# The durations Ollama reports on its final line, in nanoseconds.
_DURATIONS = {"total_duration": 123456789, "load_duration": 1234567,
              "prompt_eval_duration": 2345678, "eval_duration": 34567890}


class FakeOllama(FakeBackend):
    """Tool calls arrive whole, with ``id`` and ``function.index`` as current
    releases send them, or without either (``tool_ids=False``) as older ones do.
    After a tool call ``done_reason`` is still ``stop``."""

    kind = "ollama"
    chat_path = "/api/chat"

    def __init__(self, *, tool_ids: bool = True, models: tuple[str, ...] = ("fake-model:latest",)) -> None:
        super().__init__(models=models)
        self.tool_ids = tool_ids

    def error_body(self, status: int, message: str, error_type: str | None) -> Any:
        return {"error": message}

    def streamed(self, body: Any) -> bool:
        # Ollama streams unless told not to.
        return not isinstance(body, dict) or body.get("stream", True) is not False

    def tool_call(self, step: ToolCallDelta, index: int) -> dict[str, Any]:
        call: dict[str, Any] = {"function": {"name": step.name,
                                             "arguments": json.loads(step.arguments or "{}")}}
        if self.tool_ids:
            call["id"] = step.id or "call_" + secrets.token_hex(4)
            call["function"] = {"index": index, **call["function"]}
        return call

    def final_fields(self, body: Any, reply: Reply) -> dict[str, Any]:
        """What the last line (or the whole answer) adds: reason, counts, durations."""
        prompt, completion = reply.usage_counts(body.get("messages") or [])
        # Ollama knows only stop and length; a tool call ends with "stop".
        reason = "length" if reply.finish_reason() == "length" else "stop"
        return {"done": True, "done_reason": reason, **_DURATIONS,
                "prompt_eval_count": prompt, "eval_count": completion}

    def whole_body(self, body: Any, reply: Reply, answer: WholeAnswer) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.thinking:
            message["thinking"] = answer.thinking
        if answer.calls:
            message["tool_calls"] = [self.tool_call(c, i) for i, c in enumerate(answer.calls)]
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return {"model": body.get("model", "fake-model"), "created_at": created, "message": message,
                **self.final_fields(body, reply)}

    async def render(self, request: web.Request, body: Any, reply: Reply,
                     record: StreamRecord) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        model = body.get("model", "fake-model")

        def line(message: dict[str, Any], **extra: Any) -> bytes:
            created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            payload = {"model": model, "created_at": created,
                       "message": {"role": "assistant", "content": "", **message}, "done": False, **extra}
            return json.dumps(payload).encode() + b"\n"

        calls = 0
        for step in reply.steps:
            if isinstance(step, TextDelta):
                await response.write(line({"content": step.text}))
            elif isinstance(step, ThinkingDelta):
                await response.write(line({"thinking": step.text}))
            elif isinstance(step, ToolCallDelta):
                await response.write(line({"tool_calls": [self.tool_call(step, calls)]}))
                calls += 1
            elif isinstance(step, Raw):
                await response.write(step.data)
            elif isinstance(step, ErrorLine):
                await response.write(json.dumps({"error": step.message}).encode() + b"\n")
                await response.write_eof()
                return response
            elif not await self.control(request, step, record):
                return response
        await response.write(line({}, **self.final_fields(body, reply)))
        await response.write_eof()
        return response

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/api/embed":
            body = await request.json()
            return too_many_dimensions(body, self.error_body) or web.json_response(ollama_embed(body))
        if request.method == "POST" and request.path == "/api/generate":
            return await self.text_reply(request, ollama_generate)
        if request.method == "GET" and request.path == "/api/tags":
            return web.json_response({"models": [
                {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 1000,
                 "digest": "0" * 64, "details": {"format": "gguf", "family": "llama",
                                                 "parameter_size": "1B", "quantization_level": "Q4_K_M"}}
                for m in self.models]})
        if request.method == "GET" and request.path == "/api/version":
            return web.json_response({"version": "0.12.6"})
        return await super().handle_other(request)
