"""Ollama through its native ``/api/chat`` (NDJSON), on the shared HTTP transport;
text completions through ``/api/generate`` with ``raw`` (same line format, the
text in ``response``), embeddings through ``/api/embed``.

``url`` is the server root (``http://127.0.0.1:11434``). A streamed answer is
one JSON object per line: ``{"model", "created_at", "message": {"role":
"assistant", "content", "thinking"?, "tool_calls"?}, "done": false}``, then a
last line with ``"done": true``, ``done_reason`` (stop or length),
``prompt_eval_count`` and ``eval_count``. Errors are an HTTP status with
``{"error": "..."}``, or, once the answer began, a line ``{"error": "..."}``
while the status stays 200. With ``"stream": false`` the answer is one such
object with ``done: true``; it arrives only when generation ends, so
``first_token_timeout`` bounds the whole call.

Chat speaks that wire format itself, over the same aiohttp pool, line reader,
deadlines and caps as the OpenAI kinds (:mod:`privatai.adapters.transport`).
The ``ollama`` package's ``chat()`` would validate the request and every line
through pydantic models that silently drop fields we need (tool-call ``id``s
in answers, ``tool_call_id`` on tool results, nested tool-schema keys such as
``properties`` of an object parameter or ``anyOf``), at the cost of a model
construction per token. The package still lists the models (``/api/tags``),
which it reads well.

Mapping: OpenAI messages -> Ollama messages (tool-call arguments as JSON
objects, tool results with ``tool_name`` and ``tool_call_id``); ``think`` from
``think`` or ``reasoning_effort``; ``format`` from ``response_format``;
``options`` only for what the client set (no defaults of ours, so the model's
own apply), penalties and samplers included; images from data URLs as
``images``; ``tool_choice`` by which tools are offered. Ollama sends tool calls whole, with ``id`` and ``function.index``
(older releases: neither): each becomes one fragment with an ``id``
(generated when the server sends none) and our own index. After a tool call
``done_reason`` is still ``stop``; the client is told ``tool_calls``.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator, Callable

import httpx
import orjson
from ollama import AsyncClient, ResponseError

from privatai.config import BackendConfig
from privatai.errors import BackendError, InvalidRequest
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult, EmbeddingsRequest
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta
from privatai.core.protocol import (
    AssistantMessage,
    ChatRequest,
    DeveloperMessage,
    Message,
    SystemMessage,
    ToolMessage,
    image_urls,
    text_of,
    tools_to_openai,
)
from privatai.adapters.base import Adapter
from privatai.adapters.openai_wire import new_call_id, normalize_finish
from privatai.adapters.params import refuse_unsupported, sampling_extras
from privatai.adapters.reported_usage import reported_usage
from privatai.adapters.think_tags import ThinkTagSplitter
from privatai.adapters.transport import (
    PROBE_TIMEOUT,
    TRANSPORT_ERRORS,
    UNFINISHED,
    Upstream,
    WireError,
    auth_headers,
    transport_failure,
    unreadable,
)
from privatai.adapters.upstream_errors import classify, error_details

_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
}
# Ollama's options know these samplers (the repetition penalty as repeat_penalty);
# it has no logit_bias, logprobs, n, parallel_tool_calls switch or message names.
_PARAMS = frozenset({"presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty",
                     "image_url"})
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.+)", re.DOTALL)


def messages_to_ollama(messages: list[Message]) -> list[dict[str, Any]]:
    """Our messages in Ollama's form. Tool results get the ``tool_name`` of the
    call they answer, looked up by id in the assistant turns before them."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if isinstance(message, AssistantMessage):
            item: dict[str, Any] = {"role": "assistant", "content": text_of(message.content)}
            thinking = message.thinking or message.reasoning_content
            if thinking:
                item["thinking"] = thinking
            if message.tool_calls:
                calls = []
                for j, call in enumerate(message.tool_calls):
                    names[call.id] = call.function.name
                    arguments = _arguments_object(call.function.arguments,
                                                  f"messages[{i}].tool_calls[{j}].function.arguments")
                    calls.append({"id": call.id, "function": {"index": j, "name": call.function.name,
                                                              "arguments": arguments}})
                item["tool_calls"] = calls
            out.append(item)
        elif isinstance(message, ToolMessage):
            item = {"role": "tool", "content": text_of(message.content), "tool_call_id": message.tool_call_id}
            if message.tool_call_id in names:
                item["tool_name"] = names[message.tool_call_id]
            out.append(item)
        else:
            role = "system" if isinstance(message, (SystemMessage, DeveloperMessage)) else "user"
            item = {"role": role, "content": text_of(message.content)}
            urls = image_urls(message)
            if urls:
                item["images"] = [_image_base64(url, f"messages[{i}].content") for url in urls]
            out.append(item)
    return out


def _image_base64(url: str, param: str) -> str:
    """Ollama takes images as bare base64. The gateway does not fetch remote
    URLs on a client's behalf (that would reach the internet unannounced)."""
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("The ollama backend takes images only as base64 data URLs "
                             "(data:image/...;base64,...); the gateway does not fetch image URLs.",
                             param=param)
    return match.group(1)


def _offered_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    """The tools to offer, honouring ``tool_choice`` as far as Ollama can.

    Ollama has no tool_choice: "none" is honoured by offering no tools, a
    named function by offering only that one (the model can call nothing
    else, but may still answer in text); "required" cannot be enforced and is
    refused rather than silently weakened.
    """
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    if choice == "required":
        raise InvalidRequest("tool_choice 'required' is not supported by the ollama backend serving "
                             "this model; name one function instead.", param="tool_choice")
    tools = tools_to_openai(request.tools)
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        tools = [tool for tool in tools if tool["function"]["name"] == name]
    return tools


def _arguments_object(arguments: str, param: str) -> dict[str, Any]:
    """Ollama wants the arguments of a past call as an object, not a JSON string."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Tool-call arguments must be a JSON object.", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("Tool-call arguments must be a JSON object.", param=param)
    return value


def build_chat_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The ``/api/chat`` body for one request."""
    refuse_unsupported(request, "ollama", _PARAMS)
    body: dict[str, Any] = {"model": model, "messages": messages_to_ollama(request.messages),
                            "stream": request.stream}
    tools = _offered_tools(request)
    if tools:
        body["tools"] = tools
    think = request.think if request.think is not None else _EFFORT_TO_THINK.get(request.reasoning_effort or "")
    if think is not None:
        body["think"] = think
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        # OpenAI wraps the schema as {"name", "schema", "strict"}; Ollama wants the schema.
        schema = fmt.json_schema.get("schema", fmt.json_schema)
        body["format"] = schema
    options = request.sampling_options(max_tokens_key="num_predict")
    options.update(sampling_extras(request, "repeat_penalty"))
    if options:
        body["options"] = options
    return body


def build_generate_body(request: CompletionRequest, prompt: str, model: str) -> dict[str, Any]:
    """The ``/api/generate`` body for a text completion: ``raw``, so the model
    continues the prompt as it is, without its chat template."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "raw": True, "stream": request.stream}
    options = request.sampling_options(max_tokens_key="num_predict")
    if options:
        body["options"] = options
    return body


def generate_line_as_chat(part: dict[str, Any]) -> dict[str, Any]:
    """An ``/api/generate`` line (``response`` text) in the ``/api/chat`` line's shape."""
    return {**part, "message": {"content": part.get("response")}}


class LineMapper:
    """Ollama's streamed ``/api/chat`` lines (or ``/api/generate`` lines,
    reshaped) -> our events, for one response."""

    __slots__ = ("_calls", "_reshape", "_splitter", "done")

    def __init__(self, think_tags: bool = False,
                 reshape: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self._splitter = ThinkTagSplitter() if think_tags else None
        self._reshape = reshape
        self._calls = 0
        self.done: dict[str, Any] | None = None  # the final line, once seen

    def feed(self, part: dict[str, Any]) -> list[Event]:
        if self._reshape is not None:
            part = self._reshape(part)
        message = part.get("message") or {}
        events: list[Event] = []
        thinking = message.get("thinking")
        if thinking:
            events.append(ThinkingDelta(thinking))
        content = message.get("content")
        if content:
            if self._splitter is not None:
                events.extend(self._splitter.feed(content))
            else:
                events.append(TextDelta(content))
        for call in message.get("tool_calls") or ():
            # Whole calls, possibly without id or index (older releases).
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
            events.append(ToolCallDelta(self._calls, call.get("id") or new_call_id(),
                                        function.get("name"), arguments))
            self._calls += 1
        if part.get("done"):
            self.done = part
        return events

    def finish(self) -> list[Event]:
        """Held-back text, :class:`Finish` (``tool_calls`` after calls, as Ollama
        says ``stop``), then :class:`Usage` from the final line's counts."""
        last = self.done or {}
        events: list[Event] = self._splitter.flush() if self._splitter is not None else []
        events.append(Finish(normalize_finish(last.get("done_reason"), self._calls > 0)))
        usage = reported_usage(last.get("prompt_eval_count"), last.get("eval_count"))
        if usage is not None:
            events.append(usage)
        return events


class OllamaAdapter(Adapter):
    kind = "ollama"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        assert config.url, "config validation requires a url for this kind"
        self.host = config.url.rstrip("/")
        # The Authorization header is for an Ollama behind an authenticating proxy.
        self._auth = auth_headers(config)
        self._headers = {"Content-Type": "application/json", **self._auth}
        self._upstream = Upstream(config)
        self._listing: AsyncClient | None = None

    async def start(self) -> None:
        self._upstream.session()

    async def close(self) -> None:
        await self._upstream.close()
        if self._listing is not None:
            await self._listing.close()
            self._listing = None

    def complete(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """A non-streamed ``/api/chat`` for a non-streamed client request."""
        return self._whole("/api/chat", build_chat_body(request, model), LineMapper(self.config.think_tags))

    def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        return self._streamed("/api/chat", build_chat_body(request, model), LineMapper(self.config.think_tags))

    def complete_text(self, request: CompletionRequest, prompt: str, model: str) -> AsyncIterator[Event]:
        body = build_generate_body(request, prompt, model)
        mapper = LineMapper(reshape=generate_line_as_chat)
        if request.stream:
            return self._streamed("/api/generate", body, mapper)
        return self._whole("/api/generate", body, mapper)

    async def embed(self, request: EmbeddingsRequest, texts: list[str], model: str) -> EmbeddingResult:
        # truncate false: an input over the context is an error, as at OpenAI, not silently cut.
        body: dict[str, Any] = {"model": model, "input": texts, "truncate": False}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        answer = await self._upstream.fetch(self.host + "/api/embed", orjson.dumps(body), self._headers)
        try:
            part = orjson.loads(answer)
            if part.get("error"):
                raise classify(None, error_details(part), started=False)
            vectors = [[float(x) for x in vector] for vector in part["embeddings"]]
            if len(vectors) != len(texts):
                raise ValueError("one vector per input expected")
        except (KeyError, ValueError, AttributeError, TypeError):
            raise transport_failure(unreadable("embeddings"), started=False) from None
        usage = reported_usage(part.get("prompt_eval_count"), 0)
        return EmbeddingResult(vectors, usage.prompt_tokens if usage is not None else None)

    async def _whole(self, path: str, body: dict[str, Any], mapper: LineMapper) -> AsyncIterator[Event]:
        """One non-streamed answer as events.

        Every failure happens before the first event: BackendUnavailable or
        UpstreamRejected, never BackendError.
        """
        answer = await self._upstream.fetch(self.host + path, orjson.dumps(body), self._headers)
        try:
            part = orjson.loads(answer)
            if part.get("error"):
                # An error object with status 200: its text, as in a stream.
                raise classify(None, error_details(part), started=False)
            events = mapper.feed(part)
        except (ValueError, AttributeError, TypeError):
            # Not JSON, or not the shape of an answer.
            raise transport_failure(unreadable("an answer"), started=False) from None
        if mapper.done is None:
            raise transport_failure(WireError(UNFINISHED), started=False)
        events.extend(mapper.finish())
        for event in events:
            yield event

    async def _streamed(self, path: str, body: dict[str, Any], mapper: LineMapper) -> AsyncIterator[Event]:
        reader = await self._upstream.open_stream(self.host + path, orjson.dumps(body), self._headers)
        started = False
        try:
            while mapper.done is None:
                try:
                    lines = await reader.read(started)
                except TRANSPORT_ERRORS as exc:
                    raise transport_failure(exc, started=started) from None
                if lines is None:
                    raise transport_failure(WireError(UNFINISHED), started=started)
                for line in lines:
                    if not line:
                        continue
                    try:
                        part = orjson.loads(line)
                        if part.get("error"):
                            raise _error_line(part["error"])
                        events = mapper.feed(part)
                    except (ValueError, AttributeError, TypeError):
                        # Not JSON, or not the shape of a line.
                        raise transport_failure(unreadable("a line"), started=started) from None
                    for event in events:
                        started = True
                        yield event
                    if mapper.done is not None:
                        break
            for event in mapper.finish():
                yield event
        finally:
            reader.close()

    async def list_models(self) -> list[str]:
        if self._listing is None:
            timeout = httpx.Timeout(PROBE_TIMEOUT, connect=self.config.connect_timeout)
            self._listing = AsyncClient(host=self.host, timeout=timeout, headers=self._auth)
        try:
            async with asyncio.timeout(self.config.connect_timeout + PROBE_TIMEOUT):
                listing = await self._listing.list()
        except ResponseError as exc:
            raise classify(exc.status_code, error_details({"error": str(exc.error)}), started=False) from None
        except (*TRANSPORT_ERRORS, httpx.TransportError) as exc:
            raise transport_failure(exc, started=False) from None
        return [m.model for m in listing.models if m.model]

    async def probe(self) -> None:
        # /api/tags is cheap (a directory listing) and proves the server answers.
        await self.list_models()


def _error_line(error: Any) -> BackendError:
    """An ``{"error": ...}`` line in a 200 answer: Ollama had begun the
    response, so it is not retried on another backend, and after the first
    event it goes to the client in-band."""
    message = error_details({"error": str(error)})[0]
    return BackendError(f"The backend failed mid-response: {message}")
