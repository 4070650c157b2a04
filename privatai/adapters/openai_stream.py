"""Shared code for upstreams that speak OpenAI's ``/chat/completions`` over SSE
(llama.cpp's llama-server, vLLM, any other OpenAI-compatible API).

Three parts: :func:`build_body` turns our request into the upstream JSON,
:class:`ChunkMapper` turns upstream chunks into our events (accepting every
variant in ``shared/wire-formats.md``), and :class:`OpenAIStreamAdapter` does
the HTTP with one aiohttp session per adapter, reading the SSE body
incrementally so each token is passed on as soon as it arrives. A client that
asked for a non-streamed answer gets the upstream's non-streamed answer, read
as one JSON body (parsing SSE token by token was a fifth of the gateway's CPU
on such requests) and turned into the same events.

Timeouts come from the backend's config: ``connect_timeout`` for the TCP
connect, ``first_token_timeout`` from sending the request to the first event
(prompt processing can be slow), then ``idle_timeout`` between reads. A
non-streamed answer arrives only when generation ends, so
``first_token_timeout`` bounds the whole call.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any, AsyncIterator, ClassVar

import aiohttp
import orjson

from privatai.config import BackendConfig
from privatai.errors import BackendError, BackendUnavailable, ConfigError, PrivatAIError
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest, message_to_openai, tools_to_openai
from privatai.adapters.base import Adapter
from privatai.adapters.think_tags import ThinkTagSplitter
from privatai.adapters.upstream_errors import MAX_ERROR_BODY, classify, error_details, parse_error_body

# Probes and model listing are small requests; a backend that cannot answer
# them within this (plus the connect timeout) counts as down.
PROBE_TIMEOUT = 5.0
# A model list larger than this is not a model list.
MAX_LIST_BODY = 4 * 1024 * 1024
# Connections beyond max_concurrency, for probes and model listing.
EXTRA_CONNECTIONS = 4

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


def auth_headers(config: BackendConfig) -> dict[str, str]:
    """``Authorization: Bearer`` from the environment variable named by
    ``api_key_env`` (none without it). The key lives only in this header."""
    if not config.api_key_env:
        return {}
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError("environment", f"backend {config.name!r}: api_key_env",
                          f"the environment variable {config.api_key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


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


def pooled_connector(config: BackendConfig) -> aiohttp.TCPConnector:
    """The connection pool to one backend: its concurrency plus a few spare
    connections for probes and discovery."""
    return aiohttp.TCPConnector(limit=config.max_concurrency + EXTRA_CONNECTIONS, limit_per_host=0)


def build_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The upstream request body: streamed (asking for usage) exactly when the
    client streams; a non-streamed answer always carries usage.

    Options the client did not send are left out, so the model's own
    defaults apply.
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
    body.update(request.sampling_options())
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
        body["chat_template_kwargs"] = {"enable_thinking": wanted}
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


class ChunkMapper:
    """Upstream ``chat.completion.chunk`` objects -> our events, for one response.

    Accepts: ``content: null``; reasoning as ``reasoning`` or
    ``reasoning_content`` (explicit nulls, or both with the same text: emitted
    once); tool calls in fragments or whole, with or without ``index``; usage
    on the ``choices: []`` chunk or on any other; an ``error`` object (raises
    :class:`UpstreamStreamError`).
    """

    __slots__ = ("_calls", "_last_call", "_splitter", "finish_reason", "usage")

    def __init__(self, think_tags: bool = False) -> None:
        self._splitter = ThinkTagSplitter() if think_tags else None
        self._calls: dict[object, int] = {}  # upstream key -> our index
        self._last_call: object = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: Any) -> list[Event]:
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") or chunk.get("object") == "error":
            raise UpstreamStreamError(chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage(int(usage.get("prompt_tokens") or 0),
                               int(usage.get("completion_tokens") or 0))
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
        return self.feed({"choices": [{"delta": message, "finish_reason": choice.get("finish_reason")}],
                          "usage": completion.get("usage")})

    def finish(self) -> list[Event]:
        """The closing events: held-back text, :class:`Finish`, then :class:`Usage` if reported."""
        events: list[Event] = self._splitter.flush() if self._splitter is not None else []
        events.append(Finish(normalize_finish(self.finish_reason, bool(self._calls))))
        if self.usage is not None:
            events.append(self.usage)
        return events


class OpenAIStreamAdapter(Adapter):
    """Base adapter for OpenAI-compatible upstreams. Subclasses set where the
    API lives (:meth:`api_base`), how to probe, and request-body extras."""

    # Path under the server root answering 200 when the backend can serve;
    # None probes ``GET {api_base}/models`` instead.
    health_path: ClassVar[str | None] = None

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        assert config.url, "config validation requires a url for this kind"
        self.base_url = self.api_base(config.url)
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                         **auth_headers(config)}
        self._json_headers = {**self._headers, "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def api_base(cls, url: str) -> str:
        """The OpenAI API root for the configured ``url``: the server root plus ``/v1``
        (a ``url`` that already ends in ``/v1`` is accepted as well)."""
        url = url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    def server_root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        """The upstream body; subclasses add their kind's reasoning switches."""
        return build_body(request, model)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self._client()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = pooled_connector(self.config)
            # Only the socket connect has a fixed timeout here; the stream
            # applies first-token and idle deadlines itself.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    # -- chat ---------------------------------------------------------------

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        if request.stream:
            return self._stream(request, model)
        return self._complete(request, model)

    async def _complete(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """A non-streamed upstream call for a non-streamed client request.

        Nothing arrives before generation ends, so ``first_token_timeout``
        bounds the whole call. Every failure happens before the first event:
        BackendUnavailable or UpstreamRejected, never BackendError.
        """
        session = self._client()
        data = orjson.dumps(self.build_body(request, model))
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                response = await session.post(self.base_url + "/chat/completions", data=data,
                                              headers=self._json_headers)
                if response.status != 200:
                    try:
                        body = await _read_capped(response)
                    except (aiohttp.ClientError, OSError):
                        body = b""
                    raise classify(response.status, parse_error_body(body), started=False)
                body = await response.read()
        except TimeoutError:
            raise BackendUnavailable("The backend did not answer in time.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"The backend is unreachable ({type(exc).__name__}).") from None
        finally:
            # A no-op for a fully read response (its connection is back in
            # the pool); one still pending (timeout, the client left) is
            # closed outright, so the upstream stops generating.
            if response is not None:
                response.close()
        mapper = ChunkMapper(self.config.think_tags)
        try:
            events = mapper.feed_completion(orjson.loads(body))
        except UpstreamStreamError as exc:
            raise classify(None, error_details(exc.payload), started=False) from None
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            # Not JSON (orjson's error is a ValueError), or not a chat.completion.
            raise BackendUnavailable("The backend sent an answer we cannot read.") from None
        events.extend(mapper.finish())
        for event in events:
            yield event

    async def _stream(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        session = self._client()
        data = orjson.dumps(self.build_body(request, model))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.first_token_timeout
        idle = self.config.idle_timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.post(self.base_url + "/chat/completions", data=data,
                                              headers=self._headers)
        except TimeoutError:
            raise BackendUnavailable("The backend did not answer in time.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"The backend is unreachable ({type(exc).__name__}).") from None

        started = False
        watchdog: ReadWatchdog | None = None
        try:
            if response.status != 200:
                try:
                    async with asyncio.timeout_at(deadline):
                        body = await _read_capped(response)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    body = b""
                raise classify(response.status, parse_error_body(body), started=False)
            mapper = ChunkMapper(self.config.think_tags)
            content = response.content
            pending = b""
            done = False
            watchdog = ReadWatchdog(loop, deadline, response.close)
            while not done:
                if started:
                    watchdog.move(loop.time() + idle)
                watchdog.reading = True
                try:
                    received = await content.readany()
                except (aiohttp.ClientError, OSError):
                    # A connection lost after the finish reason lost nothing.
                    if mapper.finish_reason is not None:
                        break
                    if watchdog.expired:
                        raise _stream_failure(started, "The backend stopped sending tokens." if started
                                              else "The backend did not answer in time.") from None
                    raise _stream_failure(started, "The backend closed the connection mid-response.") from None
                watchdog.reading = False
                if not received:
                    if mapper.finish_reason is None:
                        raise _stream_failure(started, "The backend ended the response without finishing it.")
                    break
                lines = (pending + received).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line:
                        continue  # the blank line that ends each event
                    chunk = _sse_payload(line)
                    if chunk is None:
                        continue
                    if chunk is _DONE:
                        done = True
                        break
                    try:
                        events = mapper.feed(chunk)
                    except UpstreamStreamError as exc:
                        raise classify(None, error_details(exc.payload), started=started) from None
                    except (AttributeError, TypeError, ValueError):
                        # Valid JSON, but not the shape of a chunk.
                        raise _stream_failure(started, "The backend sent a chunk we cannot read.") from None
                    for event in events:
                        started = True
                        yield event
            for event in mapper.finish():
                yield event
        finally:
            if watchdog is not None:
                watchdog.cancel()
            # aiohttp has already returned a fully read connection to the
            # pool; one still streaming (the client left, or an error) is
            # closed outright, so the upstream stops generating.
            response.close()

    # -- discovery and health -----------------------------------------------

    async def list_models(self) -> list[str]:
        status, body = await self._get(self.base_url + "/models")
        if status != 200:
            raise classify(status, parse_error_body(body), started=False)
        try:
            data = orjson.loads(body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise BackendUnavailable("The backend's model list has an unexpected shape.")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def probe(self) -> None:
        if self.health_path is not None:
            status, body = await self._get(self.server_root() + self.health_path)
            # A server without a health route (llama-cpp-python's
            # llama_cpp.server) answers 404: the model list decides then.
            if status != 404:
                if status != 200:
                    raise classify(status, parse_error_body(body), started=False)
                return
        await self.list_models()

    async def _get(self, url: str) -> tuple[int, bytes]:
        """Status and (capped) body of a small GET; unreachable -> BackendUnavailable."""
        session = self._client()
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "application/json"
        try:
            async with asyncio.timeout(self.config.connect_timeout + PROBE_TIMEOUT):
                async with session.get(url, headers=headers) as response:
                    return response.status, await _read_capped(response, MAX_LIST_BODY)
        except TimeoutError:
            raise BackendUnavailable("The backend did not answer in time.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"The backend is unreachable ({type(exc).__name__}).") from None


_DONE = object()


def _sse_payload(line: bytes) -> Any:
    """The JSON of one SSE line, :data:`_DONE` for ``[DONE]``, None for anything else
    (comments, ``event:``/``id:`` fields, blank separators)."""
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
        return _DONE
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Without the JSON we cannot know what was lost; treat as a failure.
        return {"error": {"message": "The backend sent an unreadable chunk.", "type": "server_error"}}


class ReadWatchdog:
    """The first-token and idle deadlines of one stream, with one timer per
    stream instead of one per read (``asyncio.timeout_at`` around each read
    cost about 11 us per chunk, a third of the target per-chunk budget).

    The reader moves the deadline (:meth:`move`) and flags :attr:`reading`
    around each read; a timer armed for an earlier time re-arms itself when it
    finds the deadline moved on, or the consumer, not the upstream, holding
    the stream up (a slow client). When it expires, ``on_expire`` closes the
    upstream response, which makes the pending read raise, and
    :attr:`expired` tells that error from a lost connection.
    """

    __slots__ = ("deadline", "reading", "expired", "_loop", "_on_expire", "_handle", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, on_expire: Any) -> None:
        self.deadline = deadline
        self.reading = False
        self.expired = False
        self._loop = loop
        self._on_expire = on_expire
        self._handle: asyncio.TimerHandle | None = None
        self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._handle = self._loop.call_at(when, self._check)

    def move(self, deadline: float) -> None:
        self.deadline = deadline
        if deadline < self._armed and self._handle is not None:
            # Earlier than the timer (first token -> idle): the only re-arm a read pays.
            self._handle.cancel()
            self._arm(deadline)

    def _check(self) -> None:
        now = self._loop.time()
        if now < self.deadline:
            self._arm(self.deadline)
        elif not self.reading:
            # Waiting on our consumer: the upstream is not late.
            self._arm(now + 1.0)
        else:
            self._handle = None
            self.expired = True
            self._on_expire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _stream_failure(started: bool, message: str) -> PrivatAIError:
    return BackendError(message) if started else BackendUnavailable(message)


async def _read_capped(response: aiohttp.ClientResponse, limit: int = MAX_ERROR_BODY) -> bytes:
    """The body, or its first ``limit`` bytes (``read(n)`` may return less than n)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await response.content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


class SelfHostedOpenAIAdapter(OpenAIStreamAdapter):
    """An inference server of our own with an OpenAI API under ``/v1``
    (llama-server, vLLM): ``url`` is the server root, health is ``/health``,
    and the request carries the reasoning switches these servers accept."""

    health_path = "/health"

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = build_body(request, model)
        add_reasoning_switches(body, request)
        return body
