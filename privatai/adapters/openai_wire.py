"""OpenAI's ``/chat/completions`` wire format, as upstreams speak it.

:func:`build_body` turns our request into the upstream JSON (with the
reasoning switches each server kind accepts), :class:`ChunkMapper` turns the
upstream's ``chat.completion.chunk`` objects (or one ``chat.completion``) into
our events, and :func:`sse_payload` reads one line of the SSE body.

The variants accepted, as servers send them: a first delta with ``content:
null`` (llama.cpp) or explicit nulls on every field (vLLM); reasoning text as
``delta.reasoning`` or ``delta.reasoning_content`` or both with the same text
(vLLM versions differ; emitted once); tool calls in fragments (the first with
``index``, ``id``, ``function.name``, later ones only ``index`` and argument
pieces), whole in one chunk, or without ``index``; usage on a final
``choices: []`` chunk or on any other; errors as ``{"error": {...}}``, as
vLLM's older flat ``{"object": "error", ...}``, or on an ``error:`` SSE field
(older llama-server). ``finish_reason`` is one of stop, length, tool_calls,
content_filter (``function_call`` is the old name of tool_calls); a call
forced by a named ``tool_choice`` may end with ``stop``.
"""
from __future__ import annotations

import secrets
from typing import Any

import msgspec
import orjson

from privatai.core.events import Event, Fingerprint, Finish, Logprobs, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest, message_to_openai, tools_to_openai
from privatai.adapters.params import sampling_extras
from privatai.adapters.reported_usage import reported_usage
from privatai.adapters.think_tags import ThinkTagSplitter

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class UpstreamStreamError(Exception):
    """An error object inside a 200 stream; the adapter decides its class."""

    def __init__(self, payload: Any) -> None:
        super().__init__("upstream error in stream")
        self.payload = payload


def reasoning_effort_of(request: ChatRequest) -> str | None:
    """The requested reasoning effort, from ``reasoning_effort`` or Ollama-style ``think``."""
    if request.reasoning_effort is not None:
        return request.reasoning_effort
    return request.think if isinstance(request.think, str) else None


def thinking_wanted(request: ChatRequest) -> bool | None:
    """Whether the client asked for thinking on or off; None when it did not say."""
    if isinstance(request.think, bool):
        return request.think
    effort = reasoning_effort_of(request)
    if effort is None:
        return None
    return effort != "none"


def build_body(request: ChatRequest, model: str, repetition_key: str = "repetition_penalty") -> dict[str, Any]:
    """The upstream request body: streamed (asking for usage) exactly when the
    client streams; a non-streamed answer always carries usage.

    Options the client did not send are left out, so the model's own
    defaults apply. Which options a kind may receive at all is checked
    before (:func:`~privatai.adapters.params.refuse_unsupported`).
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_to_openai(m) for m in request.messages],
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = tools_to_openai(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    body.update(request.sampling_options())
    body.update(sampling_extras(request, repetition_key))
    if request.logit_bias is not None:
        body["logit_bias"] = request.logit_bias
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    if request.top_logprobs is not None:
        body["top_logprobs"] = request.top_logprobs
    if request.chat_template_kwargs is not None:
        body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
    if request.response_format is not None:
        body["response_format"] = response_format_to_openai(request)
    return body


def response_format_to_openai(request: ChatRequest) -> dict[str, Any]:
    assert request.response_format is not None
    out: dict[str, Any] = {"type": request.response_format.type}
    if request.response_format.json_schema is not None:
        out["json_schema"] = request.response_format.json_schema
    return out


def add_reasoning_switches(body: dict[str, Any], request: ChatRequest) -> None:
    """Thinking on/off and effort for self-hosted servers (llama.cpp, vLLM).

    Qwen3-style templates read ``enable_thinking`` from the chat template
    kwargs; both servers pass ``chat_template_kwargs`` through and accept
    ``reasoning_effort`` (low/medium/high only) for gpt-oss-style models.
    """
    wanted = thinking_wanted(request)
    if wanted is not None:
        # Merged with the client's own template kwargs; its think switch wins.
        body["chat_template_kwargs"] = {**body.get("chat_template_kwargs", {}), "enable_thinking": wanted}
    effort = reasoning_effort_of(request)
    if effort in ("low", "medium", "high"):
        body["reasoning_effort"] = effort
    elif effort == "minimal":
        body["reasoning_effort"] = "low"


def new_call_id() -> str:
    """An OpenAI-style tool-call id for upstreams that send none."""
    return "call_" + secrets.token_hex(12)


def normalize_finish(reason: str | None, had_tool_calls: bool) -> str:
    """One of stop/length/tool_calls/content_filter.

    Upstreams report ``stop`` after a forced tool call (vLLM with a named
    tool_choice, Ollama always): clients decide by ``tool_calls``.
    """
    normalized = _FINISH_REASONS.get(reason or "stop", "stop")
    if had_tool_calls and normalized == "stop":
        return "tool_calls"
    return normalized


class _PlainDelta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: None = None


class _PlainChoice(msgspec.Struct):
    delta: _PlainDelta | None = None
    logprobs: None = None
    finish_reason: str | None = None


class PlainChunk(msgspec.Struct):
    """A chunk of the shape nearly every chunk has: text or reasoning, no
    usage, tool call, logprobs or error. Decoded typed (msgspec skips the
    fields nobody reads, and the mapper reads attributes instead of a dict's
    keys); any other value of these fields fails the decode, and the chunk
    takes the general path (:func:`sse_payload`, a dict)."""

    choices: list[_PlainChoice]
    usage: None = None
    error: None = None
    object: str | None = None
    system_fingerprint: str | None = None


_decode_plain = msgspec.json.Decoder(PlainChunk).decode


class ChunkMapper:
    """Upstream ``chat.completion.chunk`` objects -> our events, for one response.

    Accepts: ``content: null``; reasoning as ``reasoning`` or
    ``reasoning_content`` (explicit nulls, or both with the same text: emitted
    once); tool calls in fragments or whole, with or without ``index``; usage
    on the ``choices: []`` chunk or on any other (checked by
    :func:`~privatai.adapters.reported_usage.reported_usage`); an ``error``
    object (raises :class:`UpstreamStreamError`).
    """

    __slots__ = ("_calls", "_fingerprint", "_last_call", "_splitter", "finish_reason", "usage")

    def __init__(self, think_tags: bool = False) -> None:
        self._splitter = ThinkTagSplitter() if think_tags else None
        self._calls: dict[object, int] = {}  # upstream key -> our index
        self._last_call: object = None
        # The upstream's system_fingerprint until it went out (then "" marks it sent).
        self._fingerprint: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: Any) -> list[Event]:
        if type(chunk) is PlainChunk:
            return self._feed_plain(chunk)
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") or chunk.get("object") == "error":
            raise UpstreamStreamError(chunk)
        fingerprint = chunk.get("system_fingerprint")
        if self._fingerprint is None and fingerprint and isinstance(fingerprint, str):
            self._fingerprint = fingerprint
        events = self._feed(chunk)
        return self._with_fingerprint(events) if events else events

    def _feed_plain(self, chunk: PlainChunk) -> list[Event]:
        """:meth:`feed` for a :class:`PlainChunk`: the same events as for its dict."""
        if self._fingerprint is None and chunk.system_fingerprint:
            self._fingerprint = chunk.system_fingerprint
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        events: list[Event] = []
        delta = choice.delta
        if delta is not None:
            reasoning = delta.reasoning or delta.reasoning_content
            if reasoning:
                events.append(ThinkingDelta(reasoning))
            if delta.content:
                if self._splitter is not None:
                    events.extend(self._splitter.feed(delta.content))
                else:
                    events.append(TextDelta(delta.content))
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        return self._with_fingerprint(events) if events else events

    def _with_fingerprint(self, events: list[Event]) -> list[Event]:
        """The fingerprint goes out with the first content, not on its own: an
        upstream that fails before any content can still be failed over."""
        if self._fingerprint:
            events.insert(0, Fingerprint(self._fingerprint))
            self._fingerprint = ""
        return events

    def _feed(self, chunk: dict[str, Any]) -> list[Event]:
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            reported = reported_usage(usage.get("prompt_tokens"), usage.get("completion_tokens"),
                                      cached=_detail(usage, "prompt_tokens_details", "cached_tokens"),
                                      reasoning=_detail(usage, "completion_tokens_details", "reasoning_tokens"))
            if reported is not None:
                self.usage = reported
        choices = chunk.get("choices")
        if not choices:
            return []
        choice = choices[0]
        events: list[Event] = []
        delta = choice.get("delta")
        if delta:
            # Servers sending both fields send the same text in each.
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning and isinstance(reasoning, str):
                events.append(ThinkingDelta(reasoning))
            content = delta.get("content")
            if content and isinstance(content, str):
                if self._splitter is not None:
                    events.extend(self._splitter.feed(content))
                else:
                    events.append(TextDelta(content))
            calls = delta.get("tool_calls")
            if calls:
                self._tool_calls(calls, events)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list) and logprobs["content"]:
            events.append(Logprobs(logprobs["content"]))
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
        return events

    def _tool_calls(self, calls: list[Any], events: list[Event]) -> None:
        for position, call in enumerate(calls):
            function = call.get("function") or {}
            call_id = call.get("id")
            index = call.get("index")
            if isinstance(index, int):
                key: object = ("index", index)
            elif call_id and ("id", call_id) in self._calls:
                key = ("id", call_id)
            elif call_id or self._last_call is None:
                key = ("id", call_id or position)
            else:
                # No index and no id: a continuation of the call before.
                key = self._last_call
            self._last_call = key
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            ours = self._calls.get(key)
            if ours is None:
                ours = self._calls[key] = len(self._calls)
                events.append(ToolCallDelta(ours, call_id or new_call_id(), function.get("name"), arguments))
            elif arguments:
                events.append(ToolCallDelta(ours, arguments=arguments))

    def feed_completion(self, completion: Any) -> list[Event]:
        """A non-streamed ``chat.completion`` (or an error object): its message
        is read as one delta whose tool calls are whole, numbered by position
        (they carry no ``index``, and an id may be missing)."""
        if not isinstance(completion, dict):
            raise TypeError("not a JSON object")
        if completion.get("error") or completion.get("object") == "error":
            raise UpstreamStreamError(completion)
        choice = completion["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [{**call, "index": i} for i, call in enumerate(calls)]}
        return self.feed({"choices": [{"delta": message, "logprobs": choice.get("logprobs"),
                                       "finish_reason": choice.get("finish_reason")}],
                          "usage": completion.get("usage"),
                          "system_fingerprint": completion.get("system_fingerprint")})

    def finish(self) -> list[Event]:
        """The closing events: held-back text, :class:`Finish`, then :class:`Usage` if reported."""
        events: list[Event] = self._splitter.flush() if self._splitter is not None else []
        events = self._with_fingerprint(events)
        events.append(Finish(normalize_finish(self.finish_reason, bool(self._calls))))
        if self.usage is not None:
            events.append(self.usage)
        return events


def _detail(usage: dict[str, Any], group: str, name: str) -> Any:
    """``usage[group][name]``, or None when the upstream sent no such detail (or null)."""
    details = usage.get(group)
    return details.get(name) if isinstance(details, dict) else None


# What :func:`sse_payload` returns for the ``data: [DONE]`` line that ends a stream.
DONE = object()


def sse_chat_payload(line: bytes) -> Any:
    """:func:`sse_payload` for ``chat.completion.chunk`` lines: a
    :class:`PlainChunk` when the chunk has that shape, else what
    :func:`sse_payload` gives."""
    if line.startswith(b"data: {"):
        try:
            chunk = _decode_plain(line[6:])
        except msgspec.DecodeError:  # not that shape (a ValidationError), or not JSON
            return orjson.loads(line[6:])
        if chunk.object != "error":
            return chunk
    return sse_payload(line)


def sse_payload(line: bytes) -> Any:
    """The JSON of one SSE line, :data:`DONE` for ``[DONE]``, None for anything else
    (comments, ``event:``/``id:`` fields, blank separators)."""
    if line.startswith(b"data: {"):
        # Nearly every line: one chunk (JSON allows the \r of a CRLF line after it).
        return orjson.loads(line[6:])
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(b"data:"):
        payload = line[5:].strip()
    elif line.startswith(b"error:"):
        # Older llama-server versions sent in-band errors as an ``error:`` field.
        payload = line[6:].strip()
        try:
            return {"error": orjson.loads(payload)}
        except orjson.JSONDecodeError:
            return {"error": payload.decode("utf-8", "replace")}
    else:
        return None
    if not payload:
        return None
    if payload == b"[DONE]":
        return DONE
    # Not JSON raises (a ValueError): without it we cannot know what was lost.
    return orjson.loads(payload)

