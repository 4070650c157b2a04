"""Fakes of the OpenAI-style SSE servers: llama.cpp's llama-server, vLLM, and a
generic OpenAI API.

The format they share: ``POST /v1/chat/completions`` with ``"stream": true``
answers ``text/event-stream``, one ``data: <chat.completion.chunk JSON>`` line
and a blank line per event. The first delta carries ``role: "assistant"``;
``choices[0].delta`` carries ``content``, reasoning text, or ``tool_calls``
fragments (the first with ``index``, ``id``, ``type``, ``function.name``, later
ones ``index`` and ``function.arguments`` pieces); the last content chunk has
``finish_reason``. With ``stream_options.include_usage`` a chunk with
``choices: []`` and ``usage`` follows, then ``data: [DONE]``. Without
``stream`` the answer is one ``chat.completion`` object. With ``logprobs``
requested, each text chunk (and the whole answer's choice) carries
``logprobs: {"content": [...]}``. Errors before the
answer are an HTTP status with the kind's error body; each class below lists
its kind's own variants."""
from __future__ import annotations

import json
import secrets
import string
import time
from typing import Any, ClassVar

from aiohttp import web

from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta

from tests.fakes.endpoints import openai_completion, openai_embeddings, too_many_dimensions
from tests.fakes.server import ErrorLine, FakeBackend, Raw, Reply, StreamRecord, WholeAnswer

_ALNUM = string.ascii_letters + string.digits


def token_logprobs(text: str, body: Any) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` entries for one text delta (the delta as one
    token), with ``top_logprobs`` alternatives as many as the request asked."""
    alternatives = [{"token": f"alt{i}", "logprob": -1.0 - i, "bytes": list(f"alt{i}".encode())}
                    for i in range(body.get("top_logprobs") or 0)]
    return [{"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": alternatives}]


class SSEFake(FakeBackend):
    chat_path = "/v1/chat/completions"
    # Argument pieces per fragment when a whole call is streamed in fragments.
    argument_piece: ClassVar[int] = 7
    done_after_error: ClassVar[bool] = True
    object_prefix: ClassVar[str] = "chatcmpl-"

    # -- deltas in this kind's style ----------------------------------------

    def first_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": ""}

    def text_delta(self, text: str) -> dict[str, Any]:
        return {"content": text}

    def thinking_delta(self, text: str) -> dict[str, Any]:
        return {"reasoning_content": text}

    def new_tool_id(self) -> str:
        return "call_" + secrets.token_hex(12)

    def tool_chunks(self, step: ToolCallDelta) -> list[dict[str, Any]]:
        """One ``tool_calls`` entry per chunk: id and name first, then argument pieces."""
        if step.name is None:
            return [{"index": step.index, "function": {"arguments": step.arguments}}]
        first = {"index": step.index, "id": step.id or self.new_tool_id(), "type": "function",
                 "function": {"name": step.name, "arguments": ""}}
        n = self.argument_piece
        pieces = [step.arguments[i:i + n] for i in range(0, len(step.arguments), n)]
        return [first] + [{"index": step.index, "function": {"arguments": p}} for p in pieces]

    def decorate_last(self, chunk: dict[str, Any]) -> None:
        """Extras on the finish chunk."""

    def stream_error(self, step: ErrorLine) -> dict[str, Any]:
        return {"error": {"message": step.message, "type": step.type, "param": None, "code": step.code}}

    def error_body(self, status: int, message: str, error_type: str | None) -> Any:
        return {"error": {"message": message, "type": error_type or "invalid_request_error",
                          "param": None, "code": None}}

    # -- the stream -----------------------------------------------------------

    async def render(self, request: web.Request, body: Any, reply: Reply,
                     record: StreamRecord) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        completion_id = self.object_prefix + secrets.token_hex(8)
        created = int(time.time())
        model = body.get("model", "fake-model")

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "logprobs": None,
                                      "finish_reason": finish}
            out = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [choice]}
            if reply.system_fingerprint is not None:
                out["system_fingerprint"] = reply.system_fingerprint
            return out

        async def send(payload: Any) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            await response.write(b"data: " + data + b"\n\n")

        await send(chunk(self.first_delta()))
        for step in reply.steps:
            if isinstance(step, TextDelta):
                text_chunk = chunk(self.text_delta(step.text))
                if body.get("logprobs"):
                    text_chunk["choices"][0]["logprobs"] = {"content": token_logprobs(step.text, body)}
                await send(text_chunk)
            elif isinstance(step, ThinkingDelta):
                await send(chunk(self.thinking_delta(step.text)))
            elif isinstance(step, ToolCallDelta):
                for call in self.tool_chunks(step):
                    await send(chunk(self.tool_call_delta(call)))
            elif isinstance(step, Raw):
                await response.write(step.data)
            elif isinstance(step, ErrorLine):
                await send(self.stream_error(step))
                if self.done_after_error:
                    await send(b"[DONE]")
                await response.write_eof()
                return response
            elif not await self.control(request, step, record):
                return response
        last = chunk({}, reply.finish_reason())
        self.decorate_last(last)
        await send(last)
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await send({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [], "usage": reply.openai_usage(body.get("messages") or [])})
        await send(b"[DONE]")
        await response.write_eof()
        return response

    def tool_call_delta(self, call: dict[str, Any]) -> dict[str, Any]:
        return {"tool_calls": [call]}

    # -- the non-streamed answer (a chat.completion object) -------------------

    def whole_message(self, answer: WholeAnswer, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """``content`` is null when the answer is only tool calls."""
        message: dict[str, Any] = {"role": "assistant",
                                   "content": answer.text if answer.text or not calls else None,
                                   "refusal": None, "annotations": []}
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if calls:
            message["tool_calls"] = calls
        return message

    def decorate_whole(self, completion: dict[str, Any]) -> None:
        """Extras on the chat.completion object."""

    def whole_body(self, body: Any, reply: Reply, answer: WholeAnswer) -> Any:
        calls = [{"id": c.id or self.new_tool_id(), "type": "function",
                  "function": {"name": c.name, "arguments": c.arguments}} for c in answer.calls]
        whole = {"id": self.object_prefix + secrets.token_hex(8), "object": "chat.completion",
                 "created": int(time.time()), "model": body.get("model", "fake-model"),
                 "choices": [{"index": 0, "message": self.whole_message(answer, calls),
                              "logprobs": ({"content": [entry for step in reply.steps if isinstance(step, TextDelta)
                                                        for entry in token_logprobs(step.text, body)]}
                                           if body.get("logprobs") else None),
                              "finish_reason": reply.finish_reason()}],
                 "usage": reply.openai_usage(body.get("messages") or [])}
        if reply.system_fingerprint is not None:
            whole["system_fingerprint"] = reply.system_fingerprint
        self.decorate_whole(whole)
        return whole

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/v1/embeddings":
            body = await request.json()
            return too_many_dimensions(body, self.error_body) or web.json_response(
                openai_embeddings(body, extras=self.kind == "vllm"))
        if request.method == "POST" and request.path == "/v1/completions":
            return await self.text_reply(request, openai_completion)
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": self.kind} for m in self.models]})
        return await super().handle_other(request)


class FakeLlamaCpp(SSEFake):
    """llama-server: ``content: null`` first delta, ``reasoning_content``, 32-alnum
    tool ids, integer error codes, ``timings`` on the last chunk, an in-band error
    closes the stream without ``[DONE]``."""

    kind = "llamacpp"
    done_after_error = False

    def first_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": None}

    def new_tool_id(self) -> str:
        return "".join(secrets.choice(_ALNUM) for _ in range(32))

    def decorate_last(self, chunk: dict[str, Any]) -> None:
        chunk["timings"] = {"prompt_n": 10, "prompt_ms": 12.5, "predicted_n": 5, "predicted_ms": 50.0}

    def stream_error(self, step: ErrorLine) -> dict[str, Any]:
        return {"error": {"code": step.code, "message": step.message, "type": step.type}}

    def whole_message(self, answer: WholeAnswer, calls: list[dict[str, Any]]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": answer.text if answer.text or not calls else None}
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if calls:
            message["tool_calls"] = calls
        return message

    def decorate_whole(self, completion: dict[str, Any]) -> None:
        completion.setdefault("system_fingerprint", "b6000-fake")  # its build, unless scripted
        self.decorate_last(completion)

    def error_body(self, status: int, message: str, error_type: str | None) -> Any:
        default = {400: "invalid_request_error", 404: "not_found_error", 401: "authentication_error",
                   503: "unavailable_error"}.get(status, "server_error")
        return {"error": {"code": status, "message": message, "type": error_type or default}}

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/health":
            if self.healthy:
                return web.json_response({"status": "ok"})
            return web.json_response(self.error_body(503, "Loading model", None), status=503)
        return await super().handle_other(request)


class FakeVLLM(SSEFake):
    """vLLM: explicit nulls on every delta, reasoning as ``reasoning``,
    ``reasoning_content`` or both (``reasoning_field``), ``chatcmpl-tool-<hex>``
    ids, ``stop_reason`` extras, an in-band error followed by ``[DONE]``, and
    optionally the old flat ``{"object": "error", ...}`` errors (``flat_errors``)."""

    kind = "vllm"

    def __init__(self, *, reasoning_field: str = "reasoning", flat_errors: bool = False,
                 models: tuple[str, ...] = ("fake-model",)) -> None:
        super().__init__(models=models)
        assert reasoning_field in ("reasoning", "reasoning_content", "both")
        self.reasoning_field = reasoning_field
        self.flat_errors = flat_errors

    def _nulls(self) -> dict[str, Any]:
        if self.reasoning_field == "both":
            return {"reasoning": None, "reasoning_content": None}
        return {self.reasoning_field: None}

    def first_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": "", **self._nulls()}

    def text_delta(self, text: str) -> dict[str, Any]:
        return {**self._nulls(), "content": text}

    def thinking_delta(self, text: str) -> dict[str, Any]:
        fields = ("reasoning", "reasoning_content") if self.reasoning_field == "both" else (self.reasoning_field,)
        return {"content": None, **{f: text for f in fields}}

    def tool_call_delta(self, call: dict[str, Any]) -> dict[str, Any]:
        return {**self._nulls(), "content": None, "tool_calls": [call]}

    def new_tool_id(self) -> str:
        return "chatcmpl-tool-" + secrets.token_hex(16)

    def tool_chunks(self, step: ToolCallDelta) -> list[dict[str, Any]]:
        chunks = super().tool_chunks(step)
        if step.name is not None:
            # vLLM's first fragment has the name but no arguments key.
            del chunks[0]["function"]["arguments"]
        return chunks

    def decorate_last(self, chunk: dict[str, Any]) -> None:
        chunk["choices"][0]["stop_reason"] = None

    def whole_message(self, answer: WholeAnswer, calls: list[dict[str, Any]]) -> dict[str, Any]:
        # Every field present, null when unused; tool_calls always a list.
        fields = ("reasoning", "reasoning_content") if self.reasoning_field == "both" else (self.reasoning_field,)
        return {"role": "assistant", "content": answer.text if answer.text or not calls else None,
                "refusal": None, "annotations": None, "audio": None, "function_call": None,
                "tool_calls": calls, **{f: answer.thinking or None for f in fields}}

    def decorate_whole(self, completion: dict[str, Any]) -> None:
        self.decorate_last(completion)
        completion["usage"].setdefault("prompt_tokens_details", None)
        completion.setdefault("system_fingerprint", None)
        completion.update({"service_tier": None, "prompt_logprobs": None, "kv_transfer_params": None})

    def _error(self, status: int, message: str, error_type: str) -> dict[str, Any]:
        if self.flat_errors:
            return {"object": "error", "message": message, "type": error_type, "param": None, "code": status}
        return {"error": {"message": message, "type": error_type, "param": None, "code": status}}

    def stream_error(self, step: ErrorLine) -> dict[str, Any]:
        return self._error(step.code, step.message, step.type)

    def error_body(self, status: int, message: str, error_type: str | None) -> Any:
        default = "BadRequestError" if status < 500 else "InternalServerError"
        return self._error(status, message, error_type or default)

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/health":
            return web.Response(status=200 if self.healthy else 503)
        return await super().handle_other(request)


class FakeOpenAI(SSEFake):
    """A generic OpenAI API: ``url`` includes ``/v1``, a Bearer key is required
    when ``api_key`` is set, and ``whole_tool_calls`` sends each tool call in one
    chunk (id, name and all arguments) as some compatible servers do."""

    kind = "openai"

    def __init__(self, *, api_key: str | None = None, whole_tool_calls: bool = False,
                 models: tuple[str, ...] = ("fake-model",)) -> None:
        super().__init__(models=models)
        self.api_key = api_key
        self.whole_tool_calls = whole_tool_calls

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def first_delta(self) -> dict[str, Any]:
        return {"role": "assistant", "content": "", "refusal": None}

    def tool_chunks(self, step: ToolCallDelta) -> list[dict[str, Any]]:
        if self.whole_tool_calls and step.name is not None:
            return [{"index": step.index, "id": step.id or self.new_tool_id(), "type": "function",
                     "function": {"name": step.name, "arguments": step.arguments}}]
        return super().tool_chunks(step)

    def check_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return web.json_response({"error": {"message": "Incorrect API key provided.",
                                            "type": "invalid_request_error", "param": None,
                                            "code": "invalid_api_key"}}, status=401)
