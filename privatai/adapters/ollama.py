"""Ollama through its native ``/api/chat`` (NDJSON), with the ``ollama`` package.

``url`` is the server root (``http://127.0.0.1:11434``). The package's
``AsyncClient`` runs on an aiohttp transport (``httpx_aiohttp``) for speed.

We call ``AsyncClient._request(dict, ...)`` rather than ``chat()``: ``chat()``
validates the request and every streamed line through pydantic models that
silently drop fields we need (tool-call ``id``s in responses, ``tool_call_id``
on tool results, nested tool-schema keys such as ``properties`` of an object
parameter or ``anyOf``), and costs a model construction per token. ``_request``
keeps the package's error semantics: HTTP errors raise ``ResponseError`` with
the status, an error line mid-stream raises it with status -1. The tests pin
this down, so an ``ollama`` upgrade that changes it fails loudly.

Mapping: OpenAI messages -> Ollama messages (tool-call arguments as JSON
objects, tool results with ``tool_name`` and ``tool_call_id``); ``think`` from
``think`` or ``reasoning_effort``; ``format`` from ``response_format``;
``options`` only for what the client set (no defaults of ours, so the model's
own apply). Ollama sends tool calls whole: each becomes one fragment with an
``id`` (generated when the server sends none) and our own index.

A client that asked for a non-streamed answer gets Ollama's non-streamed
answer (one JSON object, read by the same :class:`LineMapper`): it arrives
only when generation ends, so ``first_token_timeout`` bounds the whole call.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from ollama import AsyncClient, ResponseError

from privatai.config import BackendConfig
from privatai.errors import BackendError, InvalidRequest, PrivatAIError
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta
from privatai.core.protocol import (
    AssistantMessage,
    ChatRequest,
    DeveloperMessage,
    Message,
    SystemMessage,
    ToolMessage,
    text_of,
    tools_to_openai,
)
from privatai.adapters.base import Adapter
from privatai.adapters.openai_wire import new_call_id, normalize_finish
from privatai.adapters.reported_usage import reported_usage
from privatai.adapters.think_tags import ThinkTagSplitter
from privatai.adapters.transport import (
    PROBE_TIMEOUT,
    UNFINISHED,
    ReadWatchdog,
    WireError,
    auth_headers,
    open_session,
    transport_failure,
    unreadable,
)
from privatai.adapters.upstream_errors import classify, error_details

_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
}

_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError, TimeoutError, WireError)


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
            out.append({"role": role, "content": text_of(message.content)})
    return out


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
    body: dict[str, Any] = {"model": model, "messages": messages_to_ollama(request.messages),
                            "stream": request.stream}
    # Ollama has no tool_choice; "none" is honoured by not offering the tools.
    if request.tools and request.tool_choice != "none":
        body["tools"] = tools_to_openai(request.tools)
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
    if options:
        body["options"] = options
    return body


class LineMapper:
    """Ollama's streamed ``/api/chat`` lines -> our events, for one response."""

    __slots__ = ("_calls", "_splitter", "done")

    def __init__(self, think_tags: bool = False) -> None:
        self._splitter = ThinkTagSplitter() if think_tags else None
        self._calls = 0
        self.done: dict[str, Any] | None = None  # the final line, once seen

    def feed(self, part: dict[str, Any]) -> list[Event]:
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
        # For an Ollama behind an authenticating proxy.
        self._headers = auth_headers(config)
        self._client: AsyncClient | None = None

    async def start(self) -> None:
        self._ollama()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _ollama(self) -> AsyncClient:
        if self._client is None:
            session = open_session(self.config)
            # Only connecting has a fixed timeout: first-token and idle
            # deadlines are applied around each line in stream().
            timeout = httpx.Timeout(None, connect=self.config.connect_timeout)
            self._client = AsyncClient(host=self.host, timeout=timeout, headers=self._headers,
                                       transport=AiohttpTransport(client=session))
        return self._client

    async def complete(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """A non-streamed ``/api/chat`` for a non-streamed client request.

        Nothing arrives before generation ends, so ``first_token_timeout``
        bounds the whole call; every failure happens before the first event.
        Cancelling the wait (timeout, the client left) cancels the package's
        request, which closes its connection.
        """
        body = build_chat_body(request, model)
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                part = await self._ollama()._request(dict, "POST", "/api/chat", json=body, stream=False)
        except ResponseError as exc:
            raise _response_error(exc, False) from None
        except _TRANSPORT_ERRORS as exc:
            raise transport_failure(exc, started=False) from None
        except (ValueError, TypeError):
            # Not JSON, or not a JSON object.
            raise transport_failure(unreadable("an answer"), started=False) from None
        if part.get("error"):
            # An error object with status 200: its text, as in a stream.
            raise classify(None, error_details(part), started=False)
        mapper = LineMapper(self.config.think_tags)
        try:
            events = mapper.feed(part)
        except (ValueError, AttributeError, TypeError):
            raise transport_failure(unreadable("an answer"), started=False) from None
        if mapper.done is None:
            raise transport_failure(WireError(UNFINISHED), started=False)
        events.extend(mapper.finish())
        for event in events:
            yield event

    async def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        body = build_chat_body(request, model)
        client = self._ollama()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.first_token_timeout
        idle = self.config.idle_timeout
        # Nothing is sent until the first iteration.
        lines: AsyncIterator[dict[str, Any]] = await client._request(dict, "POST", "/api/chat",
                                                                    json=body, stream=True)
        mapper = LineMapper(self.config.think_tags)
        started = False
        # One timer per stream, not asyncio.timeout_at per line (about 15 %
        # of the gateway's CPU on an Ollama stream). On expiry it cancels the
        # task waiting for the line, as asyncio.timeout does, and the
        # cancellation is taken back below.
        reader = _Reader()
        watchdog = ReadWatchdog(loop, deadline, reader.cancel)
        try:
            while True:
                if started:
                    watchdog.move(loop.time() + idle)
                reader.start()
                watchdog.reading = True
                try:
                    part = await anext(lines)
                    watchdog.reading = False
                    events = mapper.feed(part)
                except asyncio.CancelledError:
                    if watchdog.expired and reader.uncancel():
                        raise transport_failure(TimeoutError(), started=started) from None
                    raise
                except StopAsyncIteration:
                    raise transport_failure(WireError(UNFINISHED), started=started) from None
                except ResponseError as exc:
                    raise _response_error(exc, started) from None
                except _TRANSPORT_ERRORS as exc:
                    raise transport_failure(exc, started=started) from None
                except (ValueError, AttributeError, TypeError):
                    # Not JSON, or not the shape of a chat line.
                    raise transport_failure(unreadable("a line"), started=started) from None
                for event in events:
                    started = True
                    yield event
                if mapper.done is not None:
                    break
            for event in mapper.finish():
                yield event
        finally:
            watchdog.cancel()
            # Closing the package's generator closes the HTTP response, which
            # makes Ollama stop generating for a client that left.
            await lines.aclose()  # type: ignore[attr-defined]

    async def list_models(self) -> list[str]:
        try:
            async with asyncio.timeout(self.config.connect_timeout + PROBE_TIMEOUT):
                listing = await self._ollama().list()
        except ResponseError as exc:
            raise _response_error(exc, False) from None
        except _TRANSPORT_ERRORS as exc:
            raise transport_failure(exc, started=False) from None
        return [m.model for m in listing.models if m.model]

    async def probe(self) -> None:
        # /api/tags is cheap (a directory listing) and proves the server answers.
        await self.list_models()


class _Reader:
    """The task waiting for the next line, cancelled by the watchdog on expiry
    (the first line may be awaited by another task than the rest)."""

    __slots__ = ("task", "cancelling")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancelling = 0

    def start(self) -> None:
        self.task = asyncio.current_task()
        self.cancelling = self.task.cancelling() if self.task is not None else 0

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def uncancel(self) -> bool:
        """Take our cancellation back; False if someone else cancelled the task too."""
        return self.task is not None and self.task.uncancel() <= self.cancelling


def _response_error(exc: ResponseError, started: bool) -> PrivatAIError:
    details = error_details({"error": str(exc.error)})
    if exc.status_code == -1:
        # An error line inside a 200 stream: the response has begun upstream.
        message = details[0]
        return BackendError(f"The backend failed mid-response: {message}")
    return classify(exc.status_code, details, started=started)
